"""
The gateway on real sockets: a real task server (worker processes and a
TCP listener on 127.0.0.1, port 0), the gateway's site on another port 0,
and browsers played by autobahn's Twisted websocket client, all in the
test's reactor.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from taskservice.client import TaskClient
from taskservice.gateway import GatewayFactory, GatewaySite
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


class Browser(WebSocketClientProtocol):
    """
    A browser's websocket, for awaiting: C{opened}, C{closed} (with
    C{(wasClean, code, reason)}) and each message from C{next()}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.messages: DeferredQueue[Any] = DeferredQueue()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed.callback((wasClean, code, reason))

    def call(self, requestId: Any, method: str, *params: Any) -> None:
        self.sendMessage(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": requestId,
                    "method": method,
                    "params": list(params),
                }
            ).encode()
        )

    def next(self) -> Deferred[Any]:
        return self.messages.get()


async def openBrowser(port: int) -> Browser:
    """
    A browser's websocket to the gateway on loopback port C{port}, from the
    gateway's own origin, once it is open.
    """
    factory = WebSocketClientFactory(
        f"ws://{HOST}:{port}/ws", origin=f"http://{HOST}:{port}"
    )
    factory.protocol = Browser
    browser = await TCP4ClientEndpoint(reactor, HOST, port).connect(factory)
    assert isinstance(browser, Browser)
    await browser.opened
    return browser


class _Response(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(bytes(self.received))


class TaskServer:
    """
    A task server that can be killed and restarted on the same port.
    """

    def __init__(self, pool: ProcessPool) -> None:
        self.factory = TaskServerFactory(pool)
        self.port: Any = None
        self.portNumber = 0

    async def listen(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, self.portNumber, interface=HOST)
        self.port = await endpoint.listen(self.factory)
        self.portNumber = self.port.getHost().port

    async def kill(self) -> None:
        """
        Stop listening and abort every connection.
        """
        await self.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()

    async def stopListening(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None


class Gateway:
    def __init__(self, taskServer: TaskServer, web: Path, **options: Any) -> None:
        self.taskServer = taskServer
        self.client = TaskClient(
            reactor, f"tcp:{HOST}:{taskServer.portNumber}", maxRetryDelay=0.2
        )
        self.factory = GatewayFactory(reactor, self.client, **options)
        self.site = GatewaySite(self.factory, web)
        self.port: Any = None
        self.browsers: list[Browser] = []

    async def start(self) -> None:
        self.client.startService()
        self.port = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(
            self.site
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port.getHost().port}"

    async def browser(self, origin: str | None = "same") -> Browser:
        """
        Open a websocket to the gateway (waiting for the handshake to end,
        either way).
        """
        port = self.port.getHost().port
        factory = WebSocketClientFactory(
            f"ws://{HOST}:{port}/ws", origin=self.url if origin == "same" else origin
        )
        factory.protocol = Browser
        browser = await TCP4ClientEndpoint(reactor, HOST, port).connect(factory)
        self.browsers.append(browser)
        handshakeOver: Deferred[None] = Deferred()

        def over(result: object) -> object:
            if not handshakeOver.called:
                handshakeOver.callback(None)
            return result

        browser.opened.addBoth(over)
        browser.closed.addBoth(over)
        await handshakeOver
        assert isinstance(browser, Browser)
        return browser

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """
        A plain HTTP/1.0 GET: status, headers (lower-cased names) and body.
        """
        port = self.port.getHost().port
        response = _Response()
        await TCP4ClientEndpoint(reactor, HOST, port).connect(
            Factory.forProtocol(lambda: response)
        )
        assert response.transport is not None
        response.transport.write(
            f"GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        )
        raw = await response.done
        head, _, body = raw.partition(b"\r\n\r\n")
        statusLine, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(statusLine.split()[1]), headers, body

    async def stop(self) -> None:
        await self.port.stopListening()
        for browser in self.browsers:
            if not browser.closed.called:
                browser.sendClose(1000)
            await browser.closed
        await self.client.stopService()
        await self.factory.closeAll()


@pytest_twisted.async_yield_fixture
async def taskServer() -> AsyncIterator[TaskServer]:
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=2)
    pool.startService()
    await pool.whenReady()
    server = TaskServer(pool)
    await server.listen()
    yield server
    await server.stopListening()
    await pool.stopService()


async def startGateway(
    taskServer: TaskServer, tmp_path: Path, **options: Any
) -> Gateway:
    (tmp_path / "index.html").write_text("<title>tasks</title>")
    gateway = Gateway(taskServer, tmp_path, **options)
    await gateway.start()
    return gateway


@pytest_twisted.ensureDeferred
async def test_roundTripProgressAndStats(
    taskServer: TaskServer, tmp_path: Path
) -> None:
    """
    A browser's calls go through the gateway to real workers: results and
    progress come back with the browser's ids; the page and /stats are
    served over HTTP on the same port.
    """
    gateway = await startGateway(taskServer, tmp_path)
    try:
        browser = await gateway.browser()
        browser.call("one", "add", 2, 3)
        assert await browser.next() == {"jsonrpc": "2.0", "id": "one", "result": 5}
        browser.call(2, "count", 2)
        assert [await browser.next() for _ in range(3)] == [
            {
                "jsonrpc": "2.0",
                "method": "$/progress",
                "params": {"done": 1, "total": 2, "id": 2},
            },
            {
                "jsonrpc": "2.0",
                "method": "$/progress",
                "params": {"done": 2, "total": 2, "id": 2},
            },
            {"jsonrpc": "2.0", "id": 2, "result": 2},
        ]
        status, headers, body = await gateway.get("/")
        assert (status, body) == (200, b"<title>tasks</title>")
        status, headers, body = await gateway.get("/stats")
        assert headers["content-type"] == "application/json"
        stats = json.loads(body)
        assert stats["gateway"]["connections"] == 1
        assert stats["gateway"]["calls"] == 2
        assert stats["taskServer"]["workers"]["size"] == 2
    finally:
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_manyRepliesAndACleanClose(
    taskServer: TaskServer, tmp_path: Path
) -> None:
    """
    A burst of calls: every reply arrives whole, in frames the browser can
    read (replies of one pass leave together); a close the browser starts
    is answered before the gateway drops the connection (a clean close).
    """
    from autobahn.twisted.websocket import WebSocketServerProtocol

    # The gateway overrides these autobahn methods to gather its writes.
    assert callable(getattr(WebSocketServerProtocol, "_closeConnection", None))
    gateway = await startGateway(taskServer, tmp_path)
    try:
        browser = await gateway.browser()
        for i in range(100):  # the browser's limit
            browser.call(i, "add", i, 1)
        replies = [await browser.next() for _ in range(100)]
        assert sorted(r["result"] for r in replies) == [i + 1 for i in range(100)]
        # A frame autobahn writes at once (sync) does not overtake those
        # gathered before it.
        [server] = gateway.factory.browsers
        server.sendMessage(b'{"jsonrpc":"2.0","method":"first"}')
        server.sendMessage(b'{"jsonrpc":"2.0","method":"second"}', sync=True)
        assert (await browser.next())["method"] == "first"
        assert (await browser.next())["method"] == "second"
        browser.sendClose(1000)
        wasClean, code, _ = await browser.closed
        assert wasClean and code == 1000
    finally:
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_taskServerKilledAndRestarted(
    taskServer: TaskServer, tmp_path: Path
) -> None:
    """
    When the task server goes away, the call in flight and every call made
    during the outage get -32006 at once; once it is back on the same port,
    the gateway reconnects by itself and calls work again, on the same
    websocket.
    """
    gateway = await startGateway(taskServer, tmp_path)
    try:
        browser = await gateway.browser()
        browser.call(1, "add", 1, 1)
        assert (await browser.next())["result"] == 2
        browser.call(2, "nap", 1.0)
        await deferLater(reactor, 0.1, lambda: None)
        started = time.monotonic()
        await taskServer.kill()
        reply = await browser.next()
        assert (reply["id"], reply["error"]["code"]) == (2, -32006)
        for i in range(3, 6):
            browser.call(i, "add", i, i)
            reply = await browser.next()
            assert (reply["id"], reply["error"]["code"]) == (i, -32006)
        assert time.monotonic() - started < 1.0
        await taskServer.listen()
        deadline = time.monotonic() + 10
        i = 100
        while True:
            browser.call(i, "add", i, 1)
            reply = await browser.next()
            if "result" in reply:
                assert reply == {"jsonrpc": "2.0", "id": i, "result": i + 1}
                break
            assert reply["error"]["code"] == -32006
            assert time.monotonic() < deadline, "the gateway did not reconnect"
            await deferLater(reactor, 0.05, lambda: None)
            i += 1
        assert not browser.closed.called
    finally:
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_limits(taskServer: TaskServer, tmp_path: Path) -> None:
    """
    Another origin is refused with 403; a browser's calls past its cap are
    answered -32003; a message over the limit closes the websocket with
    1009 (the others carry on).
    """
    gateway = await startGateway(
        taskServer, tmp_path, maxBrowserCalls=2, maxMessageSize=64 * 1024
    )
    try:
        refused = await gateway.browser(origin="http://evil.example")
        wasClean, code, reason = await refused.closed
        assert not refused.opened.called
        assert "403" in str(reason), reason

        browser = await gateway.browser()
        for i in range(3):
            browser.call(i, "nap", 0.2)
        first = await browser.next()
        assert first == {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {
                "code": -32003,
                "message": "overloaded",
                "data": {"retryAfter": 1.0, "limit": 2},
            },
        }
        assert sorted([(await browser.next())["id"] for _ in range(2)]) == [0, 1]

        big = await gateway.browser()
        big.call(1, "big", "x" * (65 * 1024))
        wasClean, code, reason = await big.closed
        assert code == 1009, (wasClean, code, reason)
        browser.call(9, "add", 4, 5)
        assert (await browser.next())["result"] == 9
    finally:
        await gateway.stop()
