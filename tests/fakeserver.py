"""
A scripted stand-in for a task server, for the fault tests of the clients
without Twisted (L{tests.test_syncclient}, L{tests.test_aioclient}): a real
loopback socket, served by a thread that runs the test's script for each
connection (read a request, answer it, or drop the connection mid-call).
Every wait has a deadline.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DEADLINE = 30.0


class Peer:
    """One client connection as the script sees it."""

    def __init__(self, connection: socket.socket) -> None:
        connection.settimeout(DEADLINE)
        self.connection = connection
        self._reader = connection.makefile("rb")
        self.received: list[dict[str, Any]] = []

    def read(self) -> dict[str, Any]:
        """The next message from the client (fails at end of file)."""
        line = self._reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        message: dict[str, Any] = json.loads(line)
        self.received.append(message)
        return message

    def rest(self) -> list[dict[str, Any]]:
        """Every message until the client closes the connection."""
        messages = []
        while line := self._reader.readline():
            messages.append(json.loads(line))
        self.received.extend(messages)
        return messages

    def readRequest(self, method: str | None = None) -> dict[str, Any]:
        """The next message, which must be a request (of C{method})."""
        message = self.read()
        assert "id" in message, message
        if method is not None:
            assert message["method"] == method, message
        return message

    def acceptAuth(self, token: str | None = None) -> None:
        """Read the client's C{$/auth} and accept it."""
        auth = self.readRequest("$/auth")
        if token is not None:
            assert auth["params"] == {"token": token}, auth
        self.send({"jsonrpc": "2.0", "id": auth["id"], "result": True})

    def send(self, message: Any) -> None:
        self.connection.sendall(json.dumps(message).encode() + b"\n")

    def reply(self, request: dict[str, Any], result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": request["id"], "result": result})

    def error(self, request: dict[str, Any], code: int, message: str) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": code, "message": message},
            }
        )

    def progress(self, request: dict[str, Any], **update: Any) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "$/progress",
                "params": {**update, "id": request["id"]},
            }
        )

    def close(self) -> None:
        self._reader.close()
        self.connection.close()


Script = Callable[[Peer], None]


class FakeServer:
    """
    Listens on loopback; runs C{scripts} in turn, one per connection (the
    last one again for any further connection).

    @ivar connections: how many connections were accepted.
    @ivar failures: exceptions the scripts raised (checked on exit).
    """

    def __init__(self, *scripts: Script) -> None:
        self._scripts = list(scripts)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self.connections = 0
        self.failures: list[BaseException] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            script = self._scripts[min(self.connections, len(self._scripts) - 1)]
            self.connections += 1
            thread = threading.Thread(
                target=self._serve, args=(script, Peer(connection)), daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, script: Script, peer: Peer) -> None:
        try:
            script(peer)
        except BaseException as e:
            self.failures.append(e)
        finally:
            peer.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(DEADLINE)
        self._listener.close()
        for thread in self._threads:
            thread.join(DEADLINE)
        if self.failures:
            raise self.failures[0]


@contextmanager
def fakeServer(*scripts: Script) -> Iterator[FakeServer]:
    server = FakeServer(*scripts)
    try:
        yield server
    finally:
        server.stop()


def echoing(peer: Peer) -> None:
    """Accept C{$/auth}, then answer every request with its params, until
    the client goes."""
    peer.acceptAuth()
    while line := peer._reader.readline():
        request = json.loads(line)
        if "id" in request:
            peer.reply(request, request.get("params"))
