"""
The in-run baseline of the TCP scenario: a task server built the way the
Workerman FAQ builds its own, in plain Python (no Twisted). A master process
creates the listening socket and forks N processes that share it; each runs
its own non-blocking loop (L{selectors}) that accepts connections and
answers every line in-process: no worker hop. It speaks both the FAQ
dialect (C{{"function": "echo", "args": [...]}} answered with the bare
result) and JSON-RPC 2.0 (answered with C{{"jsonrpc": "2.0", "id": ...,
"result": ...}}), so it serves every baseline of the scenario.

L{start} runs the master as a subprocess (so that its children are not
forked from a process running Twisted's reactor) and returns its port and
a stop callable; the master kills and reaps its children when it is told
to stop, and each child exits when the master is gone.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
BACKLOG = 1024
TASKS: dict[str, Callable[..., Any]] = {"echo": lambda value: value}


def answer(line: bytes) -> bytes:
    """
    The reply line to one request line, in the request's dialect.
    """
    try:
        request = json.loads(line)
        rpc = "jsonrpc" in request
        function = TASKS[request["method"] if rpc else request["function"]]
        params = request.get("params" if rpc else "args", [])
        result = function(**params) if isinstance(params, dict) else function(*params)
        reply: Any = (
            {"jsonrpc": "2.0", "id": request.get("id"), "result": result}
            if rpc
            else result
        )
    except Exception as e:
        reply = {"error": {"code": -32603, "message": repr(e)}}
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self.pending = b""


def serveForever(listener: socket.socket, master: int) -> None:
    """
    One task process: accept on the shared C{listener}, answer each line.
    Returns when the C{master} process is gone.
    """
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while os.getppid() == master:
        for key, events in selector.select(timeout=1.0):
            if key.fileobj is listener:
                _accept(listener, selector)
            else:
                _service(key.data, events, selector)


def _accept(listener: socket.socket, selector: selectors.BaseSelector) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return  # another process took it
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ, _Connection(sock))


def _service(
    connection: _Connection, events: int, selector: selectors.BaseSelector
) -> None:
    sock = connection.sock
    try:
        if events & selectors.EVENT_READ:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError
            *lines, connection.received = (connection.received + data).split(b"\n")
            connection.pending += b"".join(answer(line) for line in lines if line)
        if connection.pending:
            sent = sock.send(connection.pending)
            connection.pending = connection.pending[sent:]
    except BlockingIOError:
        pass
    except OSError:
        selector.unregister(sock)
        sock.close()
        return
    wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.pending else 0)
    selector.modify(sock, wanted, connection)


def master(processes: int) -> None:
    """
    The master: listen on a free loopback port, print it, fork the task
    processes; on SIGTERM kill and reap them, then exit.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    me = os.getpid()
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serveForever(listener, me)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            os.kill(child, signal.SIGKILL)
        for child in children:
            os.waitpid(child, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(listener.getsockname()[1], flush=True)
    while True:
        signal.pause()


@dataclass(frozen=True)
class FaqServer:
    """
    A running baseline server: its port, its master's pid, and how to stop it.
    """

    port: int
    pid: int
    stop: Callable[[], None]


def start(processes: int) -> FaqServer:
    """
    Start the master with C{processes} task processes; return once it listens.
    """
    return spawn("taskservice.bench._faqserver", str(processes))


def spawn(module: str, *args: str) -> FaqServer:
    """
    Run C{python -m MODULE ARGS}, a server that prints its port once it
    listens and stops on SIGTERM; return once it listens.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        raise RuntimeError(f"{module} did not start: {line!r}")

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()

    return FaqServer(int(line), process.pid, stop)


if __name__ == "__main__":
    master(int(sys.argv[1]))
