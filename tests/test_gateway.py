"""
The websocket gateway in memory: browsers (autobahn's Twisted client
protocol) talk to a L{GatewaySite} over L{iosim} transports; the gateway's
real L{TaskClient} talks, over iosim too, to a real L{TaskServerFactory}
whose L{ProcessPool} runs on L{FakeProcessReactor}. Everything runs on that
fake reactor's clock (autobahn's txaio timers included): no sockets, no
processes, no real time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from txaio.testutil import replace_loop

from taskservice._gatewayrig import HOST, ORIGIN
from taskservice.gateway import makeGatewayResource
from taskservice.service import GatewayService
from taskservice.testing import FakeProcessReactor, GatewayRig

_case = SynchronousTestCase()


class Browser(WebSocketClientProtocol):
    """
    A browser's websocket: records what it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.opened = False
        self.closed: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)

    def send(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode())

    def call(self, requestId: Any, method: str, *params: Any, **kw: Any) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": requestId,
                "method": method,
                "params": list(params),
                **kw,
            }
        )

    def take(self) -> list[Any]:
        received, self.received = self.received, []
        return received


class Harness(GatewayRig):
    """
    A gateway in front of a task server with one fake worker running
    L{tests.pooltasks} (L{taskservice.testing.GatewayRig}).
    """

    def __init__(self, web: Path | None = None, **gatewayOptions: Any) -> None:
        super().__init__("tests.pooltasks", 1, web=web, **gatewayOptions)

    def browser(self, origin: str | None = ORIGIN, host: str = HOST) -> Browser:
        return self.connectBrowser(Browser, origin, host)


@pytest.fixture(autouse=True)
def fakeLoop() -> Iterator[None]:
    """
    Autobahn's browser side schedules through txaio's global loop: point it
    at a throwaway clock so nothing reaches the real reactor.
    """
    with replace_loop(FakeProcessReactor()):
        yield


def test_roundTripWithTheBrowsersId() -> None:
    """
    A browser's call reaches the task server and its result comes back with
    the browser's own id (string or number), not the upstream one.
    """
    h = Harness()
    browser = h.browser()
    assert browser.opened
    browser.call("first", "add", 1, 2)
    browser.call(7, "add", 3, 4)
    h.run()
    assert sorted(browser.take(), key=str) == sorted(
        [
            {"jsonrpc": "2.0", "id": "first", "result": 3},
            {"jsonrpc": "2.0", "id": 7, "result": 7},
        ],
        key=str,
    )
    assert h.factory.stats()["calls"] == 2
    assert h.factory.stats()["inFlight"] == 0


def error(requestId: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": requestId, "error": body}


def test_twoBrowsersSameIdNeverCollide() -> None:
    """
    Two browsers using the same id each get their own answer: upstream
    the calls carry the client's own ids.
    """
    h = Harness()
    first, second = h.browser(), h.browser()
    first.call(1, "add", 1, 1)
    second.call(1, "add", 10, 10)
    h.run()
    assert first.take() == [{"jsonrpc": "2.0", "id": 1, "result": 2}]
    assert second.take() == [{"jsonrpc": "2.0", "id": 1, "result": 20}]
    assert h.factory.stats()["connections"] == 2


def test_progressGoesOnlyToTheAskingBrowser() -> None:
    """
    $/progress notifications name the browser's id and reach only the
    browser whose call reports them.
    """
    h = Harness()
    asking, other = h.browser(), h.browser()
    asking.call("c", "count", 3)
    other.call("c", "add", 1, 1)
    h.run()
    assert asking.take() == [
        {
            "jsonrpc": "2.0",
            "method": "$/progress",
            "params": {"done": i, "total": 3, "id": "c"},
        }
        for i in (1, 2, 3)
    ] + [{"jsonrpc": "2.0", "id": "c", "result": 3}]
    assert other.take() == [{"jsonrpc": "2.0", "id": "c", "result": 2}]


def test_cancelAnswersCancelledOnce() -> None:
    """
    $/cancelRequest from a browser cancels its running call upstream (the
    worker running it is killed): the browser gets -32800 once, and the
    gateway carries on with a fresh worker.
    """
    h = Harness()
    browser = h.browser()
    browser.call(5, "add", 1, 1)
    h.flush()
    [worker] = h.reactor.alive
    assert worker.calls
    browser.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 5}})
    h.flush()
    assert browser.take() == [error(5, -32800, "cancelled")]
    assert worker.killed
    h.reactor.reapAll()
    h.reactor.readyAll()
    h.run()
    assert browser.take() == []
    browser.call(6, "add", 2, 2)
    h.run()
    assert browser.take() == [{"jsonrpc": "2.0", "id": 6, "result": 4}]
    assert h.factory.stats()["cancelled"] == 1


def test_cancelAsARequestAndOfUnknownIds() -> None:
    """
    $/cancelRequest sent with an id of its own is answered null; naming no
    id is invalid params; naming an unknown id is ignored.
    """
    h = Harness()
    browser = h.browser()
    browser.call(1, "$/cancelRequest", 99)
    browser.send({"jsonrpc": "2.0", "id": 2, "method": "$/cancelRequest", "params": {}})
    browser.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {}})
    h.flush()
    assert browser.take() == [
        {"jsonrpc": "2.0", "id": 1, "result": None},
        error(
            2,
            -32602,
            "invalid params",
            '$/cancelRequest needs {"id": ...} naming a request id',
        ),
    ]


def test_browserGoneAbandonsItsCalls() -> None:
    """
    When a browser goes away, its calls are abandoned: the queued one is
    dropped upstream, the running one is left to finish (its worker is not
    killed) and its late result goes nowhere.
    """
    h = Harness()
    browser, other = h.browser(), h.browser()
    browser.call(1, "add", 1, 1)
    browser.call(2, "add", 2, 2)
    other.call(1, "add", 3, 3)
    h.flush()
    [worker] = h.reactor.alive
    assert (h.pool.stats()["running"], h.pool.stats()["queued"]) == (1, 2)
    browser.dropConnection(abort=True)
    h.flush()
    assert browser.closed is not None
    assert not worker.killed
    assert h.factory.stats()["abandoned"] == 2
    assert h.factory.stats()["connections"] == 1
    h.run()
    assert h.pool.stats()["completed"] == 2, (
        "the gone browser's queued call was dropped"
    )
    assert other.take() == [{"jsonrpc": "2.0", "id": 1, "result": 6}]
    assert h.factory.stats()["inFlight"] == 0


def test_perBrowserCap() -> None:
    """
    Past its cap of calls in flight, a browser's call is answered -32003
    at once with a retry-after hint; other browsers are not affected, and
    the browser may call again once its calls are answered.
    """
    h = Harness(maxBrowserCalls=2)
    browser, other = h.browser(), h.browser()
    for i in range(3):
        browser.call(i, "add", i, i)
    other.call(0, "add", 5, 5)
    h.flush()
    assert browser.take() == [
        error(2, -32003, "overloaded", {"retryAfter": 1.0, "limit": 2}),
    ]
    h.run()
    assert sorted(r["id"] for r in browser.take()) == [0, 1]
    assert other.take() == [{"jsonrpc": "2.0", "id": 0, "result": 10}]
    browser.call(3, "add", 3, 3)
    h.run()
    assert browser.take() == [{"jsonrpc": "2.0", "id": 3, "result": 6}]
    assert h.factory.stats()["overloaded"] == 1


def test_badInputIsAnsweredAndTheConnectionStays() -> None:
    """
    Invalid JSON, invalid requests, duplicate ids in flight, unknown $/
    methods, the Workerman dialect and binary messages each get their
    JSON-RPC error, and the connection carries on.
    """
    h = Harness()
    browser = h.browser()
    browser.sendMessage(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    browser.send({"jsonrpc": "2.0", "id": 2, "params": []})
    browser.call(3, "add", 1, 1)
    browser.call(3, "add", 1, 1)
    browser.call(4, "$/auth", "token")
    browser.send({"function": "add", "args": [1, 1]})
    browser.sendMessage(b"\x00\x01", isBinary=True)
    browser.call(5, "nope")
    h.run()
    received = browser.take()
    assert [(r.get("id"), r.get("error", {}).get("code")) for r in received] == [
        (None, -32700),
        (2, -32600),
        (3, -32600),
        (4, -32601),
        (None, -32600),
        (None, -32600),
        (5, -32601),
        (3, None),
    ]
    assert received[-1]["result"] == 2
    assert browser.closed is None
    assert h.factory.stats()["errors"] == 7


def test_batchesAndNotifications() -> None:
    """
    A batch is answered with one array holding a response per request
    (notifications get none); a lone notification runs and is not
    answered; a batch of notifications only is not answered at all.
    """
    h = Harness()
    browser = h.browser()
    browser.send(
        [
            {"jsonrpc": "2.0", "id": "a", "method": "add", "params": [1, 2]},
            {"jsonrpc": "2.0", "method": "add", "params": [0, 0]},
            {"jsonrpc": "2.0", "id": "b", "method": "nope"},
            7,
        ]
    )
    browser.send({"jsonrpc": "2.0", "method": "add", "params": [5, 5]})
    browser.send([{"jsonrpc": "2.0", "method": "add", "params": [6, 6]}])
    h.run()
    [batch] = browser.take()
    assert batch == [
        {"jsonrpc": "2.0", "id": "a", "result": 3},
        error("b", -32601, "method not found", "nope"),
        error(None, -32600, "invalid request", "a request must be a JSON object"),
    ]
    assert h.pool.stats()["completed"] == 4
    assert h.factory.stats()["inFlight"] == 0


def test_batchOverTheLimitRefusedWhole() -> None:
    """
    As on the task server, a batch of more requests than the browser may
    have in flight (C{maxBrowserCalls}, or C{maxBatch} when smaller) is
    answered with one -32004 error, id null, C{{"limit": n}}, and none of
    it is called; the websocket stays open and a batch at the limit runs.
    """
    h = Harness(maxBrowserCalls=3)
    browser = h.browser()
    browser.send(
        [
            {"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, i]}
            for i in range(4)
        ]
    )
    h.run()
    (reply,) = browser.take()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32004
    assert reply["error"]["data"] == {"limit": 3}
    assert h.factory.stats()["calls"] == 0
    browser.send(
        [
            {"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, i]}
            for i in range(3)
        ]
    )
    h.run()
    (replies,) = browser.take()
    assert sorted(r["result"] for r in replies) == [0, 2, 4]
    assert browser.closed is None
    small = Harness(maxBatch=2)
    browser = small.browser()
    browser.send(
        [
            {"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, i]}
            for i in range(3)
        ]
    )
    small.run()
    (reply,) = browser.take()
    assert reply["error"]["data"] == {"limit": 2}


def test_timeoutMemberReachesTheTaskServer() -> None:
    """
    A request's "timeout" member is the caller's deadline upstream too.
    """
    h = Harness()
    browser = h.browser()
    browser.call(1, "add", 1, 1, timeout=2)
    h.flush()
    h.reactor.advance(2.5)
    h.flush()
    assert browser.take() == [error(1, -32001, "timed out", {"timeout": 2})]


def test_originChecks() -> None:
    """
    The page's own origin (the Host it was served from) is allowed, and so
    are listed origins and clients that send no Origin (not browsers);
    other origins and "null" are refused with HTTP 403.
    """
    h = Harness(allowedOrigins=["https://app.example.com"])
    assert h.browser().opened
    assert h.browser(origin="http://LOCALHOST:8080", host="localhost:8080").opened
    assert h.browser(origin="https://app.example.com").opened
    assert h.browser(origin="https://app.example.com:443").opened
    assert h.browser(origin=None).opened
    for origin, host in [
        ("http://evil.example", HOST),
        ("http://127.0.0.1:8081", HOST),
        ("https://app.example.com:8443", HOST),
        ("null", HOST),
        ("ftp://127.0.0.1:8080", HOST),
        ("http://localhost", "localhost:8080"),
    ]:
        browser = h.browser(origin=origin, host=host)
        assert not browser.opened, origin
        assert browser.closed is not None
        assert "403" in str(browser.closed[2]), browser.closed
    assert h.factory.stats()["deniedOrigins"] == 6


def test_anyOrigin() -> None:
    """
    allowedOrigins=["*"] lets every origin in.
    """
    h = Harness(allowedOrigins=["*"])
    assert h.browser(origin="http://evil.example").opened


def test_badAllowedOrigin() -> None:
    """
    An allowed origin that is not an http(s) origin is refused at once.
    """
    with pytest.raises(ValueError, match="not an http"):
        Harness(allowedOrigins=["example.com"])


def test_oversizeMessageClosesWith1009() -> None:
    """
    A message over the size limit closes the websocket with code 1009
    (message too big), not a dropped TCP connection; the calls of that
    browser are abandoned.
    """
    h = Harness(maxMessageSize=1000)
    browser = h.browser()
    browser.call(1, "add", "x" * 900, "")
    h.flush()
    browser.call(2, "add", "x" * 1000, "")
    h.flush()
    assert browser.closed is not None
    assert browser.closed[1] == 1009, browser.closed
    assert h.factory.stats()["abandoned"] == 1
    assert h.factory.stats()["connections"] == 0


def test_upstreamUnavailableFailsAtOnce() -> None:
    """
    While the task server is down every call gets -32006 at once; the
    gateway's client reconnects by itself and calls work again.
    """
    h = Harness()
    browser = h.browser()
    browser.call(1, "add", 1, 1)
    h.flush()
    h.endpoint.down()
    assert [(r["id"], r["error"]["code"]) for r in browser.take()] == [(1, -32006)]
    browser.call(2, "add", 1, 1)
    h.flush()
    assert [(r["id"], r["error"]["code"]) for r in browser.take()] == [(2, -32006)]
    h.endpoint.up = True
    for _ in range(30):  # the retry delay: backoff to 1 s, plus up to 1 s jitter
        h.reactor.advance(0.1)
        h.flush()
    browser.call(3, "add", 1, 1)
    h.run()
    assert browser.take() == [{"jsonrpc": "2.0", "id": 3, "result": 2}]


def test_closeAllSaysGoingAway() -> None:
    """
    closeAll (the last step of an orderly stop) closes every browser with
    1001 (going away) and fires once they are all closed.
    """
    h = Harness()
    browsers = [h.browser(), h.browser()]
    d = h.factory.closeAll()
    h.flush()
    assert [b.closed[1] for b in browsers if b.closed] == [1001, 1001]
    assert d.called
    assert h.factory.closeAll().called


# -- /stats and the page -------------------------------------------------------


def render(root: Any, path: bytes, method: bytes = b"GET") -> DummyRequest:
    from twisted.web.resource import getChildForRequest
    from twisted.web.server import NOT_DONE_YET

    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def body(request: DummyRequest) -> bytes:
    return b"".join(request.written)


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_statsDocument() -> None:
    """
    /stats (and $/stats over the websocket) is JSON: the gateway's
    counters, the task server's own $/stats, and every registered
    provider's mapping.
    """
    h = Harness()
    h.factory.addStatsProvider(lambda: {"smtpSink": {"received": 3}})
    browser = h.browser()
    browser.call(1, "add", 1, 1)
    h.run()
    request = render(makeGatewayResource(h.factory, Path("/nonexistent")), b"/stats")
    h.flush()
    assert request.finished
    assert header(request, b"content-type") == b"application/json"
    document = json.loads(body(request))
    assert document["gateway"]["connections"] == 1
    assert document["gateway"]["calls"] == 1
    assert document["taskServer"]["workers"]["size"] == 1
    assert document["taskServer"]["connections"] == 1
    assert document["smtpSink"] == {"received": 3}
    browser.call(2, "$/stats")
    h.flush()
    [reply] = browser.take()[1:]
    assert reply["id"] == 2
    assert set(reply["result"]) == {"gateway", "taskServer", "smtpSink"}


def test_statsWhenTheTaskServerIsDown() -> None:
    """
    With the task server unreachable, /stats still answers: the task
    server's part is the error.
    """
    h = Harness()
    h.endpoint.down()
    request = render(makeGatewayResource(h.factory, Path("/nonexistent")), b"/stats")
    document = json.loads(body(request))
    assert document["taskServer"]["error"]["code"] == -32006
    assert document["gateway"]["connections"] == 0


def test_pageAndStaticFiles(tmp_path: Path) -> None:
    """
    / is index.html; the other files of the web directory are served with
    their types, subdirectories included; hidden files, unknown types and
    anything else are 404; other methods than GET and HEAD are 405.
    """
    (tmp_path / "index.html").write_text("<h1>tasks</h1>")
    (tmp_path / "taskservice.js").write_text("export {};")
    (tmp_path / "demo.css").write_text("body {}")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.svg").write_text("<svg/>")
    (tmp_path / "img" / "index.html").write_text("nested")
    (tmp_path / ".secret.js").write_text("no")
    (tmp_path / "notes.xyz").write_text("no")
    h = Harness()
    root = makeGatewayResource(h.factory, tmp_path)
    expected = {
        b"/": (b"<h1>tasks</h1>", b"text/html; charset=utf-8"),
        b"/index.html": (b"<h1>tasks</h1>", b"text/html; charset=utf-8"),
        b"/taskservice.js": (b"export {};", b"text/javascript; charset=utf-8"),
        b"/demo.css": (b"body {}", b"text/css; charset=utf-8"),
        b"/img/logo.svg": (b"<svg/>", b"image/svg+xml"),
        b"/img/": (b"nested", b"text/html; charset=utf-8"),
    }
    for path, (content, contentType) in expected.items():
        request = render(root, path)
        assert (body(request), header(request, b"content-type")) == (
            content,
            contentType,
        )
        assert request.responseCode in (None, 200)
    for path in [
        b"/.secret.js",
        b"/notes.xyz",
        b"/nope.js",
        b"/img",
        b"/../x",
        b"/img/x/y",
    ]:
        assert render(root, path).responseCode == 404, path
    request = render(root, b"/taskservice.js", b"POST")
    assert (request.responseCode, header(request, b"allow")) == (405, b"GET, HEAD")
    assert render(root, b"/stats", b"DELETE").responseCode == 405


def test_noWebDirectory() -> None:
    """
    Without a web directory the gateway still serves /ws and /stats; / is
    a 404.
    """
    h = Harness()
    root = makeGatewayResource(h.factory, Path("/nonexistent"))
    assert render(root, b"/").responseCode == 404


# -- GatewayService ------------------------------------------------------------


class Step(Service):
    """
    A child service whose stop is recorded and finishes when told to.
    """

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.stopping: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self.log.append(f"stop {self.name}")
        self.stopping = Deferred()
        return self.stopping


class ClosingFactory:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def closeAll(self) -> Deferred[None]:
        self.log.append("close websockets")
        return succeed(None)


def test_gatewayServiceStopsInOrder() -> None:
    """
    GatewayService stops one step at a time: the websocket listener, then
    the task server (its drain), then the client, then the websockets.
    """
    reactor = MemoryReactorClock()
    log: list[str] = []
    taskServer, client = Step("task server", log), Step("client", log)
    service = GatewayService(
        reactor,
        "tcp:8080:interface=127.0.0.1",
        Site(Resource()),
        ClosingFactory(log),
        client,
        taskServer,
    )
    assert list(service) == [taskServer, client, service.listener]
    service.privilegedStartService()
    service.startService()
    assert [port[0] for port in reactor.tcpServers] == [8080]
    stopped = service.stopService()
    assert log == ["stop task server"]
    assert reactor.tcpServers and not service.listener.running
    assert taskServer.stopping is not None
    taskServer.stopping.callback(None)
    assert log == ["stop task server", "stop client"]
    assert client.stopping is not None
    client.stopping.callback(None)
    assert log == ["stop task server", "stop client", "close websockets"]
    assert stopped.called


def test_gatewayServiceStopGoesOnAfterAFailedStep() -> None:
    """
    A step of the stop that fails (say, the task server's drain) is logged,
    and the later steps still run.
    """
    reactor = MemoryReactorClock()
    log: list[str] = []
    taskServer, client = Step("task server", log), Step("client", log)
    service = GatewayService(
        reactor, "tcp:8080", Site(Resource()), ClosingFactory(log), client, taskServer
    )
    service.privilegedStartService()
    service.startService()
    stopped = service.stopService()
    assert taskServer.stopping is not None
    taskServer.stopping.errback(RuntimeError("drain failed"))
    assert client.stopping is not None
    client.stopping.callback(None)
    assert log == ["stop task server", "stop client", "close websockets"]
    assert stopped.called
