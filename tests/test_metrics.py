"""
Unit tests of L{taskservice.metrics} and L{taskservice.logs}: a pool on the
in-memory FakeProcessReactor driven through every outcome, the gateway in
memory (the harness of L{tests.test_gateway}), the metrics resources
rendered in memory, the C{--metrics} option, and JSON log lines.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError
from twisted.logger import LogLevel, eventsFromJSONLogFile
from twisted.python import usage
from twisted.python.failure import Failure
from txaio.testutil import replace_loop

from taskservice import logs, tap
from taskservice.errors import (
    OUTCOMES,
    InvalidParams,
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TimedOut,
    TooLarge,
    Unavailable,
    WorkerLost,
    outcomeOf,
)
from taskservice.gateway import GatewaySite, makeGatewayResource
from taskservice.metrics import (
    DEFAULT_BUCKETS,
    MetricsResource,
    MetricsSite,
    PoolMetrics,
    makeRegistry,
)
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.testing import FakeProcessReactor
from tests.test_gateway import Harness, body, header, render
from tests.test_pool import failure, makePool, result
from tests.test_tap import descendants, only, parse


def metered(
    size: int = 2, **kwargs: Any
) -> tuple[FakeProcessReactor, ProcessPool, CollectorRegistry]:
    """
    A started pool of C{tests.pooltasks} (workers not ready yet) and a
    registry of its metrics alone.
    """
    reactor, pool = makePool(size=size, **kwargs)
    return reactor, pool, makeRegistry(pool=pool, processMetrics=False)


def calls(registry: CollectorRegistry, task: str, outcome: str) -> float | None:
    return registry.get_sample_value(
        "taskservice_calls_total", {"task": task, "outcome": outcome}
    )


def histogram(
    registry: CollectorRegistry, name: str, task: str
) -> tuple[float | None, float | None]:
    """
    A task's C{(count, sum)} in histogram C{name}.
    """
    labels = {"task": task}
    return (
        registry.get_sample_value(f"{name}_count", labels),
        registry.get_sample_value(f"{name}_sum", labels),
    )


# -- the pool ----------------------------------------------------------------


def test_everyTaskHasItsSeriesFromTheStart() -> None:
    """
    Before any call, every registered task has a zero for each outcome and
    empty histograms, so that rate() sees the first call; no call means no
    series for unregistered names.
    """
    _, pool, registry = metered()
    for task in pool.registry:
        for outcome in ("ok", "task_error", "timeout", "worker_lost", "cancelled"):
            assert calls(registry, task, outcome) == 0.0, (task, outcome)
        assert histogram(registry, "taskservice_call_seconds", task) == (0.0, 0.0)
    assert calls(registry, "", "invalid") is None


def test_okAndTaskErrorWithTimes() -> None:
    """
    A result counts as ok, a raised exception as task_error; each call's
    queue wait (submission to dispatch), run time (dispatch to outcome) and
    total go to the histograms of its task, in the right buckets.
    """
    reactor, pool, registry = metered(size=1)
    first = pool.submit("add", [1, 2])
    second = pool.submit("add", [3, 4])
    reactor.advance(2.0)  # no worker is ready yet: both wait
    worker = reactor.workers[0]
    worker.ready()
    reactor.advance(0.5)
    worker.reply(3)
    assert result(first) == 3
    reactor.advance(0.25)
    worker.raise_("ValueError", "no")
    failure(second, TaskFailed)

    assert calls(registry, "add", "ok") == 1.0
    assert calls(registry, "add", "task_error") == 1.0
    assert histogram(registry, "taskservice_call_queue_seconds", "add") == (
        2.0,
        2.0 + 2.5,
    )
    assert histogram(registry, "taskservice_call_run_seconds", "add") == (
        2.0,
        0.5 + 0.25,
    )
    assert histogram(registry, "taskservice_call_seconds", "add") == (
        2.0,
        2.5 + 2.75,
    )

    def bucket(name: str, le: str) -> float | None:
        return registry.get_sample_value(f"{name}_bucket", {"task": "add", "le": le})

    assert bucket("taskservice_call_run_seconds", "0.25") == 1.0
    assert bucket("taskservice_call_run_seconds", "0.5") == 2.0
    assert bucket("taskservice_call_queue_seconds", "1.0") == 0.0
    assert bucket("taskservice_call_queue_seconds", "2.5") == 2.0
    assert bucket("taskservice_call_seconds", "2.5") == 1.0
    assert bucket("taskservice_call_seconds", "+Inf") == 2.0


def test_tooLargeTimeoutAndWorkerLost() -> None:
    """
    A result over the size limit counts as too_large, a deadline passed as
    timeout (and its killed worker as a restart for "timeout"), a worker
    dying mid-call as worker_lost (and a restart for "crash").
    """
    reactor, pool, registry = metered(size=3)
    reactor.readyAll()
    large = pool.submit("big", [10])
    slow = pool.submit("hang")  # its own deadline: 0.5 s
    doomed = pool.submit("add", [1, 1])
    worker = next(w for w in reactor.workers if w.calls and w.calls[0]["task"] == "big")
    worker.send(
        {
            "op": "error",
            "cid": worker.calls.pop()["cid"],
            "code": "too_large",
            "error": {"type": "TooLarge", "message": "too large"},
        }
    )
    failure(large, TooLarge)
    reactor.advance(0.5)
    failure(slow, TimedOut)
    next(w for w in reactor.alive if w.calls and w.calls[0]["task"] == "add").exit(
        signal=9
    )
    failure(doomed, WorkerLost)
    reactor.reapAll()

    assert calls(registry, "big", "too_large") == 1.0
    assert calls(registry, "hang", "timeout") == 1.0
    assert calls(registry, "add", "worker_lost") == 1.0
    assert histogram(registry, "taskservice_call_run_seconds", "hang") == (1.0, 0.5)

    def restarts(cause: str) -> float | None:
        return registry.get_sample_value(
            "taskservice_worker_restarts_total", {"cause": cause}
        )

    assert (restarts("timeout"), restarts("crash"), restarts("recycled")) == (
        1.0,
        1.0,
        0.0,
    )


def test_clockSteppingBackCountsAsZero() -> None:
    """
    A negative duration (the wall clock stepped back) is observed as zero:
    the first bucket, nothing taken off the sums.
    """
    _, pool, registry = metered()
    assert isinstance(pool.observer, PoolMetrics)
    pool.observer.callFinished("add", "ok", -3.0, -1.0)
    for name in (
        "taskservice_call_seconds",
        "taskservice_call_queue_seconds",
        "taskservice_call_run_seconds",
    ):
        assert histogram(registry, name, "add") == (1.0, 0.0)
        assert (
            registry.get_sample_value(f"{name}_bucket", {"task": "add", "le": "0.001"})
            == 1.0
        )


def test_cancelledQueuedAndRunning() -> None:
    """
    Cancelling a queued call, a running one, or dropping a connection's
    queued calls counts each as cancelled; a queued one is timed in the
    total histogram only (it never ran).
    """
    reactor, pool, registry = metered(size=1)
    reactor.readyAll()
    running = pool.submit("hang", timeout=60)
    queued = pool.submit("add", [1, 1])
    owner = object()
    dropped = pool.submit("add", [2, 2], owner=owner)
    reactor.advance(1.0)
    queued.cancel()
    failure(queued, CancelledError)
    assert pool.dropQueued(owner) == 1
    failure(dropped, CancelledError)
    running.cancel()
    failure(running, CancelledError)
    reactor.reapAll()

    assert calls(registry, "add", "cancelled") == 2.0
    assert calls(registry, "hang", "cancelled") == 1.0
    assert histogram(registry, "taskservice_call_seconds", "add") == (2.0, 2.0)
    assert histogram(registry, "taskservice_call_run_seconds", "add") == (0.0, 0.0)
    assert histogram(registry, "taskservice_call_run_seconds", "hang") == (1.0, 1.0)


def test_coroutineTimeoutIsCountedOnce() -> None:
    """
    A coroutine call past its deadline counts as timeout once, though its
    worker answers the cancellation later.
    """
    reactor, pool, registry = metered(size=1, concurrency=5)
    reactor.readyAll()
    slow = pool.submit("nap", [60], timeout=1.0)
    reactor.advance(1.0)
    failure(slow, TimedOut)
    reactor.workers[0].acknowledgeCancel(1)
    assert calls(registry, "nap", "timeout") == 1.0
    assert calls(registry, "nap", "cancelled") == 0.0
    assert histogram(registry, "taskservice_call_seconds", "nap")[0] == 1.0


def test_refusedCalls() -> None:
    """
    Calls refused at submission count without times: overloaded past the
    queue limit, invalid for bad arguments (labelled with their task) and
    for names that are no task (labelled "", never with the name sent),
    unavailable before the pool runs and for calls still queued when it
    stops.
    """
    reactor, pool, registry = metered(size=1, maxQueue=1)
    reactor.readyAll()
    pool.submit("hang", timeout=60)
    queued = pool.submit("add", [1, 1])
    failure(pool.submit("add", [1, 1]), Overloaded)
    failure(pool.submit("add", [1]), InvalidParams)
    failure(pool.submit("no-such-task"), MethodNotFound)
    failure(pool.submit("add", [1, 1], timeout=-1), Exception)
    stopped = pool.stopService()
    failure(pool.submit("add", [1, 1]), Unavailable)
    reactor.advance(pool.shutdownTimeout)
    failure(queued, Unavailable)
    reactor.reapAll()
    result(stopped)

    assert calls(registry, "add", "overloaded") == 1.0
    assert calls(registry, "add", "invalid") == 2.0
    assert calls(registry, "", "invalid") == 1.0
    assert calls(registry, "add", "unavailable") == 2.0
    samples = [
        s
        for family in registry.collect()
        if family.name == "taskservice_calls"
        for s in family.samples
    ]
    assert {s.labels["task"] for s in samples} == {"", *pool.registry}
    # Only the call that waited was timed.
    assert histogram(registry, "taskservice_call_seconds", "add") == (
        1.0,
        pool.shutdownTimeout,
    )


def test_gaugesAreReadAtScrape() -> None:
    """
    Queue depth and limit, calls running, workers by state and the pool's
    size are read from the pool when collected.
    """
    reactor, pool, registry = metered(size=2, maxQueue=7)

    def gauge(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert gauge("taskservice_workers", state="starting") == 2.0
    assert gauge("taskservice_pool_size") == 2.0
    assert gauge("taskservice_queue_limit") == 7.0
    reactor.readyAll()
    for _ in range(3):
        pool.submit("hang", timeout=60)
    assert gauge("taskservice_workers", state="busy") == 2.0
    assert gauge("taskservice_workers", state="idle") == 0.0
    assert gauge("taskservice_calls_running") == 2.0
    assert gauge("taskservice_queue_depth") == 1.0
    pool.stopService()
    reactor.advance(pool.shutdownTimeout)
    reactor.reapAll()


def test_recycledWorkersAreRestarts() -> None:
    """
    Workers replaced after maxTasksPerChild calls count as restarts for
    "recycled".
    """
    reactor, pool, registry = metered(size=1, maxTasksPerChild=2)
    reactor.readyAll()
    for _ in range(2):
        d = pool.submit("add", [1, 1])
        reactor.runAllCalls(pool.registry)
        result(d)
    reactor.readyAll()
    reactor.reapAll()
    assert (
        registry.get_sample_value(
            "taskservice_worker_restarts_total", {"cause": "recycled"}
        )
        == 1.0
    )


def test_onePoolOneObserver() -> None:
    """
    A pool has one observer: a second PoolMetrics for it is refused. Two
    pools each have their own registry, with the same metric names.
    """
    _, pool, first = metered()
    with pytest.raises(ValueError, match="already has an observer"):
        PoolMetrics(pool)
    _, other, second = metered()
    other.submit("add", [1, 1])
    assert calls(second, "add", "ok") == 0.0
    assert calls(first, "add", "ok") == 0.0


@pytest.mark.parametrize("buckets", [[], [2.0, 1.0], [1.0, 1.0], [1.0, float("inf")]])
def test_badBuckets(buckets: list[float]) -> None:
    """
    Histogram bounds must be finite, distinct and ascending.
    """
    _, pool = makePool()
    with pytest.raises(ValueError, match="buckets"):
        PoolMetrics(pool, buckets)


def test_outcomesOfErrors() -> None:
    """
    Every wire error has an outcome label from OUTCOMES.
    """
    for error in (TaskFailed(), TimedOut(), WorkerLost(), TooLarge(), Overloaded()):
        assert outcomeOf(error) in OUTCOMES
    assert outcomeOf(MethodNotFound()) == "invalid"
    assert outcomeOf(Unavailable()) == "unavailable"
    assert DEFAULT_BUCKETS[-1] >= 3600.0


def test_taskServerConnections() -> None:
    """
    The task server's open connections are a gauge.
    """
    _, pool = makePool()
    factory = TaskServerFactory(pool)
    registry = makeRegistry(server=factory, processMetrics=False)
    factory.protocols.add(factory.buildProtocol(None))
    assert registry.get_sample_value("taskservice_connections") == 1.0


def test_processMetrics() -> None:
    """
    By default a registry holds this process's own metrics too.
    """
    registry = makeRegistry()
    names = {family.name for family in registry.collect()}
    assert "python_info" in names
    assert {"python_info", "process_cpu_seconds", "python_gc_objects_collected"} <= (
        names
    )


# -- the gateway ----------------------------------------------------------------


@pytest.fixture
def fakeLoop() -> Iterator[None]:
    """
    Autobahn's browser side schedules through txaio's global loop: point it
    at a throwaway clock so nothing reaches the real reactor.
    """
    with replace_loop(FakeProcessReactor()):
        yield


def test_gatewayMetrics(fakeLoop: None) -> None:
    """
    The gateway's counters become metrics: browsers connected, messages,
    calls by outcome, refusals past a browser's limit and of origins not
    allowed, cancel requests and calls in flight.
    """
    h = Harness(maxBrowserCalls=1)
    registry = makeRegistry(gateway=h.factory, processMetrics=False)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    browser = h.browser()
    browser.call(1, "add", 1, 2)
    h.run()
    browser.call(2, "add", 2, 2)
    browser.call(3, "add", 1, 1)  # past the limit of 1
    h.flush()
    assert value("taskservice_gateway_calls_in_flight") == 1.0
    browser.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}})
    h.flush()
    h.reactor.reapAll()
    h.reactor.readyAll()
    browser.call(5, "add", "a", 1)  # raises TypeError in the worker
    h.run()
    h.browser(origin="https://evil.example.com")

    assert value("taskservice_gateway_browsers") == 1.0
    assert value("taskservice_gateway_messages_total") == 5.0
    assert value("taskservice_gateway_calls_total", outcome="ok") == 1.0
    assert value("taskservice_gateway_calls_total", outcome="cancelled") == 1.0
    assert value("taskservice_gateway_calls_total", outcome="task_error") == 1.0
    assert value("taskservice_gateway_calls_total", outcome="timeout") == 0.0
    assert value("taskservice_gateway_refused_total", reason="browser_limit") == 1.0
    assert value("taskservice_gateway_refused_total", reason="origin") == 1.0
    assert value("taskservice_gateway_cancel_requests_total") == 1.0
    assert value("taskservice_gateway_error_responses_total") == 3.0
    assert value("taskservice_gateway_calls_in_flight") == 0.0
    browser.sendClose(1000)
    h.flush()
    assert value("taskservice_gateway_browsers") == 0.0


def test_gatewayUpstreamMetrics() -> None:
    """
    With several task servers, the gateway's metrics tell each one's state:
    up, calls in flight, calls sent, idempotent calls retried elsewhere.
    """
    from taskservice.balancer import Balancer
    from taskservice.gateway import GatewayFactory
    from tests.test_balancer import FakeClient

    balancer = Balancer(
        FakeProcessReactor(),
        ["tcp:10.0.0.1:7000", "tcp:10.0.0.2:7000"],
        makeClient=FakeClient,
    )
    balancer.startService()
    a, b = (cast(FakeClient, server.client) for server in balancer.servers)
    a.up()
    b.up()
    balancer.request("echo", [1])
    balancer.request("echo", [2])
    a.down()
    registry = makeRegistry(
        gateway=GatewayFactory(FakeProcessReactor(), balancer), processMetrics=False
    )

    def value(name: str, server: str) -> float | None:
        return registry.get_sample_value(name, {"server": server})

    first, second = "tcp:10.0.0.1:7000", "tcp:10.0.0.2:7000"
    assert value("taskservice_gateway_task_server_up", first) == 0.0
    assert value("taskservice_gateway_task_server_up", second) == 1.0
    assert value("taskservice_gateway_task_server_calls_in_flight", second) == 2.0
    assert value("taskservice_gateway_task_server_calls_total", first) == 1.0
    assert value("taskservice_gateway_task_server_calls_total", second) == 2.0
    assert value("taskservice_gateway_task_server_retried_total", first) == 1.0


def test_gatewaySiteServesMetrics(fakeLoop: None) -> None:
    """
    The gateway's site serves /metrics: by default its own metrics; given
    a registry (the whole process's, as twistd builds it), that one.
    """
    h = Harness()
    families = scrape(render(makeGatewayResource(h.factory, Path("/x")), b"/metrics"))
    assert "taskservice_gateway_browsers" in families
    assert "taskservice_calls" not in families
    shared = makeRegistry(pool=h.pool, gateway=h.factory, processMetrics=False)
    site = GatewaySite(h.factory, Path("/x"), metrics=shared)
    families = scrape(render(site.resource, b"/metrics"))
    assert {"taskservice_gateway_browsers", "taskservice_calls"} <= set(families)


# -- the resources ----------------------------------------------------------------


def scrape(request: Any) -> dict[str, Any]:
    """
    A rendered /metrics response, parsed: its metric families by name.
    """
    assert request.responseCode in (None, 200)
    assert header(request, b"content-type").startswith(b"text/plain; version=")
    return {
        family.name: family
        for family in text_string_to_metric_families(body(request).decode())
    }


def test_metricsResource() -> None:
    """
    GET and HEAD are answered with the registry in Prometheus's text format,
    never cached; other methods are 405.
    """
    _, pool, registry = metered()
    resource = MetricsResource(registry)
    families = scrape(render(resource, b""))
    [sample] = [
        s
        for s in families["taskservice_calls"].samples
        if s.labels == {"task": "add", "outcome": "ok"}
    ]
    assert sample.value == 0.0
    request = render(resource, b"")
    assert header(request, b"cache-control") == b"no-store"
    request = render(resource, b"", b"POST")
    assert (request.responseCode, header(request, b"allow")) == (405, b"GET, HEAD")


class Broken:
    def collect(self) -> list[Any]:
        raise RuntimeError("broken collector")


def test_metricsResourceWhenACollectorFails() -> None:
    """
    A collector that raises makes a plain 500, and the failure is logged.
    """
    from twisted.logger import globalLogPublisher

    events: list[Any] = []
    registry = CollectorRegistry()
    registry.register(Broken())
    globalLogPublisher.addObserver(events.append)
    try:
        request = render(MetricsResource(registry), b"")
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e["log_failure"].value.args for e in events if "log_failure" in e]
    assert (request.responseCode, failures) == (500, [("broken collector",)])


def test_metricsSite() -> None:
    """
    The --metrics site serves /metrics and nothing else (404), and does not
    write scrapes to the access log.
    """
    registry = makeRegistry(processMetrics=False)
    site = MetricsSite(registry)
    assert site.registry is registry
    assert "python_info" not in scrape(render(site.resource, b"/metrics"))
    assert render(site.resource, b"/").responseCode == 404
    assert render(site.resource, b"/stats").responseCode == 404
    site.log(render(site.resource, b"/metrics"))  # no access log: no error


# -- the option ---------------------------------------------------------------


def metricsListener(root: Any) -> StreamServerEndpointService:
    [listener] = [
        s
        for s in descendants(root)
        if isinstance(s, StreamServerEndpointService)
        and isinstance(s.factory, MetricsSite)
    ]
    return listener


def test_metricsOption() -> None:
    """
    --metrics is off by default; given, a MetricsSite listens on it, with
    the same registry as the gateway's /metrics: the pool's, the task
    server's and the gateway's metrics together.
    """
    from taskservice.service import GatewayService

    assert parse()["metrics"] is None
    assert not [
        s
        for s in descendants(tap.makeService(parse("--listen", "tcp:0")))
        if isinstance(getattr(s, "factory", None), MetricsSite)
    ]
    root = tap.makeService(
        parse("--listen", "tcp:0", "--metrics", "tcp:9100:interface=127.0.0.1")
    )
    listener = metricsListener(root)
    assert (listener.endpoint._port, listener.endpoint._interface) == (
        9100,
        "127.0.0.1",
    )
    site = listener.factory
    assert isinstance(site, MetricsSite)
    pool = only(ProcessPool, root)
    assert pool.observer is not None
    names = {family.name for family in site.registry.collect()}
    assert {
        "taskservice_calls",
        "taskservice_connections",
        "taskservice_gateway_browsers",
        "process_cpu_seconds",
    } <= names
    gateway = only(GatewayService, root).listener.factory
    assert isinstance(gateway, GatewaySite)
    served = gateway.resource.children[b"metrics"]
    assert isinstance(served, MetricsResource)
    assert served.registry is site.registry


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--no-websocket"], {"taskservice_calls", "taskservice_connections"}),
        (
            ["--task-server", "tcp:127.0.0.1:1", "--websocket", "tcp:0"],
            {"taskservice_gateway_browsers"},
        ),
    ],
    ids=["task-server-alone", "gateway-alone"],
)
def test_metricsOptionAlone(argv: list[str], expected: set[str]) -> None:
    """
    The task server alone serves its own metrics on --metrics, and the
    gateway alone its own.
    """
    local = [] if "--task-server" in argv else ["--listen", "tcp:0"]
    root = tap.makeService(parse(*local, "--metrics", "tcp:0", *argv))
    registry = metricsListener(root).factory.registry
    names = {family.name for family in registry.collect()}
    assert expected <= names
    assert ("taskservice_calls" in names) == ("--no-websocket" in argv)


def test_badMetricsEndpoint() -> None:
    """
    A --metrics endpoint that cannot be parsed is a usage error naming it.
    """
    with pytest.raises(usage.UsageError, match="--metrics"):
        tap.makeService(parse("--listen", "tcp:0", "--metrics", "nonsense:1"))


# -- JSON logs ------------------------------------------------------------------


def test_jsonLine() -> None:
    """
    An event becomes one line of JSON: Twisted's JSON form of the event
    (read back by eventsFromJSONLogFile) with its fields, plus the
    formatted text and the level's name; a field of the event's own named
    text or level wins.
    """
    event = {
        "log_format": "task {task} (call {cid}) in worker {workerID}",
        "log_level": LogLevel.warn,
        "log_namespace": "taskservice.pool.ProcessPool",
        "log_time": 1.5,
        "task": "sleep",
        "cid": 7,
        "workerID": 2,
    }
    line = logs.jsonLine(event)
    assert line.endswith("\n") and "\n" not in line[:-1]
    parsed = json.loads(line)
    assert parsed["text"] == "task sleep (call 7) in worker 2"
    assert parsed["level"] == "warn"
    assert (parsed["task"], parsed["cid"], parsed["workerID"]) == ("sleep", 7, 2)
    assert "log_flattened" not in event, "the event itself is left alone"
    [back] = eventsFromJSONLogFile(io.StringIO(line))
    assert back["log_level"] is LogLevel.warn
    own = json.loads(logs.jsonLine({**event, "text": "mine", "level": 3}))
    assert (own["text"], own["level"]) == ("mine", 3)


def test_jsonLineWithAFailure() -> None:
    """
    A logged failure's text holds its traceback.
    """
    try:
        raise ValueError("bad value")
    except ValueError:
        failed = Failure()
    parsed = json.loads(
        logs.jsonLine(
            {
                "log_format": "unexpected error handling a call",
                "log_level": LogLevel.critical,
                "log_failure": failed,
                "log_time": 2.0,
            }
        )
    )
    assert parsed["text"].startswith("unexpected error handling a call\n")
    assert "ValueError: bad value" in parsed["text"]


def test_jsonLoggerWritesToTheNamedFile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    jsonLogger appends to the file named by TASKSERVICE_LOG_FILE.
    """
    path = tmp_path / "log.json"
    path.write_text('{"earlier": true}\n')
    monkeypatch.setenv(logs.LOG_FILE_ENVIRONMENT, str(path))
    observer = logs.jsonLogger()
    observer({"log_format": "hello {who}", "who": "you", "log_time": 0.0})
    observer._outFile.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"earlier": True}
    assert (lines[1]["text"], lines[1]["who"]) == ("hello you", "you")


def test_jsonLoggerDefaultsToStandardOutput(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Without TASKSERVICE_LOG_FILE (or with "-"), jsonLogger writes to
    standard output.
    """
    for value in (None, "-"):
        if value is None:
            monkeypatch.delenv(logs.LOG_FILE_ENVIRONMENT, raising=False)
        else:
            monkeypatch.setenv(logs.LOG_FILE_ENVIRONMENT, value)
        out = io.StringIO()
        monkeypatch.setattr("sys.stdout", out)
        logs.jsonLogger()({"log_format": "to stdout", "log_time": 0.0})
        assert json.loads(out.getvalue())["text"] == "to stdout"
