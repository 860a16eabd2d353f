"""
Prometheus metrics of a pool, a task server and a gateway, and the
twisted.web resources that serve them (see docs/observability).

Every metric lives in a L{CollectorRegistry} of its service (see
L{makeRegistry}), never in C{prometheus_client}'s global default registry,
so one process may run several pools, each with its own metrics.

Costs: the pool keeps each call's end as one tuple, and its L{PoolMetrics}
folds them into plain integers in batches when it is collected (and every
L{taskservice._callrecords.FOLD_AT} calls), a C-speed pass per batch (see
L{taskservice._callrecords}); everything else (queue depth, workers by state,
restarts, connections, the task server's refusals, the gateway's counters)
is read from the objects' own counters when Prometheus scrapes. Collection
runs in the reactor thread (L{MetricsResource} renders there); a registry
read from another thread may see a call counted in one metric and not yet
in the next.

The pool's collector is L{taskservice._poolmetrics}, the twisted.web
resources L{taskservice._metricsweb}; this module has the task server's and
the gateway's collectors and L{makeRegistry}, and re-exports the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from taskservice._metricsweb import MetricsResource, MetricsSite
from taskservice._poolmetrics import (
    DEFAULT_BUCKETS,
    JOB_OUTCOMES,
    POOL_OUTCOMES,
    RESTART_CAUSES,
    WORKER_STATES,
    PoolMetrics,
)
from taskservice.errors import OUTCOMES

if TYPE_CHECKING:
    from taskservice.gateway import GatewayFactory
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory

__all__ = [
    "DEFAULT_BUCKETS",
    "JOB_OUTCOMES",
    "POOL_OUTCOMES",
    "RESTART_CAUSES",
    "WORKER_STATES",
    "GatewayMetrics",
    "MetricsResource",
    "MetricsSite",
    "PoolMetrics",
    "TaskServerMetrics",
    "makeRegistry",
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
