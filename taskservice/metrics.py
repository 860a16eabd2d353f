"""
Prometheus metrics of a pool, a task server and a gateway, and the
twisted.web resources that serve them (see docs/observability).

Every metric lives in a L{CollectorRegistry} of its service (see
L{makeRegistry}), never in C{prometheus_client}'s global default registry,
so one process may run several pools, each with its own metrics.

Costs: the pool tells its L{PoolMetrics} of each call's outcome
(L{taskservice.pool.CallObserver}), which adds to plain integers and lists
(no locks, no allocation); everything else (queue depth, workers by state,
restarts, connections, the task server's refusals, the gateway's counters)
is read from the objects' own counters when Prometheus scrapes. Collection
runs in the reactor thread (L{MetricsResource} renders there); a registry
read from another thread may see a call counted in one metric and not yet
in the next.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from taskservice._web import _methodNotAllowed
from taskservice.errors import OUTCOMES

if TYPE_CHECKING:
    from taskservice.gateway import GatewayFactory
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory

__all__ = [
    "DEFAULT_BUCKETS",
    "GatewayMetrics",
    "MetricsResource",
    "MetricsSite",
    "PoolMetrics",
    "TaskServerMetrics",
    "makeRegistry",
]

DEFAULT_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
"""Upper bounds (seconds) of the call-time histograms' buckets: from a
millisecond to the pool's longest default deadline."""

JOB_OUTCOMES = ("not_found", "interrupted", "journal_unavailable")
"""Outcomes only the job methods give (never a pool's call)."""

POOL_OUTCOMES = tuple(o for o in OUTCOMES if o not in ("unauthorised", *JOB_OUTCOMES))
"""The outcomes a pool gives calls (authorisation is the server's, the
job outcomes the job service's)."""

WORKER_STATES = ("starting", "idle", "busy", "retiring")
RESTART_CAUSES = (
    "crash",
    "timeout",
    "cancel",
    "unresponsive",
    "recycled",
    "memory",
    "not_ready",
    "spawn_failed",
)
"""Why the pool replaces workers (C{ProcessPool.workerExits}); C{spawn_failed}
counts attempts to start a worker that C{spawnProcess} refused."""


class _Histogram:
    """
    A histogram in plain counts, turned into Prometheus buckets on scrape.
    """

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one is +Inf
        self.total = 0.0

    def buckets(self, les: Sequence[str]) -> list[tuple[str, float]]:
        """
        Cumulative counts by bucket label (C{le}), C{+Inf} last.
        """
        cumulative = 0
        found: list[tuple[str, float]] = []
        for le, count in zip(les, self.counts, strict=True):
            cumulative += count
            found.append((le, cumulative))
        return found


class _TaskStats:
    __slots__ = ("outcomes", "queued", "run", "total")

    def __init__(self, size: int) -> None:
        self.outcomes: Counter[str] = Counter(dict.fromkeys(POOL_OUTCOMES, 0))
        self.total = _Histogram(size)
        self.queued = _Histogram(size)
        self.run = _Histogram(size)


class PoolMetrics:
    """
    A pool's metrics: its observer (see L{taskservice.pool.CallObserver})
    and a collector to register in a L{CollectorRegistry}.

    Creating it sets C{pool.observer}. Every registered task has its series
    from the start (at zero), so that C{rate()} sees the first call.

    @param buckets: the histograms' upper bounds in seconds, ascending.
    """

    def __init__(
        self, pool: ProcessPool, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        if pool.observer is not None:
            raise ValueError(f"{pool!r} already has an observer: {pool.observer!r}")
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)) or not bounds or bounds[-1] == float("inf"):
            raise ValueError("buckets must be finite, distinct and ascending")
        self.pool = pool
        self._bounds = bounds
        self._les = [*(floatToGoString(b) for b in bounds), "+Inf"]
        self._tasks = {name: _TaskStats(len(bounds)) for name in pool.registry}
        pool.observer = self

    def callFinished(
        self,
        task: str,
        outcome: str,
        queuedSeconds: float | None,
        runSeconds: float | None,
    ) -> None:
        stats = self._tasks.get(task)
        if stats is None:
            # "" (a call naming no registered task): the pool names nothing
            # else, so the label values stay bounded.
            stats = self._tasks[task] = _TaskStats(len(self._bounds))
        stats.outcomes[outcome] += 1
        if queuedSeconds is None:
            return
        # Inlined observations: this runs once per call on the pool's hot
        # path. The wall clock may step back: no negative durations.
        bounds = self._bounds
        queued = queuedSeconds if queuedSeconds > 0.0 else 0.0
        if runSeconds is None:
            total = stats.total
            total.counts[bisect_left(bounds, queued)] += 1
            total.total += queued
            return
        run = runSeconds if runSeconds > 0.0 else 0.0
        histogram = stats.queued
        histogram.counts[bisect_left(bounds, queued)] += 1
        histogram.total += queued
        histogram = stats.run
        histogram.counts[bisect_left(bounds, run)] += 1
        histogram.total += run
        histogram = stats.total
        run += queued
        histogram.counts[bisect_left(bounds, run)] += 1
        histogram.total += run

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        calls, total, queued, run, depth, limit, running, workers, size, restarts = (
            families
        )
        les = self._les
        for task, stats in list(self._tasks.items()):
            for outcome, count in list(stats.outcomes.items()):
                calls.add_metric([task, outcome], count)
            if task:
                for family, histogram in (
                    (total, stats.total),
                    (queued, stats.queued),
                    (run, stats.run),
                ):
                    family.add_metric([task], histogram.buckets(les), histogram.total)
        now = self.pool.stats()
        depth.add_metric([], now["queued"])
        limit.add_metric([], now["maxQueue"])
        running.add_metric([], now["running"])
        for state in WORKER_STATES:
            workers.add_metric([state], now["workers"][state])
        size.add_metric([], now["workers"]["size"])
        exits = self.pool.workerExits
        for cause in (*RESTART_CAUSES, *sorted(set(exits) - set(RESTART_CAUSES))):
            restarts.add_metric([cause], exits[cause])
        return families

    def _families(self) -> list[Any]:
        return [
            CounterMetricFamily(
                "taskservice_calls",
                "Calls the pool answered (or refused), by task and outcome.",
                labels=["task", "outcome"],
            ),
            HistogramMetricFamily(
                "taskservice_call_seconds",
                "Time from submission to the outcome, for every accepted call.",
                labels=["task"],
            ),
            HistogramMetricFamily(
                "taskservice_call_queue_seconds",
                "Time calls that ran waited for a worker.",
                labels=["task"],
            ),
            HistogramMetricFamily(
                "taskservice_call_run_seconds",
                "Time from dispatch to a worker to the outcome.",
                labels=["task"],
            ),
            GaugeMetricFamily("taskservice_queue_depth", "Calls waiting for a worker."),
            GaugeMetricFamily(
                "taskservice_queue_limit",
                "Calls that may wait; past it calls are refused (overloaded).",
            ),
            GaugeMetricFamily("taskservice_calls_running", "Calls running in workers."),
            GaugeMetricFamily(
                "taskservice_workers", "Worker processes by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                "taskservice_pool_size", "The number of workers the pool keeps."
            ),
            CounterMetricFamily(
                "taskservice_worker_restarts",
                "Workers replaced, by cause.",
                labels=["cause"],
            ),
        ]


class TaskServerMetrics:
    """
    A task server's own metrics (its pool's are L{PoolMetrics}).
    """

    def __init__(self, factory: TaskServerFactory) -> None:
        self.factory = factory

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        connections, refused = families[:2]
        connections.add_metric([], len(self.factory.protocols))
        for reason, count in list(self.factory.refused.items()):
            refused.add_metric([reason], count)
        jobs = self.factory.jobs
        if jobs is not None:
            byState, submitted, size, up = families[2:]
            for state, count in jobs.journal.counts().items():
                byState.add_metric([state], count)
            submitted.add_metric([], jobs.submitted)
            size.add_metric([], jobs.journal.sizeBytes())
            up.add_metric([], 1 if jobs.journalWorks else 0)
        return families

    def _families(self) -> list[Any]:
        families = [
            GaugeMetricFamily(
                "taskservice_connections", "Open client connections to the task server."
            ),
            CounterMetricFamily(
                "taskservice_refused",
                "Messages the task server answered with an error itself, before"
                " the pool, by reason.",
                labels=["reason"],
            ),
        ]
        if self.factory.jobs is not None:
            families += [
                GaugeMetricFamily(
                    "taskservice_jobs",
                    "Durable jobs in the journal, by state.",
                    labels=["state"],
                ),
                CounterMetricFamily(
                    "taskservice_jobs_submitted",
                    "Durable jobs recorded since the task server started.",
                ),
                GaugeMetricFamily(
                    "taskservice_journal_bytes",
                    "Size of the job journal on disk (the file and its WAL).",
                ),
                GaugeMetricFamily(
                    "taskservice_journal_up",
                    "1 while the job journal is written without error, else 0.",
                ),
            ]
        return families


class GatewayMetrics:
    """
    A websocket gateway's metrics, read from its counters.
    """

    def __init__(self, factory: GatewayFactory) -> None:
        self.factory = factory

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        (
            browsers,
            inFlight,
            messages,
            calls,
            errors,
            refused,
            cancels,
            abandoned,
        ) = families
        factory = self.factory
        counters = factory.counters
        browsers.add_metric([], len(factory.browsers))
        inFlight.add_metric([], factory.inFlight)
        messages.add_metric([], counters["messages"])
        outcomes = factory.callOutcomes
        for outcome in (*OUTCOMES, *sorted(set(outcomes) - set(OUTCOMES))):
            calls.add_metric([outcome], outcomes[outcome])
        errors.add_metric([], counters["errors"])
        refused.add_metric(["browser_limit"], counters["overloaded"])
        refused.add_metric(["origin"], counters["deniedOrigins"])
        cancels.add_metric([], counters["cancelled"])
        abandoned.add_metric([], counters["abandoned"])
        status = getattr(factory.client, "status", None)
        if status is not None:
            families += self._upstream(status())
        return families

    def _upstream(self, servers: list[dict[str, Any]]) -> list[Any]:
        """
        With several task servers (a L{Balancer}): each one's state.
        """
        up = GaugeMetricFamily(
            "taskservice_gateway_task_server_up",
            "Whether the gateway's connection to this task server is up.",
            labels=["server"],
        )
        inFlight = GaugeMetricFamily(
            "taskservice_gateway_task_server_calls_in_flight",
            "Calls sent to this task server and not answered yet.",
            labels=["server"],
        )
        sent = CounterMetricFamily(
            "taskservice_gateway_task_server_calls",
            "Calls sent to this task server.",
            labels=["server"],
        )
        retried = CounterMetricFamily(
            "taskservice_gateway_task_server_retried",
            "Idempotent calls sent to another server when this one was lost.",
            labels=["server"],
        )
        for server in servers:
            name = [server["server"]]
            up.add_metric(name, 1 if server["up"] else 0)
            inFlight.add_metric(name, server["inFlight"])
            sent.add_metric(name, server["calls"])
            retried.add_metric(name, server["retried"])
        return [up, inFlight, sent, retried]

    def _families(self) -> list[Any]:
        return [
            GaugeMetricFamily(
                "taskservice_gateway_browsers", "Browsers connected by websocket."
            ),
            GaugeMetricFamily(
                "taskservice_gateway_calls_in_flight",
                "Browsers' calls sent upstream and not answered yet.",
            ),
            CounterMetricFamily(
                "taskservice_gateway_messages", "Websocket messages from browsers."
            ),
            CounterMetricFamily(
                "taskservice_gateway_calls",
                "Browsers' calls answered by the task server, by outcome.",
                labels=["outcome"],
            ),
            CounterMetricFamily(
                "taskservice_gateway_error_responses",
                "Error responses sent to browsers, whatever the cause.",
            ),
            CounterMetricFamily(
                "taskservice_gateway_refused",
                "Refused before reaching the task server: calls past a browser's"
                " limit, websockets from an origin not allowed.",
                labels=["reason"],
            ),
            CounterMetricFamily(
                "taskservice_gateway_cancel_requests",
                "Browsers' $/cancelRequest naming a call in flight.",
            ),
            CounterMetricFamily(
                "taskservice_gateway_abandoned",
                "Calls in flight when their browser went away.",
            ),
        ]


def makeRegistry(
    *,
    pool: ProcessPool | None = None,
    server: TaskServerFactory | None = None,
    gateway: GatewayFactory | None = None,
    processMetrics: bool = True,
) -> CollectorRegistry:
    """
    A new registry with the metrics of whichever of C{pool} (which gets a
    L{PoolMetrics} as its observer), C{server} and C{gateway} are given,
    and with C{processMetrics}, this process's own (C{process_*} CPU,
    memory and file descriptors, C{python_*}), as C{prometheus_client}
    gives them.
    """
    registry = CollectorRegistry()
    if processMetrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    if pool is not None:
        registry.register(PoolMetrics(pool))
    if server is not None:
        registry.register(TaskServerMetrics(server))
    if gateway is not None:
        registry.register(GatewayMetrics(gateway))
    return registry


class MetricsResource(Resource):
    """
    C{GET /metrics}: C{registry} in Prometheus's text format.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _methodNotAllowed(request, b"GET, HEAD")
        request.setHeader(b"cache-control", b"no-store")
        try:
            body = generate_latest(self.registry)
        except Exception:
            self.log.failure("could not collect the metrics")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"500 could not collect the metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body


class _MetricsRoot(Resource):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.putChild(b"metrics", MetricsResource(registry))

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound()


class MetricsSite(Site):
    """
    A L{Site} serving only C{/metrics} (everything else is 404), for
    C{--metrics}: C{strports.service("tcp:9100", MetricsSite(registry))}.
    Scrapes are not written to the access log.
    """

    noisy = False

    def __init__(self, registry: CollectorRegistry, reactor: Any = None) -> None:
        super().__init__(_MetricsRoot(registry), reactor=reactor)
        self.registry = registry

    def log(self, request: http.Request) -> None:
        pass
