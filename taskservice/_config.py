"""
C{twistd taskservice}'s options checked and turned into one frozen
L{ServiceConfig}, which L{taskservice._wiring} only wires: nothing is
written back into the options, each default is defined once (in
L{taskservice._defaults} and L{taskservice.wire}), and endpoint ports are
read in one place (L{taskservice._endpoints}).

Every check (here, and the ones in L{taskservice._checks} it runs) is a
usage error naming its option, seen before twistd goes into the
background. Nothing here imports the pool, the task server, the worker or
the jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from twisted.python import usage

from taskservice._auth import Token
from taskservice._checks import (
    checkJournal,
    checkPortsFree,
    checkScopes,
    checkTasks,
    security,
)
from taskservice._defaults import DEFAULT_BACKLOG, EXAMPLE_TASKS
from taskservice._endpoints import (
    checkListen,
    portNumber,
    tcpAddress,
    tcpListenAddress,
    withBacklog,
)


class Mode(Enum):
    """
    What this process runs.
    """

    BOTH = "a task server and its pool, with the gateway in front"
    TASK_SERVER = "the task server alone (--no-websocket)"
    GATEWAY = "the gateway alone, calling --task-server"


@dataclass(frozen=True)
class ServiceConfig:
    """
    Everything C{makeService} needs, checked. Endpoint descriptions are as
    given (C{listen} with the backlog added); a part that does not run in
    C{mode} has its fields at their defaults and unused.
    """

    mode: Mode
    tasks: tuple[str, ...]
    listen: str
    reusePort: bool
    token: Token | None
    upstreamToken: Token | None
    tls: Any
    workers: int | None
    timeout: float
    maxTimeout: float
    maxQueue: int
    workerConcurrency: int
    pipeline: int
    maxTasksPerChild: int | None
    maxMemory: int | None
    """Bytes (the option is in MiB), or L{None}."""
    maxResult: int
    shutdownTimeout: float
    startTimeout: float
    tracebacks: bool
    jobsDb: str
    jobTtl: float
    jobConcurrency: int
    serverTimeout: float
    """With a PostgreSQL journal: seconds without this server's heartbeat
    before the others take its running jobs."""
    scheduleOverrides: Mapping[str, str]
    """--schedule NAME=CRON, by task name (read-only)."""
    maxLine: int
    maxInFlight: int
    maxBatch: int
    smtp: str | None
    smtpSink: str | None
    """The sink's endpoint where it runs, else L{None}."""
    sinkAddress: str | None
    """host:port the workers' C{send_mail} reaches the sink on."""
    websocket: str
    taskServers: tuple[str, ...]
    allowedOrigins: tuple[str, ...]
    maxMessage: int
    maxBrowserCalls: int
    dashboardControl: bool
    """The gateway's /dashboard may cancel and retry jobs."""
    metrics: str | None

    @property
    def runsTaskServer(self) -> bool:
        return self.mode is not Mode.GATEWAY

    @property
    def runsGateway(self) -> bool:
        return self.mode is not Mode.TASK_SERVER


def configFrom(options: Any, checkPorts: bool = True) -> ServiceConfig:
    """
    Check parsed C{options} (a L{taskservice.tap.Options}) and return
    their L{ServiceConfig}; a problem is a L{usage.UsageError}.
    """
    tasks = tuple(options["tasks"]) or EXAMPLE_TASKS
    registry = checkTasks(tasks)
    overrides = dict(options["schedule-overrides"])
    from taskservice._schedules import schedulesOf

    try:
        schedulesOf(registry, overrides)
    except ValueError as e:
        raise usage.UsageError(f"--schedule: {e}") from None
    smtp = options["smtp"]
    if smtp is not None:
        host, _, port = smtp.rpartition(":")
        if not host or portNumber(port, zero=False) is None:
            raise usage.UsageError(f"--smtp must be host:port, not {smtp!r}")
    servers = tuple(options["task-servers"])
    if options["no-websocket"] and servers:
        raise usage.UsageError(
            "--task-server is for the gateway: not with --no-websocket"
        )
    mode = (
        Mode.TASK_SERVER
        if options["no-websocket"]
        else Mode.GATEWAY
        if servers
        else Mode.BOTH
    )
    local = mode is not Mode.GATEWAY
    token, upstreamToken, tls = security(options, local)
    if options["reuse-port"]:
        if servers:
            raise usage.UsageError(
                "--reuse-port is for the task server run here: not with --task-server"
            )
        port, _, _ = tcpListenAddress(options["listen"], "--reuse-port")
        if port == 0:
            raise usage.UsageError(
                "--reuse-port shares a fixed port: give --listen one"
            )
    elif local and tls is None:
        checkListen(options["listen"])
    runsSink = local and smtp is None and not options["no-smtp-sink"]
    sinkAddress = None
    if runsSink:
        host, port = tcpAddress("--smtp-sink", options["smtp-sink"])
        if port == 0:
            raise usage.UsageError("--smtp-sink needs a fixed port")
        sinkAddress = f"{host}:{port}"
    checkScopes(options, runsSink)
    if checkPorts:
        checkPortsFree(options, local, runsSink)
    if local:
        checkJournal(options["jobs-db"])
    maxMemory = options["max-memory"]
    return ServiceConfig(
        mode=mode,
        tasks=tasks,
        listen=withBacklog(options["listen"], DEFAULT_BACKLOG),
        reusePort=bool(options["reuse-port"]),
        token=token,
        upstreamToken=upstreamToken,
        tls=tls,
        workers=options["workers"],
        timeout=options["timeout"],
        maxTimeout=options["max-timeout"],
        maxQueue=options["max-queue"],
        workerConcurrency=options["worker-concurrency"],
        pipeline=options["pipeline"],
        maxTasksPerChild=options["max-tasks-per-child"],
        maxMemory=None if maxMemory is None else int(maxMemory * 1024 * 1024),
        maxResult=options["max-result"],
        shutdownTimeout=options["shutdown-timeout"],
        startTimeout=options["worker-start-timeout"],
        tracebacks=bool(options["tracebacks"]),
        jobsDb=options["jobs-db"],
        jobTtl=options["job-ttl"],
        jobConcurrency=options["job-concurrency"],
        serverTimeout=options["server-timeout"],
        scheduleOverrides=MappingProxyType(overrides),
        maxLine=options["max-line"],
        maxInFlight=options["max-in-flight"],
        maxBatch=options["max-batch"],
        smtp=smtp,
        smtpSink=options["smtp-sink"] if runsSink else None,
        sinkAddress=sinkAddress,
        websocket=options["websocket"],
        taskServers=servers,
        allowedOrigins=tuple(options["allowed-origins"]),
        maxMessage=options["max-message"],
        maxBrowserCalls=options["max-browser-calls"],
        dashboardControl=bool(options["dashboard-control"]),
        metrics=options["metrics"],
    )
