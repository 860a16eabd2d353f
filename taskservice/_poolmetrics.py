"""
A pool's Prometheus metrics (L{PoolMetrics}): per task outcome counters
and call-time histograms in plain integers, fed by the pool in batches
folded when collected (L{PoolMetrics.callsFinished}; calls that failed or
never ran one by one, L{PoolMetrics.callFinished}), and the pool's queue
and workers read from its own counters on scrape.

Part of L{taskservice.metrics}, which re-exports the public names.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import add, sub
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from taskservice.errors import OUTCOMES

if TYPE_CHECKING:
    from taskservice._callrecords import Columns
    from taskservice.pool import ProcessPool


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

    def observeAll(self, values: list[float], bounds: Sequence[float]) -> None:
        """
        Observe every one of C{values} (none negative), as observing them
        one by one does: counted by sorting them once and finding each
        bucket's bound in them.
        """
        self.total = sum(values, self.total)
        counts = self.counts
        ordered = sorted(values)
        below = 0
        if ordered[-1] <= bounds[0]:
            # (All in the first bucket: the usual batch of short calls.)
            counts[0] += len(ordered)
            return
        for i, bound in enumerate(bounds):
            upTo = bisect_right(ordered, bound)
            counts[i] += upTo - below
            below = upTo
        counts[-1] += len(ordered) - below

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

    def callsFinished(self, calls: Columns) -> None:
        """
        A batch of calls that ran (see L{taskservice._callrecords}): counted
        as L{callFinished} counts each, by task.
        """
        tasks = calls.tasks
        first = tasks[0]
        if tasks.count(first) == len(tasks):
            self._observeTask(
                first, calls.outcomes, calls.queuedAt, calls.startedAt, calls.endedAt
            )
            return
        byTask: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            byTask.setdefault(task, []).append(i)
        for task, indices in byTask.items():
            self._observeTask(
                task,
                [calls.outcomes[i] for i in indices],
                [calls.queuedAt[i] for i in indices],
                [calls.startedAt[i] for i in indices],
                [calls.endedAt[i] for i in indices],
            )

    def _observeTask(
        self,
        task: str,
        outcomes: Sequence[str],
        queuedAt: Sequence[float],
        startedAt: Sequence[float],
        endedAt: Sequence[float],
    ) -> None:
        stats = self._tasks.get(task)
        if stats is None:
            stats = self._tasks[task] = _TaskStats(len(self._bounds))
        stats.outcomes.update(outcomes)
        queued = list(map(sub, startedAt, queuedAt))
        run = list(map(sub, endedAt, startedAt))
        # The wall clock may step back: no negative durations.
        if min(queued) < 0.0:
            queued = [q if q > 0.0 else 0.0 for q in queued]
        if min(run) < 0.0:
            run = [r if r > 0.0 else 0.0 for r in run]
        bounds = self._bounds
        stats.queued.observeAll(queued, bounds)
        stats.run.observeAll(run, bounds)
        stats.total.observeAll(list(map(add, run, queued)), bounds)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        self.pool.foldCalls()
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
