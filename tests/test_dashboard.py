"""
The dashboard in memory: the pool's new C{$/stats} fields (workers, latency
percentiles, recent failures) on L{FakeProcessReactor}; L{DashboardFeed}
with a fake gateway on a fake clock; and the dashboard's page and websocket
on a real L{GatewaySite}, browsers (autobahn's client protocol) connected
over L{iosim}, its upstream a fake that answers what each test says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from txaio.testutil import replace_loop

from taskservice._dashfeed import READ_ONLY, DashboardFeed
from taskservice._recentcalls import MAX_FAILURES, MAX_TEXT, percentile
from taskservice.errors import MethodNotFound, TaskFailed
from taskservice.gateway import GatewayFactory, GatewaySite, makeGatewayResource
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor
from taskservice.wire import CANCEL_JOB, JOB, JOBS, STATS, SUBMIT
from tests.test_gateway import Browser

_case = SynchronousTestCase()
result = _case.successResultOf

GATEWAY = IPv4Address("TCP", "127.0.0.1", 8080)
HOST = "127.0.0.1:8080"
ORIGIN = f"http://{HOST}"


def serverStats(**fields: Any) -> dict[str, Any]:
    """
    A task server's C{$/stats}, with C{fields} changed.
    """
    stats: dict[str, Any] = {
        "workers": {"size": 2, "idle": 1, "busy": 1, "starting": 0, "retiring": 0},
        "running": 1,
        "queued": 0,
        "completed": 0,
        "failed": 0,
        "workerList": [],
        "latency": {"window": 60.0, "calls": 0},
        "recentFailures": [],
    }
    stats.update(fields)
    return stats


# -- the pool's stats ------------------------------------------------------------


def makePool() -> tuple[FakeProcessReactor, ProcessPool]:
    reactor = FakeProcessReactor()
    pool = ProcessPool(
        reactor, ["tests.pooltasks"], size=2, memoryOf=lambda pid: pid * 4096
    )
    pool.startService()
    reactor.readyAll()
    return reactor, pool


def test_workerListInStats() -> None:
    """
    C{$/stats} lists each live worker by id: its pid, state, resident memory
    (as the pool's C{memoryOf} reads it), calls served and calls held.
    """
    reactor, pool = makePool()
    for _ in range(3):
        pool.submit("add", [1, 2])
    reactor.runAllCalls(pool.registry)
    held = pool.submit("add", [2, 2])
    workers = pool.stats()["workerList"]
    assert [w["id"] for w in workers] == [1, 2]
    assert [w["pid"] for w in workers] == [1001, 1002]
    assert [w["rss"] for w in workers] == [1001 * 4096, 1002 * 4096]
    assert sum(w["served"] for w in workers) == 3
    assert sorted((w["state"], w["holding"]) for w in workers) == [
        ("busy", 1),
        ("idle", 0),
    ]
    reactor.runAllCalls(pool.registry)
    assert result(held) == 4


def test_latencyOfTheLastMinute() -> None:
    """
    The percentiles cover the calls that ended in the last 60 s, from
    submission to outcome; calls refused at once are not in them.
    """
    reactor, pool = makePool()
    for _ in range(4):
        pool.submit("add", [1, 1])
    reactor.advance(0.25)
    reactor.runAllCalls(pool.registry)
    pool.submit("nosuchtask")
    latency = pool.stats()["latency"]
    # Two ran at once; two waited for them, the same quarter second.
    assert latency["calls"] == 4
    assert latency["p50"] == latency["max"] == pytest.approx(0.25)
    reactor.advance(61)
    assert pool.stats()["latency"] == {
        "window": 60.0,
        "calls": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }


def test_percentileNearestRank() -> None:
    """
    Nearest rank: p50 of 1..10 is 5, p90 is 9, p99 is 10; one value is
    every percentile.
    """
    values = [float(v) for v in range(1, 11)]
    assert [percentile(values, f) for f in (0.5, 0.9, 0.99)] == [5.0, 9.0, 10.0]
    assert percentile([3.0], 0.5) == percentile([3.0], 0.99) == 3.0


def test_recentFailures() -> None:
    """
    The last failed calls, newest first, with the task, the outcome and the
    error's type and message (clipped); at most MAX_FAILURES of them.
    Successes, refusals and cancellations are not failures.
    """
    reactor, pool = makePool()
    pool.submit("add", [1, 2])
    for i in range(MAX_FAILURES + 2):
        pool.submit("add", [i, "x" * (MAX_TEXT * 2)])
    reactor.runAllCalls(pool.registry)
    pool.submit("add", [1, 2, 3])
    queued = [pool.submit("add", [1, 1]) for _ in range(3)]
    queued[-1].cancel()
    _case.failureResultOf(queued[-1])
    failures = pool.stats()["recentFailures"]
    assert len(failures) == MAX_FAILURES
    newest = failures[0]
    assert newest["task"] == "add"
    assert newest["outcome"] == "task_error"
    assert newest["code"] == TaskFailed.code
    assert newest["type"] == "TypeError"
    assert "unsupported operand" in newest["message"]
    assert newest["at"] == reactor.seconds()
    assert all(len(f["message"]) <= MAX_TEXT for f in failures)
    reactor.runAllCalls(pool.registry)


# -- the feed --------------------------------------------------------------------


class FakeUpstream:
    """
    The gateway's upstream: records each request; the test answers it.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any, Deferred[Any]]] = []

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        onProgress: Any = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.requests.append((method, params, d))
        return d

    def abandon(self, d: Deferred[Any]) -> None:
        pass

    def waiting(self, method: str) -> list[tuple[Any, Deferred[Any]]]:
        return [(p, d) for m, p, d in self.requests if m == method and not d.called]

    def answer(self, method: str, value: Any) -> None:
        """
        Answer every unanswered C{method} request with C{value}.
        """
        for _, d in self.waiting(method):
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)


class FakeGateway:
    """
    What the feed reads of a gateway: C{statsDocument} and C{client}.
    """

    def __init__(self) -> None:
        self.client = FakeUpstream()
        self.documents: list[Deferred[dict[str, Any]]] = []

    def statsDocument(self) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.documents.append(d)
        return d

    def answer(self, taskServer: Any) -> None:
        d = self.documents[-1]
        assert not d.called
        d.callback({"gateway": {"connections": 0}, "taskServer": taskServer})


class RecordingViewer:
    def __init__(self, jobState: str | None = None) -> None:
        self.jobState = jobState
        self.pushed: list[bytes] = []
        self.closed = False

    def push(self, message: bytes) -> None:
        self.pushed.append(message)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def messages(self, method: str | None = None) -> list[Any]:
        decoded = [json.loads(m) for m in self.pushed]
        return [m["params"] for m in decoded if method in (None, m["method"])]


def makeFeed(**kwargs: Any) -> tuple[Clock, FakeGateway, DashboardFeed]:
    clock = Clock()
    gateway = FakeGateway()
    feed = DashboardFeed(clock, gateway, **kwargs)
    feed.startService()
    return clock, gateway, feed


def test_oneSampleForEveryViewer() -> None:
    """
    A sample is taken at start and every interval after; each viewer gets
    the very same encoded bytes (encoded once).
    """
    clock, gateway, feed = makeFeed()
    viewers = [RecordingViewer(), RecordingViewer()]
    for viewer in viewers:
        feed.addViewer(viewer)
    assert len(gateway.documents) == 1
    gateway.answer(serverStats(queued=3))
    first, second = (viewer.pushed[-1] for viewer in viewers)
    assert first is second
    sample = json.loads(first)
    assert sample["method"] == "sample"
    assert sample["params"]["point"]["queued"] == 3
    assert sample["params"]["stats"]["taskServer"]["queued"] == 3
    clock.advance(1.0)
    assert len(gateway.documents) == 2
    feed.stopService()


def test_ticksNeverPileUp() -> None:
    """
    While the task server has not answered a sample, no other is asked for.
    """
    clock, gateway, feed = makeFeed()
    clock.pump([1.0] * 5)
    assert len(gateway.documents) == 1
    gateway.answer(serverStats())
    clock.advance(1.0)
    assert len(gateway.documents) == 2
    gateway.answer(serverStats())
    feed.stopService()


def test_throughput() -> None:
    """
    Calls per second come from the counters' change since the last point;
    not for the first point, after the task server was unreachable, when
    its counters went back (it restarted), or when they are another task
    server's (its uptime did not follow the clock).
    """
    clock, gateway, feed = makeFeed()
    answers = [
        serverStats(completed=100, failed=4, uptime=10.0),
        serverStats(completed=150, failed=6, uptime=11.0),
        {"error": {"code": -32006, "message": "task server unavailable"}},
        serverStats(completed=160, failed=6, uptime=13.0),
        serverStats(completed=170, failed=6, uptime=14.0),
        serverStats(completed=5, failed=0, uptime=0.5),
        serverStats(completed=10, failed=0, uptime=1.5),
        # Another task server, with more calls (it started earlier).
        serverStats(completed=900, failed=0, uptime=800.0),
    ]
    for answer in answers:
        gateway.answer(answer)
        clock.advance(0.5)
        clock.advance(0.5)
    rates = [(p["rate"], p["failedRate"]) for p in feed.history]
    assert rates == [
        (None, None),
        (50.0, 2.0),
        (None, None),
        (None, None),
        (10.0, 0.0),
        (None, None),
        (5.0, 0.0),
        (None, None),
    ]
    assert feed.history[2]["queued"] is None
    gateway.answer(serverStats())
    feed.stopService()


def test_historyForNewViewers() -> None:
    """
    The chart's points are kept for C{history} seconds; a viewer opening
    the page gets them in C{hello} (with the options), then the latest
    sample.
    """
    clock, gateway, feed = makeFeed(history=3.0)
    for queued in range(5):
        gateway.answer(serverStats(queued=queued))
        clock.advance(1.0)
    viewer = RecordingViewer()
    feed.addViewer(viewer)
    hello, latest = viewer.messages()
    assert [p["queued"] for p in hello["points"]] == [2, 3, 4]
    assert hello["control"] is False
    assert hello["interval"] == 1.0
    assert hello["history"] == 3.0
    assert "failed" in hello["states"]
    assert latest["point"]["queued"] == 4
    gateway.answer(serverStats())
    feed.stopService()


def test_oneJobListingPerFilter() -> None:
    """
    Each tick lists jobs once per state some viewer filters on, however
    many viewers share it, and not while that listing is unanswered; each
    list reaches only its viewers. Nobody watching: no listing.
    """
    clock, gateway, feed = makeFeed()
    gateway.answer(serverStats())
    assert gateway.client.waiting(JOBS) == []
    every = [RecordingViewer(), RecordingViewer()]
    failed = RecordingViewer("failed")
    for viewer in (*every, failed):
        feed.addViewer(viewer)
    clock.advance(1.0)
    gateway.answer(serverStats())
    asked = [p for p, _ in gateway.client.waiting(JOBS)]
    assert sorted(asked, key=len) == [{"limit": 50}, {"limit": 50, "state": "failed"}]
    # A listing still unanswered is not asked for again; samples go on.
    clock.advance(1.0)
    gateway.answer(serverStats())
    assert len(gateway.client.waiting(JOBS)) == 2
    assert len(gateway.documents) == 3
    for params, d in gateway.client.waiting(JOBS):
        d.callback([{"job": params.get("state", "any")}])
    assert [m["jobs"] for m in every[0].messages("jobs")] == [[{"job": "any"}]]
    assert every[0].pushed[-1] is every[1].pushed[-1]
    assert [m["jobs"] for m in failed.messages("jobs")] == [[{"job": "failed"}]]
    feed.stopService()


def test_jobListingError() -> None:
    """
    A listing that fails (a task server keeping no jobs) reaches its
    viewers as the wire error.
    """
    clock, gateway, feed = makeFeed()
    viewer = RecordingViewer()
    feed.addViewer(viewer)
    gateway.answer(serverStats())
    gateway.client.answer(JOBS, MethodNotFound("method not found", "no --jobs-db"))
    (listed,) = viewer.messages("jobs")
    assert listed == {
        "state": None,
        "error": {
            "code": -32601,
            "message": "method not found",
            "data": "no --jobs-db",
        },
    }
    feed.stopService()


def test_readOnlyRefusesControl() -> None:
    """
    Without control, cancel and retry are refused (-32005, saying how to
    enable them), and nothing is sent upstream.
    """
    clock, gateway, feed = makeFeed()
    gateway.answer(serverStats())
    for d in (feed.cancelJob("j1"), feed.retryJob("j1")):
        error = _case.failureResultOf(d).value
        assert error.toWire() == {
            "code": -32005,
            "message": "unauthorised",
            "data": READ_ONLY,
        }
    assert gateway.client.requests == []
    feed.stopService()


def test_cancelWithControl() -> None:
    """
    With control, cancel is C{$/cancelJob} of the job, answered with its
    state; the viewers' lists are refreshed at once.
    """
    clock, gateway, feed = makeFeed(control=True)
    gateway.answer(serverStats())
    feed.addViewer(RecordingViewer())
    d = feed.cancelJob("j1")
    ((params, _),) = gateway.client.waiting(CANCEL_JOB)
    assert params == {"job": "j1"}
    gateway.client.answer(CANCEL_JOB, {"job": "j1", "state": "cancelled"})
    assert result(d) == {"job": "j1", "state": "cancelled"}
    assert len(gateway.client.waiting(JOBS)) == 1
    gateway.client.answer(JOBS, [])
    feed.stopService()


def test_retrySubmitsTheSameMethodAndParams() -> None:
    """
    Retry reads the job (C{$/job}) and submits its method and params again
    as a new job, without its key (which would name the first job).
    """
    clock, gateway, feed = makeFeed(control=True)
    gateway.answer(serverStats())
    d = feed.retryJob("j1")
    gateway.client.answer(
        JOB,
        {"job": "j1", "state": "failed", "method": "fib", "params": [30], "key": "k"},
    )
    ((params, _),) = gateway.client.waiting(SUBMIT)
    assert params == {"method": "fib", "params": [30]}
    gateway.client.answer(SUBMIT, {"job": "j2", "state": "queued"})
    assert result(d) == {"job": "j2", "state": "queued"}


def test_retryOnlyWhatEnded() -> None:
    """
    A job still waiting or running is not submitted again (-32602).
    """
    clock, gateway, feed = makeFeed(control=True)
    gateway.answer(serverStats())
    d = feed.retryJob("j1")
    gateway.client.answer(JOB, {"job": "j1", "state": "running", "method": "fib"})
    error = _case.failureResultOf(d).value
    assert error.code == -32602
    assert "only a job that has ended" in error.data
    assert gateway.client.waiting(SUBMIT) == []
    feed.stopService()


def test_stopClosesViewers() -> None:
    """
    Stopping the feed stops sampling and closes every viewer.
    """
    clock, gateway, feed = makeFeed()
    gateway.answer(serverStats())
    viewer = RecordingViewer()
    feed.addViewer(viewer)
    result(feed.stopService())
    assert viewer.closed
    clock.advance(5.0)
    assert len(gateway.documents) == 1
    assert clock.getDelayedCalls() == []


# -- the page and its websocket ---------------------------------------------------


@pytest.fixture(autouse=True)
def fakeLoop() -> Iterator[None]:
    with replace_loop(FakeProcessReactor()):
        yield


class Site:
    """
    A gateway site with a dashboard, its upstream a L{FakeUpstream}.
    """

    def __init__(self, control: bool = False, **kwargs: Any) -> None:
        self.reactor = FakeProcessReactor()
        self.upstream = FakeUpstream()
        self.gateway = GatewayFactory(self.reactor, self.upstream)
        self.feed = DashboardFeed(self.reactor, self.gateway, control=control)
        self.site = GatewaySite(self.gateway, dashboard=self.feed)
        self.pumps: list[iosim.IOPump] = []
        self.feed.startService()

    def sample(self, stats: dict[str, Any]) -> None:
        self.upstream.answer(STATS, stats)
        self.flush()

    def flush(self) -> None:
        while any([pump.flush() for pump in self.pumps]):
            pass

    def browser(self, origin: str | None = ORIGIN) -> Browser:
        factory = WebSocketClientFactory(
            f"ws://{HOST}/dashboard/ws", origin=origin, reactor=self.reactor
        )
        factory.protocol = Browser
        browser = factory.buildProtocol(GATEWAY)
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        server = self.site.buildProtocol(peer)
        self.pumps.append(
            iosim.connect(
                server,
                iosim.FakeTransport(server, True, GATEWAY, peer),
                browser,
                iosim.FakeTransport(browser, False, peer, GATEWAY),
                greet=False,
                clock=self.reactor,
            )
        )
        self.flush()
        assert isinstance(browser, Browser)
        return browser

    def ask(self, browser: Browser, requestId: Any, method: str, **params: Any) -> Any:
        browser.send(
            {"jsonrpc": "2.0", "id": requestId, "method": method, "params": params}
        )
        self.flush()


def render(resource: Any, path: list[bytes]) -> DummyRequest:
    request = DummyRequest(path)
    child = getChildForRequest(resource, request)
    body = child.render(request)
    if isinstance(body, bytes):
        request.write(body)
    return request


def test_pageAndFiles() -> None:
    """
    C{/dashboard} redirects to C{/dashboard/}, the page; its script and
    style are beside it; other names are 404. Without a feed there is no
    dashboard at all (the files are not served as plain files either).
    """
    h = Site()
    root = h.site.resource
    assert render(root, [b"dashboard"]).responseCode == 301
    assert render(root, [b"dashboard"]).responseHeaders.getRawHeaders(b"location") == [
        b"dashboard/"
    ]
    page = render(root, [b"dashboard", b""])
    assert b"taskservice dashboard" in b"".join(page.written)
    script = render(root, [b"dashboard", b"dashboard.js"])
    assert script.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/javascript; charset=utf-8"
    ]
    assert render(root, [b"dashboard", b"nope.js"]).responseCode == 404
    bare = makeGatewayResource(h.gateway)
    assert render(bare, [b"dashboard", b""]).responseCode == 404
    assert render(bare, [b"dashboard", b"dashboard.js"]).responseCode == 404
    h.sample(serverStats())
    h.feed.stopService()


def test_helloThenSamples() -> None:
    """
    A page opening the websocket gets C{hello} (read-only by default), then
    a C{sample} every second, pushed without asking.
    """
    h = Site()
    h.sample(serverStats(queued=1))
    browser = h.browser()
    assert browser.opened
    hello, latest = browser.take()
    assert hello["method"] == "hello"
    assert hello["params"]["control"] is False
    assert latest["params"]["point"]["queued"] == 1
    h.upstream.answer(JOBS, [])
    h.flush()
    browser.take()
    h.reactor.advance(1.0)
    h.sample(serverStats(queued=2))
    (pushed,) = [m for m in browser.take() if m["method"] == "sample"]
    assert pushed["params"]["point"]["queued"] == 2
    h.upstream.answer(JOBS, [])
    h.feed.stopService()
    h.flush()
    assert browser.closed is not None and browser.closed[1] == 1001


def test_originNotAllowed() -> None:
    """
    A page from another origin is refused (403) by the gateway's own
    origin rules, and counted with the gateway's refusals.
    """
    h = Site()
    h.sample(serverStats())
    browser = h.browser(origin="http://evil.example")
    assert not browser.opened
    assert h.feed.viewers == set()
    assert h.gateway.counters["deniedOrigins"] == 1
    h.feed.stopService()


def test_tooManyViewers() -> None:
    """
    Past MAX_VIEWERS pages the handshake is refused.
    """
    h = Site()
    h.sample(serverStats())
    for _ in range(3):
        h.feed.viewers.add(RecordingViewer())
    factory = h.site.resource.children[b"dashboard"].factory
    factory.maxViewers = 3
    assert not h.browser().opened
    h.feed.viewers.clear()
    h.feed.stopService()


def test_controlOverTheWebsocket() -> None:
    """
    Read-only: cancelJob is answered -32005 and the page stays connected;
    it may still choose which jobs it lists. With control, cancelJob and
    retryJob go upstream.
    """
    h = Site()
    h.sample(serverStats())
    browser = h.browser()
    browser.take()
    h.ask(browser, 1, "cancelJob", job="j1")
    (refused,) = browser.take()
    assert refused["error"] == {
        "code": -32005,
        "message": "unauthorised",
        "data": READ_ONLY,
    }
    h.ask(browser, 2, "jobs", state="failed")
    h.upstream.answer(JOBS, [{"job": "j1", "state": "failed"}])
    h.flush()
    assert browser.take() == [
        {"jsonrpc": "2.0", "id": 2, "result": [{"job": "j1", "state": "failed"}]}
    ]
    assert h.feed.viewers.pop().jobState == "failed"
    h.feed.stopService()

    c = Site(control=True)
    c.sample(serverStats())
    browser = c.browser()
    assert browser.take()[0]["params"]["control"] is True
    c.ask(browser, 1, "cancelJob", job="j1")
    c.upstream.answer(CANCEL_JOB, {"job": "j1", "state": "cancelled"})
    c.upstream.answer(JOBS, [])
    c.flush()
    answers = [m for m in browser.take() if "id" in m]
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": {"job": "j1", "state": "cancelled"}}
    ]
    c.feed.stopService()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"not json", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"reboot"}', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":"jobs","params":{"state":"x"}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"cancelJob","params":{}}', -32602),
        (b'[{"jsonrpc":"2.0","id":1,"method":"jobs"}]', -32600),
        (b'{"function":"jobs","args":{}}', -32600),
    ],
)
def test_badInput(message: bytes, code: int) -> None:
    """
    Whatever a page sends that is not a request the dashboard takes gets a
    named error, and the page stays connected and fed.
    """
    h = Site(control=True)
    h.sample(serverStats())
    browser = h.browser()
    browser.take()
    browser.sendMessage(message)
    h.flush()
    (answer,) = browser.take()
    assert answer["error"]["code"] == code
    browser.sendMessage(b"\x00", isBinary=True)
    h.flush()
    assert browser.take()[0]["error"]["code"] == -32600
    assert browser.closed is None
    h.upstream.answer(JOBS, [])
    h.reactor.advance(1.0)
    h.sample(serverStats())
    assert [m["method"] for m in browser.take() if "method" in m] == ["sample"]
    h.upstream.answer(JOBS, [])
    h.feed.stopService()


def test_dashboardControlOption() -> None:
    """
    C{--dashboard-control} is off by default; with C{--no-websocket} (no
    gateway, so no dashboard) it is a usage error, not silently ignored.
    """
    from twisted.python import usage

    from taskservice.tap import Options

    options = Options()
    options.parseOptions([])
    assert not options["dashboard-control"]
    options = Options()
    options.parseOptions(["--dashboard-control"])
    assert options["dashboard-control"]
    with pytest.raises(usage.UsageError, match="--dashboard-control"):
        Options().parseOptions(["--no-websocket", "--dashboard-control"])
