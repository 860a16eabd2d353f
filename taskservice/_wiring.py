"""
The service tree of a checked L{ServiceConfig}: only wiring (every check
and default is L{taskservice._config}'s). What each part needs is imported
here, when the tree is built, so that C{twistd taskservice --help} loads
none of the pool, the server, the worker, the jobs or the gateway.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from taskservice._config import Mode, ServiceConfig
from taskservice._endpoints import splitDescription, tcpListenAddress

if TYPE_CHECKING:
    from taskservice.service import TaskServerService
    from taskservice.smtpsink import SMTPSink

SOMAXCONN = "/proc/sys/net/core/somaxconn"

log = Logger(namespace="taskservice.tap")


def somaxconn(path: str = SOMAXCONN) -> int | None:
    """
    The kernel's cap on a listening socket's accept queue
    (C{net.core.somaxconn}), or L{None} where it cannot be read.
    """
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _checkBacklog(backlog: int, cap: int | None) -> None:
    """
    Warn, once at startup, when the kernel silently shortens the accept
    queue asked for.
    """
    if cap is not None and cap < backlog:
        log.warn(
            "the task server's listen backlog of {backlog} is capped at {cap}"
            " by net.core.somaxconn: raise it (sysctl -w"
            " net.core.somaxconn={backlog}) for clients that open a connection"
            " per call",
            backlog=backlog,
            cap=cap,
        )


def makeService(config: ServiceConfig) -> IService:
    """
    The service tree of C{config}: the task server (process pool and
    task-protocol listener) and the websocket gateway in front of it, either
    alone with --no-websocket or --task-server.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    from taskservice._dashfeed import DashboardFeed
    from taskservice._poolcaller import PoolCaller
    from taskservice.balancer import Balancer
    from taskservice.client import TaskClient
    from taskservice.gateway import GatewayFactory, GatewaySite
    from taskservice.service import GatewayService

    root = MultiService()
    sink = None
    if config.smtpSink is not None:
        from taskservice.smtpsink import SMTPSink, sinkService

        sink = SMTPSink()
        sinkService(reactor, config.smtpSink, sink).setServiceParent(root)
    if config.mode is Mode.TASK_SERVER:
        alone = _makeTaskServer(config, reactor, sink)
        alone.setServiceParent(root)
        _serveMetrics(config, reactor, root, _metricsRegistry(alone, None))
        return root
    taskServer = None
    client: TaskClient | Balancer | PoolCaller
    servers = config.taskServers
    token = config.upstreamToken
    if not servers:
        # The gateway calls the pool of the task server beside it directly,
        # not over a connection to itself.
        taskServer = _makeTaskServer(config, reactor, sink)
        client = PoolCaller(taskServer.factory)
    else:
        for server in servers:
            try:
                clientFromString(reactor, server)
            except Exception as e:  # whatever the endpoint's parser raises
                raise usage.UsageError(f"--task-server {server!r}: {e}") from e
        if len(servers) == 1:
            client = TaskClient(reactor, servers[0], token=token)
        else:
            client = Balancer(reactor, list(servers), token=token)
    factory = GatewayFactory(
        reactor,
        client,
        allowedOrigins=list(config.allowedOrigins),
        maxMessageSize=config.maxMessage,
        maxBrowserCalls=config.maxBrowserCalls,
        maxBatch=config.maxBatch,
    )
    if sink is not None:
        factory.addStatsProvider(lambda: {"smtpSink": sink.stats()})
    metrics = _metricsRegistry(taskServer, factory)
    dashboard = DashboardFeed(reactor, factory, control=config.dashboardControl)
    try:
        gateway = GatewayService(
            reactor,
            config.websocket,
            GatewaySite(factory, metrics=metrics, dashboard=dashboard),
            factory,
            client,
            taskServer,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--websocket {config.websocket!r}: {e}") from e
    gateway.setServiceParent(root)
    dashboard.setServiceParent(root)
    _serveMetrics(config, reactor, root, metrics)
    return root


def _metricsRegistry(taskServer: TaskServerService | None, gateway: Any) -> Any:
    """
    One registry for the whole process: the pool's and task server's
    metrics when they run here, the gateway's, and the process's own.
    """
    from taskservice.metrics import makeRegistry

    if taskServer is None:
        return makeRegistry(gateway=gateway)
    return makeRegistry(
        pool=taskServer.pool, server=taskServer.factory, gateway=gateway
    )


def _serveMetrics(
    config: ServiceConfig, reactor: Any, root: Any, registry: Any
) -> None:
    """
    With --metrics, serve C{registry} on that endpoint.
    """
    if config.metrics is None:
        return
    from twisted.application import strports

    from taskservice.metrics import MetricsSite

    try:
        listener = strports.service(
            config.metrics, MetricsSite(registry, reactor), reactor=reactor
        )
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--metrics {config.metrics!r}: {e}") from e
    listener.setServiceParent(root)


def _makeTaskServer(
    config: ServiceConfig, reactor: Any, sink: SMTPSink | None = None
) -> TaskServerService:
    """
    The task server and its pool; its C{$/stats} tells C{sink}'s count
    (the demo's SMTP sink, which its workers' C{send_mail} delivers to)
    when it runs beside it.
    """
    from taskservice._pgjournal import PostgreSQLJournal
    from taskservice._pgwire import isPostgreSQL
    from taskservice._sqlitejournal import SQLiteJournal
    from taskservice.examples import SMTP_ENVIRONMENT
    from taskservice.jobs import JobService
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory
    from taskservice.service import TaskServerService

    env = dict(os.environ)
    if config.smtp is not None:
        env[SMTP_ENVIRONMENT] = config.smtp
    elif config.sinkAddress is not None:
        env[SMTP_ENVIRONMENT] = config.sinkAddress
    try:
        pool = ProcessPool(
            reactor,
            list(config.tasks),
            size=config.workers,
            defaultTimeout=config.timeout,
            maxTimeout=config.maxTimeout,
            maxQueue=config.maxQueue,
            concurrency=config.workerConcurrency,
            pipeline=config.pipeline,
            maxTasksPerChild=config.maxTasksPerChild,
            maxMemory=config.maxMemory,
            maxResult=config.maxResult,
            shutdownTimeout=config.shutdownTimeout,
            startTimeout=config.startTimeout,
            includeTracebacks=config.tracebacks,
            env=env,
            python=sys.executable,
        )
    except (ImportError, ValueError) as e:
        raise usage.UsageError(f"cannot load the tasks: {e}") from e
    journal: Any = (
        PostgreSQLJournal(reactor, config.jobsDb, serverTimeout=config.serverTimeout)
        if isPostgreSQL(config.jobsDb)
        else SQLiteJournal(reactor, config.jobsDb)
    )
    jobs = JobService(
        reactor,
        pool,
        journal,
        ttl=config.jobTtl,
        maxRunning=config.jobConcurrency,
        schedules=dict(config.scheduleOverrides),
    )
    factory = TaskServerFactory(
        pool,
        maxLineLength=config.maxLine,
        maxInFlight=config.maxInFlight,
        maxBatch=config.maxBatch,
        token=config.token,
        jobs=jobs,
    )
    if sink is not None:
        factory.addStatsProvider(lambda: {"smtpSink": sink.stats()})
    listen: Any = config.listen
    if config.reusePort:
        from taskservice._reuseport import ReusePortEndpoint

        port, interface, backlog = tcpListenAddress(listen, "--reuse-port")
        listen = ReusePortEndpoint(reactor, port, interface, backlog, tls=config.tls)
    elif config.tls is not None:
        from twisted.internet.endpoints import SSL4ServerEndpoint

        port, interface, backlog = tcpListenAddress(listen, "--tls-cert")
        listen = SSL4ServerEndpoint(
            reactor, port, config.tls, backlog=backlog, interface=interface
        )
    else:
        _, keywords = splitDescription(listen)
        given = keywords.get("backlog", "")
        backlog = int(given) if given.isascii() and given.isdigit() else 0
    _checkBacklog(backlog, somaxconn())
    return TaskServerService(reactor, listen, pool, factory, jobs)
