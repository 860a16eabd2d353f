"""
The JavaScript client (C{taskservice/web/taskservice.js}) and the demo page,
in real headless Chromium.

The gateway is not under test here: a small stand-in written below speaks
the gateway's websocket protocol (JSON-RPC 2.0 with C{$/progress} and
C{$/cancelRequest}) with Autobahn on a twisted.web C{Site} that also serves
the files of C{taskservice/web/} and a C{/stats} resource. Its methods:
C{echo}, C{fail}, C{count} (progress, then the count), C{hang} (answers only
when cancelled or past its C{timeout}), C{deaf} (never answers), C{drop}
(aborts the TCP connection) and a fake C{send_mail} for the demo page.

It keeps durable jobs too, beside its connections (so they outlive them):
C{$/submit}, C{$/attach}, C{$/job} and C{$/cancelJob} as the real gateway
forwards them, for two tasks: C{steps} (one progress step per C{step} call
naming the job, so a test decides when a job moves; C{step} with C{"fail"}
ends it with an error) and C{send_mail} (10 messages every 10 ms, counted by
the fake sink, pausing at the factory's C{holdAt} until L{FakeJob.release}).

Sync Playwright cannot share a thread with the running reactor, so every
browser action runs in one dedicated thread (Playwright objects belong to
the thread that made them) while the reactor serves in the main thread.
Debian's C{/usr/bin/chromium} is driven through PyPI C{playwright} (never
C{playwright install}).

Set C{TASKSERVICE_SCREENSHOT=path.png} to save the demo page's screenshot
there (the one in docs/_static/ was made that way).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]
syncAPI = pytest.importorskip(
    "playwright.sync_api",
    reason="PyPI playwright is not installed (pip install -e '.[test]')",
)

WEB = Path(__file__).resolve().parent.parent / "taskservice" / "web"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAFETY = 15.0
"""Seconds before any wait fails the test (only ever reached on a bug)."""
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
T = TypeVar("T")


# -- the stand-in gateway ------------------------------------------------------


class FakeGatewayProtocol(WebSocketServerProtocol):
    """
    One browser connection to the stand-in gateway.
    """

    factory: Any

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[Any, list[IDelayedCall]] = {}

    def onOpen(self) -> None:
        self.factory.opened += 1
        self.factory.connections.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        for job in self.factory.jobs.values():
            job.attached = [a for a in job.attached if a[0] is not self]
        for timers in self.jobs.values():
            for timer in timers:
                if timer.active():
                    timer.cancel()
        self.jobs.clear()

    def send(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def answer(self, requestId: Any, result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": requestId, "result": result})

    def error(self, requestId: Any, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": requestId, "error": error})

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.factory.received.append(message)
        method = message.get("method")
        params = message.get("params")
        requestId = message.get("id")
        if method == "$/cancelRequest":
            if self.finish(params["id"]) or self.factory.detach(self, params["id"]):
                self.error(params["id"], -32800, "cancelled")
        elif method.startswith("$/"):
            self.factory.jobMethod(self, requestId, method, params)
        elif method == "step":
            self.factory.step(self, requestId, params)
        elif method == "drop":
            self.transport.abortConnection()
        elif method == "echo":
            self.answer(requestId, params[0])
        elif method == "fail":
            self.error(
                requestId,
                -32000,
                "task raised an exception",
                {"type": "ValueError", "message": params[0]},
            )
        elif method == "count":
            self.count(requestId, params["n"], params["delay"])
        elif method == "send_mail":
            self.sendMail(requestId, params["to"])
        elif method == "hang":
            self.jobs[requestId] = []
        elif method == "deaf":
            pass
        else:
            self.error(requestId, -32601, "method not found", method)
        timeout = message.get("timeout")
        if timeout is not None and method != "deaf" and requestId in self.jobs:
            self.jobs[requestId].append(
                self.factory.reactor.callLater(
                    timeout, self.timedOut, requestId, timeout
                )
            )

    def finish(self, requestId: Any) -> bool:
        """
        Stop the job C{requestId}; whether it was running.
        """
        timers = self.jobs.pop(requestId, None)
        for timer in timers or ():
            if timer.active():
                timer.cancel()
        return timers is not None

    def timedOut(self, requestId: Any, timeout: float) -> None:
        self.finish(requestId)
        self.error(requestId, -32001, "timed out", {"timeout": timeout})

    def count(self, requestId: Any, n: int, delay: float) -> None:
        """
        Report progress n times, C{delay} seconds apart, then answer n.
        """
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            progress = {"id": requestId, "done": done, "total": n}
            self.send({"jsonrpc": "2.0", "method": "$/progress", "params": progress})
            if done < n:
                timers[:] = [self.factory.reactor.callLater(delay, step)]
            else:
                self.finish(requestId)
                self.answer(requestId, n)

        timers = [self.factory.reactor.callLater(delay, step)]
        self.jobs[requestId] = timers

    def sendMail(self, requestId: Any, to: list[str]) -> None:
        """
        Pretend to send one message per address, 10 every 10 ms, with
        progress after each, counting them in the fake sink.
        """
        done = 0
        total = len(to)

        def step() -> None:
            nonlocal done
            for _ in range(min(10, total - done)):
                done += 1
                self.factory.sinkReceived += 1
                progress = {"id": requestId, "done": done, "total": total}
                self.send(
                    {"jsonrpc": "2.0", "method": "$/progress", "params": progress}
                )
            if done < total:
                timers[:] = [self.factory.reactor.callLater(0.01, step)]
            else:
                self.finish(requestId)
                self.answer(requestId, {"sent": total})

        timers = [self.factory.reactor.callLater(0, step)]
        self.jobs[requestId] = timers


class FakeJob:
    """
    A durable job of the stand-in gateway: its state, latest progress, end,
    and the browser requests attached to it.
    """

    def __init__(
        self, factory: FakeGatewayFactory, jobId: str, method: str, params: Any
    ) -> None:
        self.factory = factory
        self.id = jobId
        self.method = method
        self.params = params
        self.state = "running"
        self.createdAt = factory.reactor.seconds()
        self.finishedAt: float | None = None
        self.progress: dict[str, Any] | None = None
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.attached: list[tuple[FakeGatewayProtocol, Any]] = []
        self.timer: IDelayedCall | None = None
        self.done = 0
        self.total = len(params["to"]) if method == "send_mail" else params["n"]
        if method == "send_mail":
            self.release()

    def describe(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "method": self.method,
            "state": self.state,
            "progress": self.progress,
            "createdAt": self.createdAt,
            "finishedAt": self.finishedAt,
            "result": self.result,
            "error": self.error,
        }

    def advance(self) -> None:
        """
        One step done: tell every attached request.
        """
        self.done += 1
        self.progress = {"done": self.done, "total": self.total}
        for connection, requestId in self.attached:
            update = {**self.progress, "job": self.id, "id": requestId}
            connection.send(
                {"jsonrpc": "2.0", "method": "$/progress", "params": update}
            )

    def release(self) -> None:
        """
        (send_mail) Go on sending, up to the factory's C{holdAt}.
        """
        if self.state == "running" and (self.timer is None or not self.timer.active()):
            self.timer = self.factory.reactor.callLater(0, self.sendSome)

    def sendSome(self) -> None:
        self.timer = None
        for _ in range(min(10, self.total - self.done)):
            if self.factory.holdAt is not None and self.done >= self.factory.holdAt:
                return
            self.factory.sinkReceived += 1
            self.advance()
        if self.done < self.total:
            self.timer = self.factory.reactor.callLater(0.01, self.sendSome)
        else:
            self.end("succeeded", result={"sent": self.total})

    def end(
        self,
        state: str,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.state = state
        self.result = result
        self.error = error
        self.finishedAt = self.factory.reactor.seconds()
        attached, self.attached = self.attached, []
        for connection, requestId in attached:
            self.answer(connection, requestId)

    def answer(self, connection: FakeGatewayProtocol, requestId: Any) -> None:
        """
        Answer an attach of this finished job.
        """
        if self.error is not None:
            connection.send({"jsonrpc": "2.0", "id": requestId, "error": self.error})
        else:
            connection.answer(requestId, self.result)


class FakeGatewayFactory(WebSocketServerFactory):
    """
    The stand-in gateway: records every message received.

    @ivar refuseAttaches: how many of the next C{$/attach} to answer
        UNAVAILABLE (as a gateway whose task server is away does).
    @ivar holdAt: where fake send_mail jobs pause (L{None}: never).
    """

    protocol = FakeGatewayProtocol

    def __init__(self) -> None:
        super().__init__()
        self.reactor = reactor
        self.received: list[dict[str, Any]] = []
        self.connections: set[FakeGatewayProtocol] = set()
        self.opened = 0
        self.sinkReceived = 0
        self.jobs: dict[str, FakeJob] = {}
        self.refuseAttaches = 0
        self.holdAt: int | None = None

    def jobMethod(
        self, connection: FakeGatewayProtocol, requestId: Any, method: str, params: Any
    ) -> None:
        """
        C{$/submit}, C{$/attach}, C{$/job}, C{$/cancelJob}.
        """
        if method == "$/submit":
            if params["method"] not in ("steps", "send_mail"):
                connection.error(
                    requestId, -32601, "method not found", params["method"]
                )
                return
            key = params.get("key")
            for known in self.jobs.values():
                if key is not None and known.params.get("key") == key:
                    connection.answer(
                        requestId,
                        {"job": known.id, "state": known.state, "existing": True},
                    )
                    return
            jobId = f"job{len(self.jobs) + 1}"
            self.jobs[jobId] = FakeJob(
                self, jobId, params["method"], {**params["params"], "key": key}
            )
            connection.answer(requestId, {"job": jobId, "state": "queued"})
            return
        target = self.jobs.get(params["job"])
        if target is None:
            connection.error(requestId, -32007, "job not found", {"job": params["job"]})
        elif method == "$/job":
            connection.answer(requestId, target.describe())
        elif method == "$/cancelJob":
            if target.state == "running":
                target.end("cancelled", error={"code": -32800, "message": "cancelled"})
            connection.answer(requestId, {"job": target.id, "state": target.state})
        elif method == "$/attach":
            if self.refuseAttaches:
                self.refuseAttaches -= 1
                connection.error(requestId, -32006, "task server unavailable")
            elif target.state != "running":
                target.answer(connection, requestId)
            else:
                target.attached.append((connection, requestId))
                if target.progress is not None:
                    update = {**target.progress, "job": target.id, "id": requestId}
                    connection.send(
                        {"jsonrpc": "2.0", "method": "$/progress", "params": update}
                    )
        else:
            connection.error(requestId, -32601, "method not found", method)

    def step(
        self, connection: FakeGatewayProtocol, requestId: Any, params: Any
    ) -> None:
        """
        C{step {"job": id}}: move a C{steps} job one step (its last ends it);
        with C{"fail": true}, end it with a task error. Answers the done count.
        """
        job = self.jobs[params["job"]]
        if params.get("fail"):
            job.end(
                "failed",
                error={
                    "code": -32000,
                    "message": "task raised an exception",
                    "data": {"type": "ValueError", "message": "step failed"},
                },
            )
        else:
            job.advance()
            if job.done == job.total:
                job.end("succeeded", result={"steps": job.done})
        connection.answer(requestId, job.done)

    def detach(self, connection: FakeGatewayProtocol, requestId: Any) -> bool:
        """
        Forget an attach (C{$/cancelRequest} of it); whether there was one.
        """
        for job in self.jobs.values():
            if (connection, requestId) in job.attached:
                job.attached.remove((connection, requestId))
                return True
        return False

    def release(self) -> None:
        """
        Let the held send_mail jobs go on.
        """
        self.holdAt = None
        for job in self.jobs.values():
            if job.method == "send_mail":
                job.release()

    def stopJobs(self) -> None:
        for job in self.jobs.values():
            if job.timer is not None and job.timer.active():
                job.timer.cancel()

    def requests(self, method: str) -> list[dict[str, Any]]:
        """
        The messages received for C{method}.
        """
        return [m for m in self.received if m.get("method") == method]


class StaticFile(Resource):
    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes) -> None:
        super().__init__()
        self.body = body
        self.contentType = contentType

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.contentType)
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class Stats(Resource):
    isLeaf = True

    def __init__(self, gateway: FakeGatewayFactory) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        stats = {
            "gateway": {"connections": len(self.gateway.connections)},
            "taskServer": {},
            "smtpSink": {"received": self.gateway.sinkReceived},
        }
        return json.dumps(stats).encode()


class Root(Resource):
    """
    Like the gateway: the files of taskservice/web/ by name, index.html at
    C{/}, the websocket at C{/ws}, C{/stats}; and an empty page to run
    scripts in.
    """

    def __init__(self, gateway: FakeGatewayFactory) -> None:
        super().__init__()
        self.putChild(b"ws", WebSocketResource(gateway))
        self.putChild(b"stats", Stats(gateway))
        self.putChild(
            b"blank.html",
            StaticFile(b"<!doctype html><title>blank</title>", CONTENT_TYPES[".html"]),
        )

    def getChild(self, path: bytes, request: Request) -> IResource:
        name = path.decode("utf-8", "replace") or "index.html"
        file = WEB / name
        if "/" in name or name.startswith(".") or not file.is_file():
            return notFound()
        contentType = CONTENT_TYPES.get(file.suffix, b"application/octet-stream")
        return StaticFile(file.read_bytes(), contentType)


class Server:
    """
    The stand-in gateway listening on 127.0.0.1.
    """

    def __init__(self, gateway: FakeGatewayFactory, port: Any) -> None:
        self.gateway = gateway
        self.port = port
        self.origin = f"http://127.0.0.1:{port.getHost().port}"


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    gateway = FakeGatewayFactory()
    site = Site(Root(gateway))
    site.noisy = False
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        yield Server(gateway, port)
    finally:
        gateway.stopJobs()
        await port.stopListening()
        for connection in list(gateway.connections):
            connection.transport.abortConnection()
        await until(lambda: not gateway.connections, "connections to close")


async def until(predicate: Callable[[], bool], what: str) -> None:
    """
    Let the reactor run until C{predicate()} holds.
    """
    waited = 0.0
    while not predicate():
        assert waited < SAFETY, f"timed out waiting for {what}"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


# -- the browser, in its own thread ---------------------------------------------


class BrowserThread:
    """
    Chromium driven by sync Playwright from one dedicated thread.
    """

    def __init__(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="playwright")
        self.pool.start()
        self.playwright: Any = None
        self.browser: Any = None

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{function(*args)} in the browser's thread.
        """
        return deferToThreadPool(reactor, self.pool, function, *args)

    def launch(self) -> None:
        self.playwright = syncAPI.sync_playwright().start()
        self.browser = self.playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )

    def shutdown(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self.playwright is not None:
            self.playwright.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    thread = BrowserThread()
    try:
        pytest_twisted.blockon(thread.run(thread.launch))
        yield thread
    finally:
        pytest_twisted.blockon(thread.run(thread.shutdown))
        thread.pool.stop()


PRELUDE = """
const { TaskService, TaskServiceError, ErrorCode } =
  await import("/taskservice.js");
const settle = (promise) => promise.then(
  (value) => ({ value }),
  (e) => ({ error: {
    isTaskServiceError: e instanceof TaskServiceError,
    isError: e instanceof Error,
    name: e.name, code: e.code, message: e.message, data: e.data ?? null,
    causeName: e.cause?.name ?? null,
  } }),
);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
"""


async def runScript(browser: BrowserThread, server: Server, body: str) -> Any:
    """
    Run the JavaScript C{body} (an async function body that may use
    C{TaskService}, C{TaskServiceError}, C{ErrorCode}, C{settle} and
    C{sleep}) in a page of C{server}; return what it returns.
    """
    script = (
        "async () => {\n"
        + PRELUDE
        + "const body = async () => {\n"
        + body
        + "\n};\n"
        + "return await Promise.race([body(), new Promise((_, reject) =>\n"
        + "  setTimeout(() => reject(new Error('script timed out')),"
        + f" {SAFETY * 1000}))]);"
        + "\n}"
    )

    def inBrowser() -> Any:
        page = browser.browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.set_default_timeout(SAFETY * 1000)
            page.goto(server.origin + "/blank.html")
            result = page.evaluate(script)
        finally:
            page.close()
        assert errors == [], errors
        return result

    return await browser.run(inBrowser)


# -- the client ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_callResult(browser: BrowserThread, server: Server) -> None:
    """
    C{TaskService.connect()} with no URL opens C{/ws} on the page's origin;
    calls resolve with their results, with ids allocated by the client, one
    per call, params sent as given.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const state = service.state;
        const replies = await Promise.all([
          service.call("echo", ["one"]),
          service.call("echo", [{ nested: [1, 2, 3] }]),
        ]);
        service.close();
        return { url: service.url, state, replies, closed: service.state };
        """,
    )
    port = server.port.getHost().port
    assert result == {
        "url": f"ws://127.0.0.1:{port}/ws",
        "state": "open",
        "replies": ["one", {"nested": [1, 2, 3]}],
        "closed": "closed",
    }
    assert server.gateway.requests("echo") == [
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["one"]},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "echo",
            "params": [{"nested": [1, 2, 3]}],
        },
    ]


@pytest_twisted.ensureDeferred
async def test_errors(browser: BrowserThread, server: Server) -> None:
    """
    An error reply rejects with a C{TaskServiceError} (an C{Error}) carrying
    the code, message and data; params that are not JSON reject locally with
    INVALID_PARAMS; the error codes are exported, frozen.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const failed = await settle(service.call("fail", ["boom"]));
        const missing = await settle(service.call("nosuchtask"));
        const unsendable = await settle(service.call("echo", [10n]));
        service.close();
        return {
          failed, missing, unsendable,
          codes: ErrorCode, frozen: Object.isFrozen(ErrorCode),
        };
        """,
    )
    assert result["failed"] == {
        "error": {
            "isTaskServiceError": True,
            "isError": True,
            "name": "TaskServiceError",
            "code": -32000,
            "message": "task raised an exception",
            "data": {"type": "ValueError", "message": "boom"},
            "causeName": None,
        }
    }
    assert result["missing"]["error"]["code"] == -32601
    assert result["missing"]["error"]["data"] == "nosuchtask"
    assert result["unsendable"]["error"]["code"] == -32602
    assert result["frozen"] is True
    assert result["codes"] == {
        "PARSE_ERROR": -32700,
        "INVALID_REQUEST": -32600,
        "METHOD_NOT_FOUND": -32601,
        "INVALID_PARAMS": -32602,
        "INTERNAL_ERROR": -32603,
        "TASK_FAILED": -32000,
        "TIMED_OUT": -32001,
        "WORKER_LOST": -32002,
        "OVERLOADED": -32003,
        "TOO_LARGE": -32004,
        "UNAUTHORISED": -32005,
        "UNAVAILABLE": -32006,
        "JOB_NOT_FOUND": -32007,
        "INTERRUPTED": -32008,
        "JOURNAL_UNAVAILABLE": -32009,
        "CANCELLED": -32800,
    }
    assert len(server.gateway.requests("echo")) == 0


@pytest_twisted.ensureDeferred
async def test_progress(browser: BrowserThread, server: Server) -> None:
    """
    C{onProgress} receives each C{$/progress} notification's params, in
    order, all before the call resolves.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const seen = [];
        const value = await service.call("count", { n: 5, delay: 0.01 }, {
          onProgress: (update) => seen.push(update),
        });
        seen.push({ result: value });
        service.close();
        return seen;
        """,
    )
    assert result == [
        *({"id": 1, "done": done, "total": 5} for done in range(1, 6)),
        {"result": 5},
    ]


@pytest_twisted.ensureDeferred
async def test_abortSignal(browser: BrowserThread, server: Server) -> None:
    """
    Aborting the C{signal} sends C{$/cancelRequest} naming the call and
    rejects it at once with CANCELLED, named C{AbortError}, its cause the
    signal's reason; later progress is ignored. An already aborted signal
    rejects without sending anything. The connection carries on.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const controller = new AbortController();
        let updates = 0;
        const outcome = await settle(service.call(
          "count", { n: 1000, delay: 0.01 }, {
            signal: controller.signal,
            onProgress: () => { if (++updates === 3) controller.abort(); },
          }));
        const inFlightAfterAbort = service.inFlight;
        const early = await settle(
          service.call("echo", ["never sent"], { signal: controller.signal }));
        const after = await service.call("echo", ["after"]);
        await sleep(50);
        service.close();
        return { outcome, updates, inFlightAfterAbort, early, after };
        """,
    )
    cancelledError = {
        "isTaskServiceError": True,
        "isError": True,
        "name": "AbortError",
        "code": -32800,
        "message": "cancelled",
        "data": None,
        "causeName": "AbortError",
    }
    assert result == {
        "outcome": {"error": cancelledError},
        "updates": 3,
        "inFlightAfterAbort": 0,
        "early": {"error": cancelledError},
        "after": "after",
    }
    assert server.gateway.requests("$/cancelRequest") == [
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}}
    ]
    assert [m["params"] for m in server.gateway.requests("echo")] == [["after"]]


@pytest_twisted.ensureDeferred
async def test_timeout(browser: BrowserThread, server: Server) -> None:
    """
    The C{timeout} option becomes the request's C{timeout} member and the
    server's TIMED_OUT reply rejects the call; a server that never answers
    is given up on 1 s after the deadline, with TIMED_OUT and a
    C{$/cancelRequest}. A bad timeout is refused locally.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const byServer = await settle(service.call("hang", [], { timeout: 0.2 }));
        const started = performance.now();
        const byClient = await settle(service.call("deaf", [], { timeout: 0.1 }));
        const waited = performance.now() - started;
        const bad = await settle(service.call("echo", [1], { timeout: -1 }));
        service.close();
        return { byServer, byClient, waited, bad };
        """,
    )
    assert result["byServer"]["error"]["code"] == -32001
    assert result["byClient"]["error"]["code"] == -32001
    assert result["byClient"]["error"]["data"] == {"timeout": 0.1}
    assert 1000 <= result["waited"] < 5000
    assert result["bad"]["error"]["code"] == -32600
    assert [m.get("timeout") for m in server.gateway.requests("hang")] == [0.2]
    assert [m["params"] for m in server.gateway.requests("$/cancelRequest")] == [
        {"id": 2}
    ]


@pytest_twisted.ensureDeferred
async def test_reconnectAfterDrop(browser: BrowserThread, server: Server) -> None:
    """
    When the connection drops, the call in flight rejects at once with
    UNAVAILABLE, a call made while disconnected rejects at once with
    UNAVAILABLE, the client reconnects by itself ("close", then "open" and
    "reconnect" events) and the next call works.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect(undefined, { minDelay: 50 });
        const events = [];
        for (const type of ["open", "close", "reconnect"]) {
          service.addEventListener(type, (e) => events.push(
            [type, type === "close" ? e.detail.reconnectIn !== null : null]));
        }
        const reconnected = new Promise((resolve) => service.addEventListener(
          "reconnect", (e) => resolve(e.detail), { once: true }));
        const before = await service.call("echo", ["before"]);
        const inFlight = settle(service.call("hang"));
        service.notify("drop");
        const lost = await inFlight;
        const stateWhileDown = service.state;
        const whileDown = await settle(service.call("echo", ["too early"]));
        const detail = await reconnected;
        const after = await service.call("echo", ["after"]);
        service.close();
        return { before, lost, stateWhileDown, whileDown, detail, after, events };
        """,
    )
    assert result["before"] == "before"
    assert result["lost"]["error"]["code"] == -32006
    assert result["lost"]["error"]["name"] == "TaskServiceError"
    assert result["stateWhileDown"] == "reconnecting"
    assert result["whileDown"]["error"]["code"] == -32006
    assert result["detail"] == {"attempts": 1}
    assert result["after"] == "after"
    assert result["events"] == [
        ["close", True],
        ["open", None],
        ["reconnect", None],
        ["close", False],
    ]
    assert server.gateway.opened == 2
    assert [m["params"] for m in server.gateway.requests("echo")] == [
        ["before"],
        ["after"],
    ]


@pytest_twisted.ensureDeferred
async def test_notifyAndClose(browser: BrowserThread, server: Server) -> None:
    """
    C{notify} sends a message without an id; C{close()} rejects calls in
    flight with UNAVAILABLE and stops for good: calls reject, C{notify}
    throws, and the client does not reconnect.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect(undefined, { minDelay: 10 });
        service.notify("hello", { who: "gateway" });
        const inFlight = settle(service.call("hang"));
        service.close();
        const lost = await inFlight;
        const afterClose = await settle(service.call("echo", ["x"]));
        let thrown = null;
        try { service.notify("hello"); } catch (e) { thrown = e.code; }
        await sleep(200);
        return { lost, afterClose, thrown, state: service.state };
        """,
    )
    assert result["lost"]["error"]["code"] == -32006
    assert result["afterClose"]["error"]["code"] == -32006
    assert result["thrown"] == -32006
    assert result["state"] == "closed"
    assert server.gateway.requests("hello") == [
        {"jsonrpc": "2.0", "method": "hello", "params": {"who": "gateway"}}
    ]
    assert server.gateway.opened == 1


@pytest_twisted.ensureDeferred
async def test_connectFailure(browser: BrowserThread, server: Server) -> None:
    """
    C{TaskService.connect} rejects with UNAVAILABLE when the first attempt
    fails (nothing listens there), and gives up.
    """
    probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    closedPort = probe.getHost().port
    await probe.stopListening()
    result = await runScript(
        browser,
        server,
        f"""
        return await settle(TaskService.connect("ws://127.0.0.1:{closedPort}/ws"));
        """,
    )
    assert result["error"]["code"] == -32006
    assert result["error"]["data"]["url"] == f"ws://127.0.0.1:{closedPort}/ws"


# -- durable jobs -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_jobSubmit(browser: BrowserThread, server: Server) -> None:
    """
    C{submit()} sends C{$/submit} with the task, its params and the submit
    options (a Date C{at} as ISO 8601) and resolves, once the server
    answers, with a handle: its C{id} and C{state}, progress through the
    C{onProgress} option and C{onProgress()} (the latest at once for a late
    listener; its remover works), C{result} resolving with the job's
    result, and C{status()} sending C{$/job}. A key already known gives the
    same job, C{existing}. The handle follows the job with C{$/attach}.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const fromOption = [], fromMethod = [], late = [];
        const job = await service.submit("steps", { n: 2 }, {
          key: "k1", retries: 2, backoff: 0.5, timeout: 30, delay: 0,
          at: new Date(Date.UTC(2030, 0, 2, 3, 4, 5)),
          onProgress: (update) => fromOption.push(update),
        });
        const remove = job.onProgress((update) => fromMethod.push(update.done));
        await service.call("step", { job: job.id });
        while (job.progress?.done !== 1) await sleep(5);
        job.onProgress((update) => late.push(update.done));
        remove();
        await service.call("step", { job: job.id });
        const value = await job.result;
        const status = await job.status();
        const again = await service.submit("steps", { n: 2 }, { key: "k1" });
        service.close();
        return {
          id: job.id, state: job.state, existing: job.existing,
          settled: job.settled, fromOption, fromMethod, late, value,
          status: { job: status.job, state: status.state, progress: status.progress },
          again: { id: again.id, existing: again.existing },
        };
        """,
    )
    assert result == {
        "id": "job1",
        "state": "queued",
        "existing": False,
        "settled": True,
        "fromOption": [
            {"done": 1, "total": 2, "job": "job1", "id": 2},
            {"done": 2, "total": 2, "job": "job1", "id": 2},
        ],
        "fromMethod": [1],
        "late": [1, 2],
        "value": {"steps": 2},
        "status": {
            "job": "job1",
            "state": "succeeded",
            "progress": {"done": 2, "total": 2},
        },
        "again": {"id": "job1", "existing": True},
    }
    assert server.gateway.requests("$/submit")[0] == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "$/submit",
        "params": {
            "method": "steps",
            "params": {"n": 2},
            "key": "k1",
            "delay": 0,
            "at": "2030-01-02T03:04:05.000Z",
            "retries": 2,
            "backoff": 0.5,
            "timeout": 30,
        },
    }
    assert [m["params"] for m in server.gateway.requests("$/attach")] == [
        {"job": "job1"},
        {"job": "job1"},
    ]
    assert [m["params"] for m in server.gateway.requests("$/job")] == [{"job": "job1"}]


@pytest_twisted.ensureDeferred
async def test_jobErrors(browser: BrowserThread, server: Server) -> None:
    """
    A submit the server refuses rejects the C{submit()} promise with its
    error; C{attach()} of an unknown id returns a handle whose C{result}
    rejects with JOB_NOT_FOUND (-32007, C{data.job}); a job that fails
    rejects C{result} with its error. An unobserved rejected C{result} is
    no page error (the job's outcome is in the journal).
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const refused = await settle(service.submit("nosuchtask"));
        const unknown = service.attach("nope");
        const missing = await settle(unknown.result);
        const failing = await service.submit("steps", { n: 3 });
        await service.call("step", { job: failing.id, fail: true });
        const failed = await settle(failing.result);
        service.attach("ignored");
        await sleep(100);
        service.close();
        return { refused, missing, failed, id: unknown.id,
                 codes: [ErrorCode.JOB_NOT_FOUND, ErrorCode.INTERRUPTED,
                         ErrorCode.JOURNAL_UNAVAILABLE] };
        """,
    )
    assert result["refused"]["error"]["code"] == -32601
    assert result["id"] == "nope"
    assert result["missing"]["error"] == {
        "isTaskServiceError": True,
        "isError": True,
        "name": "TaskServiceError",
        "code": -32007,
        "message": "job not found",
        "data": {"job": "nope"},
        "causeName": None,
    }
    assert result["failed"]["error"]["code"] == -32000
    assert result["failed"]["error"]["data"] == {
        "type": "ValueError",
        "message": "step failed",
    }
    assert result["codes"] == [-32007, -32008, -32009]


@pytest_twisted.ensureDeferred
async def test_jobCancel(browser: BrowserThread, server: Server) -> None:
    """
    C{cancel()} sends C{$/cancelJob} naming the job and resolves with the
    server's C{{job, state}}; C{result} then rejects with CANCELLED (named
    C{AbortError}). Cancelling a finished job leaves its result.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect();
        const job = await service.submit("steps", { n: 3 });
        const cancelledReply = await job.cancel();
        const outcome = await settle(job.result);
        const finished = await service.submit("steps", { n: 1 });
        await service.call("step", { job: finished.id });
        const value = await finished.result;
        const afterEnd = await finished.cancel();
        service.close();
        return { cancelledReply, outcome, value, afterEnd };
        """,
    )
    assert result["cancelledReply"] == {"job": "job1", "state": "cancelled"}
    assert result["outcome"]["error"]["code"] == -32800
    assert result["outcome"]["error"]["name"] == "AbortError"
    assert result["value"] == {"steps": 1}
    assert result["afterEnd"] == {"job": "job2", "state": "succeeded"}
    assert [m["params"] for m in server.gateway.requests("$/cancelJob")] == [
        {"job": "job1"},
        {"job": "job2"},
    ]


@pytest_twisted.ensureDeferred
async def test_jobReattach(browser: BrowserThread, server: Server) -> None:
    """
    When the socket drops, a job handle's C{result} does not reject: once
    the client has reconnected the handle sends C{$/attach} again, hears
    the latest progress at once and then the rest, and C{result} resolves.
    A handle made with C{reattach: false} rejects with UNAVAILABLE at the
    drop, as a call does. A handle made before the socket is open waits for
    it, and C{close()} rejects a handle that is waiting with UNAVAILABLE.
    """
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect(undefined, { minDelay: 50 });
        const seen = [];
        const job = await service.submit("steps", { n: 3 }, {
          onProgress: (update) => seen.push([update.done, update.id]),
        });
        const once = service.attach(job.id, { reattach: false });
        const onceOutcome = settle(once.result);
        await service.call("step", { job: job.id });
        while (job.progress?.done !== 1) await sleep(5);
        const reconnected = new Promise((resolve) => service.addEventListener(
          "reconnect", resolve, { once: true }));
        service.notify("drop");
        const lostOnce = await onceOutcome;
        await reconnected;
        while (seen.length < 2) await sleep(5);
        await service.call("step", { job: job.id });
        await service.call("step", { job: job.id });
        const value = await job.result;
        service.close();

        const early = new TaskService(undefined, { minDelay: 50 });
        const waiting = early.attach(job.id);
        const stateAtAttach = early.state;
        const earlyValue = await waiting.result;
        const other = await early.submit("steps", { n: 1 });
        early.close();
        const closed = await settle(other.result);
        return { seen, lostOnce, value, stateAtAttach, earlyValue, closed };
        """,
    )
    assert result["lostOnce"]["error"]["code"] == -32006
    # The handle's attach is request 2 (request 3 is the other handle's),
    # and request 5 after the drop.
    assert result["seen"] == [[1, 2], [1, 5], [2, 5], [3, 5]]
    assert result["value"] == {"steps": 3}
    assert result["stateAtAttach"] == "connecting"
    assert result["earlyValue"] == {"steps": 3}
    assert result["closed"]["error"]["code"] == -32006
    assert server.gateway.opened == 3
    attaches = [m["params"]["job"] for m in server.gateway.requests("$/attach")]
    assert attaches == ["job1", "job1", "job1", "job1", "job2"]


@pytest_twisted.ensureDeferred
async def test_jobReattachWhenGatewayUnavailable(
    browser: BrowserThread, server: Server
) -> None:
    """
    A gateway whose task server is away answers an attach with UNAVAILABLE
    while the socket stays open: the handle attaches again after the
    client's backoff delays, until it is heard, and C{result} resolves.
    """
    server.gateway.refuseAttaches = 2
    result = await runScript(
        browser,
        server,
        """
        const service = await TaskService.connect(undefined, { minDelay: 20 });
        const job = await service.submit("steps", { n: 1 });
        await service.call("step", { job: job.id });
        const value = await job.result;
        service.close();
        return { value };
        """,
    )
    assert result == {"value": {"steps": 1}}
    assert len(server.gateway.requests("$/attach")) == 3
    assert server.gateway.opened == 1


# -- the demo page -----------------------------------------------------------

STORED_JOB = (
    "() => JSON.parse(localStorage.getItem('taskservice.demo.job'))?.job ?? null"
)
"""The id of the job the demo page keeps in localStorage (or null)."""
RECORD_PROGRESS = """
window.progressSeen = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  new MutationObserver(() => window.progressSeen.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
});
"""
"""An init script: every value the progress bar takes, in C{progressSeen}."""
DEMO_STATE = """() => ({
  value: document.querySelector("#progress").value,
  text: document.querySelector("#progress-text").textContent,
  outcome: document.querySelector("#result").dataset.outcome ?? null,
  result: document.querySelector("#result").textContent,
  status: document.querySelector("#status").dataset.state,
  stored: JSON.parse(localStorage.getItem("taskservice.demo.job"))?.job ?? null,
  job: document.querySelector("#job").textContent,
  seen: window.progressSeen,
})"""
"""What the demo page shows, and the progress values it went through."""


class DemoPage:
    """
    The demo page driven step by step from the browser's thread, so that
    the reactor's side (a held sink, a restarted server) can act in
    between. Each method is awaited from the reactor's thread.
    """

    def __init__(self, browser: BrowserThread, timeout: float = SAFETY) -> None:
        self.browser = browser
        self.timeout = timeout
        self.errors: list[str] = []
        self.page: Any = None

    async def open(self, origin: str) -> None:
        """
        A new page (its own storage), recording the progress bar's values,
        on C{origin}'s demo page, once it says "Connected".
        """

        def inBrowser() -> None:
            page = self.browser.browser.new_page(
                viewport={"width": 1000, "height": 760}
            )
            page.set_default_timeout(self.timeout * 1000)
            page.on("pageerror", lambda error: self.errors.append(str(error)))
            page.add_init_script(RECORD_PROGRESS)
            self.page = page
            page.goto(origin + "/")
            syncAPI.expect(page.locator("#status")).to_have_text(
                "Connected", timeout=self.timeout * 1000
            )

        await self.browser.run(inBrowser)

    async def click(self, selector: str) -> None:
        await self.browser.run(lambda: self.page.click(selector))

    async def waitFor(self, expression: str) -> None:
        """
        Wait until the JavaScript C{expression} holds in the page.
        """
        await self.browser.run(
            lambda: self.page.wait_for_function(
                expression, timeout=self.timeout * 1000, polling=50
            )
        )

    async def state(self) -> dict[str, Any]:
        """
        What the page shows now (L{DEMO_STATE}).
        """
        state: dict[str, Any] = await self.browser.run(
            lambda: self.page.evaluate(DEMO_STATE)
        )
        return state

    async def reload(self) -> None:
        """
        Reload the page (its localStorage stays) and wait until it is
        connected again.
        """

        def inBrowser() -> None:
            self.page.reload()
            syncAPI.expect(self.page.locator("#status")).to_have_text(
                "Connected", timeout=self.timeout * 1000
            )

        await self.browser.run(inBrowser)

    async def screenshot(self, path: Path) -> None:
        await self.browser.run(
            lambda: self.page.screenshot(path=str(path), full_page=True)
        )

    async def close(self) -> None:
        if self.page is not None:
            await self.browser.run(self.page.close)
            self.page = None


def _demo(browser: BrowserThread, origin: str, screenshot: Path) -> dict[str, Any]:
    """
    In the browser's thread: load the demo page, send to 1,000 users while
    echoing, then cancel a second send; take a screenshot in between; note
    the job the page keeps in localStorage along the way.
    """
    page = browser.browser.new_page(viewport={"width": 1000, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if message.type == "error" else None
        ),
    )
    seen: dict[str, Any] = {}
    try:
        page.set_default_timeout(SAFETY * 1000)
        page.goto(origin + "/")
        status = page.locator("#status")
        syncAPI.expect(status).to_have_text("Connected")
        seen["status"] = status.get_attribute("data-state")

        page.click("#send")
        page.wait_for_function(
            "document.querySelector('#progress').value > 0"
            " && document.querySelector('#result').dataset.outcome === 'running'"
        )
        seen["cancelEnabled"] = page.is_enabled("#cancel")
        seen["storedWhileSending"] = page.evaluate(STORED_JOB)
        page.fill("#echo-input", "still responsive")
        page.click("#echo-send")
        page.wait_for_function("document.querySelector('#echo-output').dataset.outcome")
        seen["echo"] = page.text_content("#echo-output")
        seen["outcomeAtEcho"] = page.get_attribute("#result", "data-outcome")

        page.wait_for_function(
            "document.querySelector('#result').dataset.outcome === 'ok'"
        )
        seen["result"] = page.text_content("#result")
        seen["progress"] = page.eval_on_selector("#progress", "p => [p.value, p.max]")
        seen["progressText"] = page.text_content("#progress-text")
        syncAPI.expect(page.locator("#sink-received")).to_have_text("1,000")
        seen["sendEnabled"] = page.is_enabled("#send")
        seen["cancelEnabledAfter"] = page.is_enabled("#cancel")
        seen["storedAfter"] = page.evaluate(STORED_JOB)
        page.screenshot(path=str(screenshot), full_page=True)

        page.click("#send")
        page.wait_for_function("document.querySelector('#progress').value >= 50")
        page.click("#cancel")
        page.wait_for_function(
            "document.querySelector('#result').dataset.outcome === 'cancelled'"
        )
        seen["cancelled"] = page.text_content("#result")
        seen["countedBy"] = page.get_attribute("#result", "data-counted-by")
        seen["storedAfterCancel"] = page.evaluate(STORED_JOB)
    finally:
        page.close()
    seen["errors"] = errors
    return seen


@pytest_twisted.ensureDeferred
async def test_demoPage(browser: BrowserThread, server: Server, tmp_path: Path) -> None:
    """
    The demo page, against the stand-in gateway: it connects; "Send an
    e-mail to 1,000 users" submits send_mail with user0001..user1000 as a
    job (its id in localStorage while it runs, forgotten when it ends),
    moves the progress bar to 1,000 and reports the count and time; the
    echo box answers during the send; the sink panel shows 1,000 from
    /stats; Cancel stops a second send (with C{$/cancelJob}) and the page
    reports what the sink counted for it. No errors in the page's console.
    """
    screenshot = Path(os.environ.get("TASKSERVICE_SCREENSHOT") or tmp_path / "demo.png")
    seen = await browser.run(_demo, browser, server.origin, screenshot)
    assert seen["errors"] == []
    assert seen["status"] == "open"
    assert seen["cancelEnabled"] is True
    assert seen["echo"].startswith('"still responsive" in ')
    assert seen["echo"].endswith(" ms")
    assert seen["outcomeAtEcho"] == "running"
    assert seen["result"].startswith("Sent 1,000 e-mails in ")
    assert seen["progress"] == [1000, 1000]
    assert seen["progressText"] == "1,000 / 1,000"
    assert seen["sendEnabled"] is True
    assert seen["cancelEnabledAfter"] is False
    assert seen["cancelled"].startswith("Cancelled after ")
    assert screenshot.stat().st_size > 10_000

    sends = server.gateway.requests("$/submit")
    assert [m["params"]["method"] for m in sends] == ["send_mail", "send_mail"]
    to = sends[0]["params"]["params"]["to"]
    assert len(to) == 1000
    assert to[0] == "user0001@example.com"
    assert to[-1] == "user1000@example.com"
    assert seen["storedWhileSending"] == "job1"
    assert seen["storedAfter"] is None
    assert seen["storedAfterCancel"] is None
    assert [m["params"] for m in server.gateway.requests("$/cancelJob")] == [
        {"job": "job2"}
    ]
    # What the sink counted for the cancelled send, as the page says.
    sent = server.gateway.sinkReceived - 1000
    assert seen["countedBy"] == "sink"
    assert seen["cancelled"].startswith(f"Cancelled after {sent:,} e-mails (")


@pytest_twisted.ensureDeferred
async def test_demoReload(browser: BrowserThread, server: Server) -> None:
    """
    The demo page keeps its job across a reload: with the fake send held at
    300, the reloaded page re-attaches to the job kept in localStorage and
    its bar shows 300 (never 0) at once; released, the bar carries on to
    1,000 / 1,000, the page reports the send and forgets the job. A stored
    job the server does not know is forgotten with a message.
    """
    server.gateway.holdAt = 300
    page = DemoPage(browser)
    try:
        await page.open(server.origin)
        await page.click("#send")
        await page.waitFor("document.querySelector('#progress').value === 300")
        before = await page.state()
        await page.reload()
        await page.waitFor("document.querySelector('#progress').value === 300")
        reloaded = await page.state()
        server.gateway.release()
        await page.waitFor("document.querySelector('#result').dataset.outcome === 'ok'")
        ended = await page.state()
        await page.browser.run(
            lambda: page.page.evaluate(
                "localStorage.setItem('taskservice.demo.job',"
                " JSON.stringify({ job: 'forgotten', startedAt: 0 }))"
            )
        )
        await page.reload()
        await page.waitFor(
            "document.querySelector('#result').dataset.outcome === 'error'"
        )
        unknown = await page.state()
    finally:
        await page.close()
    assert page.errors == []
    assert before["stored"] == "job1"
    assert before["outcome"] == "running"
    assert reloaded["stored"] == "job1"
    assert reloaded["outcome"] == "running"
    assert reloaded["seen"] == [300], "the reloaded bar starts where the job is"
    assert ended["text"] == "1,000 / 1,000"
    assert ended["result"].startswith("Sent 1,000 e-mails in ")
    assert ended["stored"] is None
    assert ended["seen"] == sorted(ended["seen"])
    assert ended["seen"][0] == 300
    assert unknown["stored"] is None
    assert "no longer knows" in unknown["result"]
    assert len(server.gateway.requests("$/submit")) == 1
    assert [m["params"] for m in server.gateway.requests("$/attach")] == [
        {"job": "job1"},
        {"job": "job1"},
        {"job": "forgotten"},
    ]
    assert server.gateway.sinkReceived == 1000
