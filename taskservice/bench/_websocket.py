"""
The seed's problem itself: how long a second browser waits for a websocket
round trip while one click sends 1,000 e-mails, through taskservice, and
through a naive server that sends them inline in its websocket handler.

Both servers run as subprocesses; this process only plays the browsers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

from taskservice import _json
from taskservice.testing import Twistd, freePort

HOST = "127.0.0.1"
USERS = 1000

NAIVE_SERVER = textwrap.dedent(
    """
    # The FAQ's problem as most people first write it: the e-mails are sent
    # inline, in the websocket handler, blocking the server.
    import json, smtplib, sys
    from email.message import EmailMessage
    from autobahn.twisted.websocket import (
        WebSocketServerFactory, WebSocketServerProtocol,
    )
    from twisted.internet import reactor

    port, smtpPort = int(sys.argv[1]), int(sys.argv[2])

    class Naive(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            request = json.loads(payload)
            if request["method"] == "send_mail":
                with smtplib.SMTP("127.0.0.1", smtpPort) as smtp:
                    for address in request["params"]["to"]:
                        message = EmailMessage()
                        message["From"] = "naive@localhost"
                        message["To"] = address
                        message["Subject"] = "Hello"
                        message.set_content("inline")
                        smtp.send_message(message)
                result = {"sent": len(request["params"]["to"])}
            else:
                result = request["params"][0]
            self.sendMessage(json.dumps(
                {"jsonrpc": "2.0", "id": request["id"], "result": result}
            ).encode())

    factory = WebSocketServerFactory()
    factory.protocol = Naive
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()
    """
)


def waitForPort(
    port: int, process: subprocess.Popen[bytes], seconds: float = 30
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Browser(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.pending: dict[int, Deferred[Any]] = {}
        self.nextId = 1
        self.factory.opened.callback(self)

    def call(self, method: str, params: Any) -> Deferred[Any]:
        requestId = self.nextId
        self.nextId += 1
        d: Deferred[Any] = Deferred()
        self.pending[requestId] = d
        self.sendMessage(
            _json.dumps(
                {"jsonrpc": "2.0", "id": requestId, "method": method, "params": params}
            )
        )
        return d

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = _json.loads(payload)
        if "id" in message and message["id"] in self.pending:
            self.pending.pop(message["id"]).callback(message.get("result"))


class _Factory(WebSocketClientFactory):
    protocol = Browser

    def __init__(self, url: str, origin: str) -> None:
        super().__init__(url, origin=origin)
        self.opened: Deferred[Browser] = Deferred()


async def connect(reactor: Any, port: int) -> Browser:
    factory = _Factory(f"ws://{HOST}:{port}/ws", f"http://{HOST}:{port}")
    await TCP4ClientEndpoint(reactor, HOST, port).connect(factory)
    browser: Browser = await factory.opened
    return browser


async def pingDuringSend(reactor: Any, port: int) -> tuple[float, list[float]]:
    """
    Send to USERS addresses on one websocket; meanwhile ping (echo) on a
    second one, one at a time. Returns the send's duration and the pings.
    """
    sender = await connect(reactor, port)
    pinger = await connect(reactor, port)
    await pinger.call("echo", ["warm"])
    addresses = [f"user{i:04d}@example.com" for i in range(1, USERS + 1)]
    started = time.perf_counter()
    sending = sender.call("send_mail", {"to": addresses})
    done: list[float] = []
    sending.addCallback(lambda _: done.append(time.perf_counter() - started))
    pings: list[float] = []
    while not done:
        t = time.perf_counter()
        await pinger.call("echo", ["ping"])
        pings.append(time.perf_counter() - t)
        await deferLater(reactor, 0.002, lambda: None)
    sender.sendClose()
    pinger.sendClose()
    return done[0], pings


_running: dict[int, Twistd] = {}
"""The twistd processes L{startTwistd} started and L{stop} has not, by pid."""


def startTwistd(
    workdir: Path, *args: str, workers: int = 2, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """
    C{twistd -n --pidfile= taskservice --workers 2 ARGS}, as a user runs it,
    in C{workdir} (a L{taskservice.testing.Twistd}: the listeners ARGS do
    not place get free loopback ports); its output to C{log}, else none.
    L{stop} ends it and whatever is left of its workers.
    """
    server = Twistd(
        workdir,
        "--workers",
        str(workers),
        *args,
        log=Path(os.devnull) if log is None else log,
    ).start()
    _running[server.pid] = server
    return server.process


def startTaskservice(workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """
    The real product: twistd taskservice with its gateway and SMTP sink.
    """
    wsPort, sinkPort = freePort(), freePort()
    process = startTwistd(
        workdir,
        "--listen",
        f"tcp:{freePort()}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
        "--smtp-sink",
        f"tcp:{sinkPort}:interface={HOST}",
    )
    waitForPort(wsPort, process)
    waitForPort(sinkPort, process)
    return process, wsPort, sinkPort


def startNaive(workdir: Path, sinkPort: int) -> tuple[subprocess.Popen[bytes], int]:
    script = workdir / "naive.py"
    script.write_text(NAIVE_SERVER)
    port = freePort()
    process = subprocess.Popen(
        [sys.executable, str(script), str(port), str(sinkPort)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    waitForPort(port, process)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM, then SIGKILL after 30 s; a twistd of L{startTwistd}'s is
    reaped with its workers.
    """
    server = _running.pop(process.pid, None)
    if server is not None:
        server.stop(graceful=30)
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def scenario(reactor: Any, runs: int) -> dict[str, Any]:
    """
    Interleaved runs of both; the naive server sends to taskservice's sink.
    """
    ours: list[tuple[float, list[float]]] = []
    naive: list[tuple[float, list[float]]] = []
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        server, wsPort, sinkPort = startTaskservice(workdir)
        baseline, naivePort = startNaive(workdir, sinkPort)
        try:
            for _ in range(runs):
                ours.append(await pingDuringSend(reactor, wsPort))
                naive.append(await pingDuringSend(reactor, naivePort))
        finally:
            stop(baseline)
            stop(server)
    return {"ours": ours, "naive": naive}
