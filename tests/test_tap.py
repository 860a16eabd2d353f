"""
Unit tests of L{taskservice.tap}: the C{twistd taskservice} options, parsed
with C{parseOptions}, and the service tree that C{makeService} builds (built
and inspected, never started: nothing listens and no worker is spawned).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TypeVar

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage

from taskservice import _endpoints, _wiring, tap
from taskservice._lines import DEFAULT_MAX_LINE
from taskservice.pool import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    ProcessPool,
)
from taskservice.server import TaskServerFactory

T = TypeVar("T")


def parse(*argv: str, checkPorts: bool = False) -> tap.Options:
    """
    C{argv} parsed as C{twistd taskservice} does; ports in use are refused
    only with C{checkPorts} (what runs on the machine must not decide the
    outcome of the other tests, which never listen).
    """
    options = tap.Options()
    options.checkPorts = checkPorts
    options.parseOptions(list(argv))
    return options


# -- defaults ----------------------------------------------------------------


def test_defaultListenIsLoopbackPort12345() -> None:
    """
    With no options the task protocol is served on port 12345 of the
    loopback interface only (the design's security default).
    """
    assert parse()["listen"] == "tcp:12345:interface=127.0.0.1"
    assert tap.DEFAULT_LISTEN == "tcp:12345:interface=127.0.0.1"


def test_defaultTasksAreTheExamples() -> None:
    """
    With no --tasks, the example tasks are served.
    """
    assert parse().config.tasks == ("taskservice.examples",)


def test_defaultWorkersIsNoneMeaningOnePerCPU() -> None:
    """
    With no --workers the option is None, which the pool reads as one
    worker per CPU.
    """
    assert parse()["workers"] is None


def test_defaultLimits() -> None:
    """
    The timeout, line limit, queue bound and shutdown grace default to the
    library's own defaults, so the command line and the API agree.
    """
    options = parse()
    assert options["timeout"] == DEFAULT_TIMEOUT
    assert options["max-line"] == DEFAULT_MAX_LINE
    assert options["max-queue"] == DEFAULT_MAX_QUEUE
    assert options["shutdown-timeout"] == DEFAULT_SHUTDOWN_TIMEOUT
    assert options["worker-start-timeout"] == DEFAULT_START_TIMEOUT
    assert options["smtp"] is None
    assert not options["tracebacks"]


def test_defaultTasksAreNotSharedBetweenInstances() -> None:
    """
    Filling in the default task list on one Options does not leak into
    another (no shared mutable default).
    """
    first = parse()
    first["tasks"].append("mutated")
    assert parse().config.tasks == ("taskservice.examples",)


# -- good values -----------------------------------------------------------


def test_valuesAreConverted() -> None:
    """
    Numeric options come back as numbers of the right type.
    """
    options = parse(
        "--workers",
        "3",
        "--timeout",
        "2.5",
        "--max-line",
        "4096",
        "--max-queue",
        "7",
        "--shutdown-timeout",
        "0.5",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--smtp",
        "mail.example.com:2525",
        "--tracebacks",
    )
    assert options["workers"] == 3
    assert type(options["workers"]) is int
    assert options["timeout"] == 2.5
    assert options["max-line"] == 4096
    assert type(options["max-line"]) is int
    assert options["max-queue"] == 7
    assert type(options["max-queue"]) is int
    assert options["shutdown-timeout"] == 0.5
    assert options["listen"] == "tcp:0:interface=127.0.0.1"
    assert options["smtp"] == "mail.example.com:2525"
    assert options["tracebacks"]


def test_shortOptions() -> None:
    """
    -l, -w and -t are short for --listen, --workers and --timeout.
    """
    options = parse("-l", "tcp:0", "-w", "2", "-t", "9")
    assert (options["listen"], options["workers"], options["timeout"]) == (
        "tcp:0",
        2,
        9.0,
    )


def test_tasksIsRepeatable() -> None:
    """
    Each --tasks adds a module, in order; giving any replaces the default.
    (The modules must be importable: any module will do for this test.)
    """
    options = parse("--tasks", "taskservice.examples", "--tasks", "string")
    assert options["tasks"] == ["taskservice.examples", "string"]


# -- bad values ----------------------------------------------------------------

_NUMERIC = [
    "workers",
    "timeout",
    "max-line",
    "max-queue",
    "shutdown-timeout",
    "worker-start-timeout",
    "max-timeout",
    "max-in-flight",
    "max-batch",
    "worker-concurrency",
    "pipeline",
    "max-tasks-per-child",
    "max-memory",
    "max-result",
]
_BAD_NUMBERS = ["abc", "", "0", "-1", "0.0", "1e"]


@pytest.mark.parametrize("value", _BAD_NUMBERS)
@pytest.mark.parametrize("name", _NUMERIC)
def test_badNumberRejected(name: str, value: str) -> None:
    """
    A non-numeric, zero or negative value of a numeric option is a usage
    error that names the option, not a traceback or a silent default.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(f"--{name}", value)
    assert f"--{name}" in str(raised.value)


@pytest.mark.parametrize("name", ["workers", "max-line", "max-queue"])
def test_fractionRejectedForCounts(name: str) -> None:
    """
    Counts (workers, bytes, queued calls) must be whole numbers.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(f"--{name}", "2.5")
    assert f"--{name}" in str(raised.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "name", ["timeout", "shutdown-timeout", "worker-start-timeout"]
)
def test_nonFiniteDurationRejected(name: str, value: str) -> None:
    """
    A duration must be a finite positive number: NaN compares false with
    everything (so it is not caught by a "<= 0" check) and would make a
    deadline that never fires or a timer the reactor cannot schedule.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(f"--{name}", value)
    assert f"--{name}" in str(raised.value)


@pytest.mark.parametrize(
    "value",
    ["localhost", "localhost:", ":25", "localhost:smtp", "localhost:-1", "host:99999"],
)
def test_badSMTPRejected(value: str) -> None:
    """
    --smtp must be host:port with a host and a valid TCP port number.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--smtp", value)
    assert "--smtp" in str(raised.value)


def test_unknownOptionRejected() -> None:
    """
    A misspelt option is a usage error, not ignored.
    """
    with pytest.raises(usage.UsageError):
        parse("--wrokers", "2")


def test_missingTaskModuleRejected() -> None:
    """
    A --tasks module that cannot be imported is reported as a usage error
    that names the module as given (not merely its first missing package),
    at option parsing or at the latest when the service is made: before
    anything listens or any worker starts.
    """
    with pytest.raises(usage.UsageError) as raised:
        options = parse("--tasks", "no.such.module")
        tap.makeService(options)
    assert "no.such.module" in str(raised.value)


# -- makeService ---------------------------------------------------------------


def descendants(service: IService) -> list[IService]:
    """
    Every service below C{service} in its tree, depth first.
    """
    found: list[IService] = []
    for child in service if isinstance(service, MultiService) else ():
        found.append(child)
        found.extend(descendants(child))
    return found


def only(kind: type[T], root: IService) -> T:
    """
    The one service of type C{kind} in C{root}'s tree.
    """
    matches = [s for s in descendants(root) if isinstance(s, kind)]
    assert len(matches) == 1, (kind, descendants(root))
    return matches[0]


def taskListener(root: IService) -> StreamServerEndpointService:
    """
    The one listener serving the task protocol in C{root}'s tree (the
    gateway has a listener of its own).
    """
    matches = [
        s
        for s in descendants(root)
        if isinstance(s, StreamServerEndpointService)
        and isinstance(s.factory, TaskServerFactory)
    ]
    assert len(matches) == 1, descendants(root)
    return matches[0]


def test_makeServiceTree() -> None:
    """
    makeService builds, without starting anything, a MultiService tree
    holding the process pool configured from the options and a strports
    listener serving the task protocol on the --listen endpoint (however
    they are grouped below the root).
    """
    options = parse(
        "--workers",
        "2",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--timeout",
        "12",
        "--max-line",
        "4096",
        "--max-queue",
        "5",
        "--shutdown-timeout",
        "3",
        "--worker-start-timeout",
        "20",
    )
    root = tap.makeService(options)

    assert IService.providedBy(root)
    assert isinstance(root, MultiService)
    assert not root.running
    assert not any(service.running for service in descendants(root))
    pool = only(ProcessPool, root)
    listener = taskListener(root)

    assert not pool.running
    assert pool.size == 2
    assert pool.defaultTimeout == 12.0
    assert pool.maxQueue == 5
    assert pool.shutdownTimeout == 3.0
    assert pool.startTimeout == 20.0
    assert not pool.includeTracebacks
    assert "echo" in set(pool.registry)

    assert not listener.running
    assert isinstance(listener.factory, TaskServerFactory)
    assert listener.factory.pool is pool
    assert listener.factory.maxLineLength == 4096
    endpoint = listener.endpoint
    assert isinstance(endpoint, TCP4ServerEndpoint)
    assert endpoint._port == 0
    assert endpoint._interface == "127.0.0.1"


def test_makeServiceDefaultWorkersOnePerCPU() -> None:
    """
    Without --workers the pool gets one worker per CPU (at least one).
    """
    root = tap.makeService(parse("--listen", "tcp:0:interface=127.0.0.1"))
    pool = only(ProcessPool, root)
    assert pool.size == (os.cpu_count() or 1)


def test_makeServiceTaskModules() -> None:
    """
    The pool serves exactly the tasks of the --tasks modules.
    """
    root = tap.makeService(
        parse(
            "--listen", "tcp:0:interface=127.0.0.1", "--tasks", "taskservice.examples"
        )
    )
    pool = only(ProcessPool, root)
    assert pool.registry.modules == ("taskservice.examples",)
    assert {"echo", "sleep", "fib", "fail", "send_mail"} <= set(pool.registry)


def test_makeServicePassesSMTPToWorkers() -> None:
    """
    --smtp reaches the workers through their environment, where the
    send_mail example task reads it.
    """
    from taskservice.examples import SMTP_ENVIRONMENT

    root = tap.makeService(
        parse("--listen", "tcp:0:interface=127.0.0.1", "--smtp", "localhost:2525")
    )
    pool = only(ProcessPool, root)
    # No public accessor for the workers' environment: read the private one.
    assert pool._env[SMTP_ENVIRONMENT] == "localhost:2525"


def test_makeServiceTracebacks() -> None:
    """
    --tracebacks turns on tracebacks in the pool's task errors.
    """
    root = tap.makeService(
        parse("--listen", "tcp:0:interface=127.0.0.1", "--tracebacks")
    )
    pool = only(ProcessPool, root)
    assert pool.includeTracebacks


def test_makeServicePoolLimits() -> None:
    """
    The pool and connection limits reach the pool and the factory: deadline
    cap, coroutine concurrency, recycling by count and by memory (MiB), the
    result cap and the per-connection in-flight cap.
    """
    options = parse(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--max-timeout",
        "60",
        "--worker-concurrency",
        "7",
        "--max-tasks-per-child",
        "500",
        "--max-memory",
        "256",
        "--max-result",
        "1000",
        "--max-in-flight",
        "9",
        "--pipeline",
        "2",
    )
    root = tap.makeService(options)
    pool = only(ProcessPool, root)
    assert pool.maxTimeout == 300.0, "never below the default timeout"
    assert pool.concurrency == 7
    assert pool.pipeline == 2
    assert pool.maxTasksPerChild == 500
    assert pool.maxMemory == 256 * 1024 * 1024
    assert pool.maxResult == 1000
    listener = taskListener(root)
    assert listener.factory.maxInFlight == 9


def test_poolLimitDefaults() -> None:
    """
    Without options: no recycling, 100 coroutine calls per worker, an hour's
    deadline cap, 1,000 calls in flight per connection, 64 MiB results.
    """
    options = parse()
    assert options["max-tasks-per-child"] is None
    assert options["max-memory"] is None
    assert options["worker-concurrency"] == 100
    assert options["max-timeout"] == 3600.0
    assert options["max-in-flight"] == 1000
    assert options["max-result"] == 64 * 1024 * 1024


def test_maxBatch() -> None:
    """
    C{--max-batch} (default 1000, the default C{--max-in-flight}) reaches
    the task server's factory and the gateway's, which both cap a batch.
    """
    from taskservice.service import GatewayService

    assert parse()["max-batch"] == 1000
    root = tap.makeService(
        parse(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--websocket",
            "tcp:0:interface=127.0.0.1",
            "--max-batch",
            "7",
        )
    )
    assert only(GatewayService, root).factory.maxBatch == 7
    assert only(GatewayService, root).taskServer.factory.maxBatch == 7


# -- the websocket gateway -------------------------------------------------------


def test_gatewayDefaults() -> None:
    """
    With no options the gateway is on, on port 8080 of loopback, in front of
    the local task server, with a 1 MiB message limit, 100 calls in flight
    per browser and only the page's own origin.
    """
    options = parse()
    assert options["websocket"] == "tcp:8080:interface=127.0.0.1"
    assert tap.DEFAULT_WEBSOCKET == "tcp:8080:interface=127.0.0.1"
    assert options["task-servers"] == []
    assert not options["no-websocket"]
    assert options["max-message"] == 1024 * 1024
    assert options["max-browser-calls"] == 100
    assert options["allowed-origins"] == []


def test_gatewayDefaultsDefinedOnce() -> None:
    """
    The gateway's limits are defined once, in the Twisted-free wire module
    (so that the plugin does not import autobahn): the command line's
    defaults and the library's are that one value, and no other module
    assigns its own copy.
    """
    from taskservice import gateway, wire

    assert tap.DEFAULT_MAX_MESSAGE == gateway.DEFAULT_MAX_MESSAGE
    assert tap.DEFAULT_MAX_BROWSER_CALLS == gateway.DEFAULT_MAX_BROWSER_CALLS
    assert parse()["max-browser-calls"] == wire.DEFAULT_MAX_BROWSER_CALLS == 100
    assert parse()["max-message"] == wire.DEFAULT_MAX_MESSAGE
    package = Path(tap.__file__).parent
    for name in ("DEFAULT_MAX_BROWSER_CALLS", "DEFAULT_MAX_MESSAGE"):
        assigned = re.compile(rf"^{name}\b.*=", re.MULTILINE)
        defining = [
            path.name
            for path in sorted(package.rglob("*.py"))
            if assigned.search(path.read_text())
        ]
        assert defining == ["wire.py"], (name, defining)


def test_gatewayOptionValues() -> None:
    """
    The gateway's options are converted; --allowed-origin is repeatable.
    """
    options = parse(
        "--websocket",
        "tcp:0:interface=127.0.0.1",
        "--task-server",
        "tcp:tasks.example.com:12345",
        "--max-message",
        "4096",
        "--max-browser-calls",
        "7",
        "--allowed-origin",
        "https://app.example.com",
        "--allowed-origin",
        "http://localhost:3000",
    )
    assert options["websocket"] == "tcp:0:interface=127.0.0.1"
    assert options["task-servers"] == ["tcp:tasks.example.com:12345"]
    assert (options["max-message"], options["max-browser-calls"]) == (4096, 7)
    assert type(options["max-message"]) is int
    assert options["allowed-origins"] == [
        "https://app.example.com",
        "http://localhost:3000",
    ]
    assert parse("--allowed-origin", "*")["allowed-origins"] == ["*"]


@pytest.mark.parametrize("value", [*_BAD_NUMBERS, "2.5"])
@pytest.mark.parametrize("name", ["max-message", "max-browser-calls"])
def test_badGatewayNumberRejected(name: str, value: str) -> None:
    """
    The gateway's limits must be positive whole numbers.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(f"--{name}", value)
    assert f"--{name}" in str(raised.value)


@pytest.mark.parametrize(
    "origin", ["example.com", "ws://example.com", "https://", "http://h:99999", ""]
)
def test_badAllowedOriginRejected(origin: str) -> None:
    """
    --allowed-origin takes http(s)://host[:port] (or null, or *).
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--allowed-origin", origin)
    assert "--allowed-origin" in str(raised.value)


def test_taskServerNeedsTheGateway() -> None:
    """
    --task-server says where the gateway calls: it makes no sense without
    the gateway.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--no-websocket", "--task-server", "tcp:localhost:12345")
    assert "--task-server" in str(raised.value)


@pytest.mark.parametrize("mode", [(), ("--no-websocket",)])
@pytest.mark.parametrize(
    "listen", ["tcp:http", "tcp:", "tcp:99999", "unix:", "nonsense:1"]
)
def test_badListen(listen: str, mode: tuple[str, ...]) -> None:
    """
    A --listen this process could not listen on is a usage error naming
    it, with or without the gateway.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--listen", listen, *mode)
    assert listen in str(raised.value)


def test_gatewayWithAnyListen() -> None:
    """
    The gateway calls the pool beside it directly, so --listen may be any
    server endpoint (here IPv6 TCP, which it once had to connect to).
    """
    parse("--listen", "tcp6:12345:interface=\\:\\:1")


def test_makeServiceWithGateway() -> None:
    """
    By default the tree holds the task server and, in a GatewayService,
    the gateway's site on --websocket, calling the task server's pool
    directly (no connection to itself); the limits reach the gateway's
    factory; nothing is started.
    """
    from taskservice._poolcaller import PoolCaller
    from taskservice.client import TaskClient
    from taskservice.gateway import GatewayFactory, GatewaySite
    from taskservice.service import GatewayService, TaskServerService

    root = tap.makeService(
        parse(
            "--listen",
            "tcp:23456:interface=127.0.0.1",
            "--websocket",
            "tcp:0:interface=127.0.0.1",
            "--max-message",
            "5000",
            "--max-browser-calls",
            "3",
            "--allowed-origin",
            "https://app.example.com",
        )
    )
    assert not any(service.running for service in descendants(root))
    gateway = only(GatewayService, root)
    assert isinstance(gateway.taskServer, TaskServerService)
    pool = only(ProcessPool, root)
    client = only(PoolCaller, root)
    assert gateway.client is client
    assert client.pool is pool
    assert client.server is gateway.taskServer.factory
    assert not [s for s in descendants(root) if isinstance(s, TaskClient)]
    listener = gateway.listener
    assert isinstance(listener, StreamServerEndpointService)
    assert isinstance(listener.factory, GatewaySite)
    assert isinstance(listener.endpoint, TCP4ServerEndpoint)
    assert (listener.endpoint._port, listener.endpoint._interface) == (0, "127.0.0.1")
    factory = listener.factory.gateway
    assert isinstance(factory, GatewayFactory)
    assert factory is gateway.factory
    assert factory.client is client
    assert (factory.maxMessageSize, factory.maxBrowserCalls) == (5000, 3)
    assert factory.maxMessagePayloadSize == factory.maxFramePayloadSize == 5000
    assert not factory.failByDrop
    assert ("https", "app.example.com", 443) in factory.extraOrigins


def test_makeServiceGatewayAlone() -> None:
    """
    With --task-server the gateway runs alone: no pool, no task listener.
    """
    from taskservice.client import TaskClient
    from taskservice.service import GatewayService

    root = tap.makeService(
        parse("--task-server", "unix:/run/tasks.sock", "--websocket", "tcp:0")
    )
    assert not [s for s in descendants(root) if isinstance(s, ProcessPool)]
    gateway = only(GatewayService, root)
    assert gateway.taskServer is None
    assert only(TaskClient, root).endpoint._path == "/run/tasks.sock"
    assert only(StreamServerEndpointService, root) is gateway.listener


def test_makeServiceSeveralTaskServers() -> None:
    """
    --task-server given more than once: the gateway calls through a
    Balancer holding one TaskClient per server, in the order given.
    """
    from taskservice.balancer import Balancer
    from taskservice.service import GatewayService

    root = tap.makeService(
        parse(
            "--task-server",
            "tcp:10.0.0.1:7000",
            "--task-server",
            "tls:tasks2.example.com:7000",
            "--websocket",
            "tcp:0",
        )
    )
    gateway = only(GatewayService, root)
    balancer = only(Balancer, root)
    assert gateway.client is balancer
    assert gateway.factory.client is balancer
    assert [s.name for s in balancer.servers] == [
        "tcp:10.0.0.1:7000",
        "tls:tasks2.example.com:7000",
    ]


@pytest.mark.parametrize(
    "bad", ["nonsense:7000", "tls:h:7000:trustRoots=/nonexistent/ca"]
)
def test_badSecondTaskServerRejected(bad: str) -> None:
    """
    Every --task-server must be a client endpoint that can be built; the
    bad one is named.
    """
    with pytest.raises(usage.UsageError) as raised:
        tap.makeService(
            parse(
                "--task-server",
                "tcp:10.0.0.1:7000",
                "--task-server",
                bad,
                "--websocket",
                "tcp:0",
            )
        )
    assert f"--task-server {bad!r}" in str(raised.value)


def test_makeServiceTaskServerAlone() -> None:
    """
    With --no-websocket (and no demo SMTP sink) only the task server runs.
    """
    from taskservice.client import TaskClient
    from taskservice.service import GatewayService

    root = tap.makeService(
        parse("--no-websocket", "--no-smtp-sink", "--listen", "tcp:0")
    )
    assert not [
        s for s in descendants(root) if isinstance(s, GatewayService | TaskClient)
    ]
    assert taskListener(root) is only(StreamServerEndpointService, root)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--websocket", "nonsense:1"),
        ("--task-server", "nonsense:1"),
        ("--task-server", "tcp:"),
    ],
)
def test_makeServiceBadEndpoint(option: str, value: str) -> None:
    """
    A --websocket or --task-server endpoint that cannot be parsed is a usage
    error naming the option, not a traceback.
    """
    with pytest.raises(usage.UsageError) as raised:
        tap.makeService(parse(option, value))
    assert option in str(raised.value)


def sinkListeners(root: IService) -> list[StreamServerEndpointService]:
    from taskservice._smtpserver import SinkSMTPFactory

    return [
        s
        for s in descendants(root)
        if isinstance(s, StreamServerEndpointService)
        and isinstance(s.factory, SinkSMTPFactory)
    ]


def test_makeServiceRunsTheSMTPSink() -> None:
    """
    By default the demo's SMTP sink listens on 127.0.0.1:2525, the workers'
    send_mail is pointed at it, and the gateway's /stats reports its count.
    """
    from taskservice.service import GatewayService

    root = tap.makeService(parse("--listen", "tcp:0"))
    (sink,) = sinkListeners(root)
    assert sink.endpoint._port == 2525
    assert sink.endpoint._interface == "127.0.0.1"
    pool = only(ProcessPool, root)
    assert pool._env["TASKSERVICE_SMTP"] == "127.0.0.1:2525"
    (provider,) = only(GatewayService, root).factory._statsProviders
    assert provider() == {"smtpSink": {"received": 0, "duplicates": 0}}


@pytest.mark.parametrize("argv", [["--no-websocket"], ["--websocket", "tcp:0"]])
def test_taskServerStatsTellTheSink(argv: list[str]) -> None:
    """
    The task server's own $/stats reports the sink beside it, with the
    gateway and without (under --no-websocket it was missing: nothing
    else reports it then).
    """
    root = tap.makeService(parse("--listen", "tcp:0", *argv))
    stats = taskListener(root).factory.stats()
    assert stats["smtpSink"] == {"received": 0, "duplicates": 0}


def test_taskServerStatsWithoutSink() -> None:
    """
    Without the sink (--no-smtp-sink), $/stats has no smtpSink member.
    """
    root = tap.makeService(parse("--listen", "tcp:0", "--no-smtp-sink"))
    assert "smtpSink" not in taskListener(root).factory.stats()


@pytest.mark.parametrize(
    "argv",
    [
        ["--smtp", "mail.example.com:25"],
        ["--no-smtp-sink"],
        ["--task-server", "tcp:127.0.0.1:12345"],
    ],
    ids=["relay", "off", "gateway-alone"],
)
def test_makeServiceWithoutSink(argv: list[str]) -> None:
    """
    A real relay (--smtp), --no-smtp-sink, or a gateway whose tasks run
    elsewhere: no sink is started.
    """
    local = [] if "--task-server" in argv else ["--listen", "tcp:0"]
    root = tap.makeService(parse(*local, "--websocket", "tcp:0", *argv))
    assert sinkListeners(root) == []


@pytest.mark.parametrize("value", ["unix:/tmp/sink", "tcp:0", "tcp:nope"])
def test_badSinkEndpoint(value: str) -> None:
    """
    The sink's address must be a TCP endpoint with a fixed port (the
    workers are told where it is).
    """
    with pytest.raises(usage.UsageError, match="--smtp-sink"):
        parse("--smtp-sink", value)


def test_taskModuleErrorsAreUsageErrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A task module that raises on import, or two tasks under one name, is a
    usage error naming the problem (twistd prints it without a traceback).
    """
    (tmp_path / "boomtasks.py").write_text('raise RuntimeError("config missing")\n')
    (tmp_path / "duptasks.py").write_text(
        "from taskservice import task\n"
        "@task(name='add')\ndef a(): pass\n"
        "@task(name='add')\ndef b(): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(usage.UsageError, match="RuntimeError: config missing"):
        parse("--tasks", "boomtasks")
    with pytest.raises(usage.UsageError, match="two tasks are registered as 'add'"):
        parse("--tasks", "duptasks")


def test_jobsDbCheckedBeforeStart(tmp_path: Path) -> None:
    """
    An existing --jobs-db the server would refuse is a usage error naming
    it (so twistd says why before going into the background) and is left
    unchanged; a missing one is not created by parsing the options; a
    gateway alone (--task-server) keeps no journal, so --jobs-db there is
    refused as doing nothing (and the file is not opened).
    """
    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"not a journal\n")
    with pytest.raises(usage.UsageError, match=r"--jobs-db: .*notes\.txt is not an"):
        parse("--jobs-db", str(foreign))
    assert foreign.read_bytes() == b"not a journal\n"
    missing = tmp_path / "new.sqlite3"
    options = parse("--jobs-db", str(missing))
    assert options["jobs-db"] == str(missing) and not missing.exists()
    with pytest.raises(usage.UsageError, match=r"^--jobs-db does nothing here"):
        parse("--jobs-db", str(foreign), "--task-server", "tcp:127.0.0.1:1")
    assert parse()["jobs-db"] == "taskservice-jobs.sqlite3"
    assert (parse()["job-ttl"], parse()["job-concurrency"]) == (86400.0, 100)


# -- the listen backlog --------------------------------------------------------


def test_defaultListenBacklog() -> None:
    """
    The task server listens with a backlog of 4096 (Twisted's default is
    50, which the FAQ's connection-per-call callers overflow) when
    C{--listen} gives none; a backlog given by name or position is kept.
    """
    endpoint = taskListener(tap.makeService(parse("--no-websocket"))).endpoint
    assert isinstance(endpoint, TCP4ServerEndpoint)
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (
        12345,
        "127.0.0.1",
        4096,
    )
    given = parse("--no-websocket", "--listen", "tcp:0:interface=127.0.0.1:backlog=7")
    endpoint = taskListener(tap.makeService(given)).endpoint
    assert isinstance(endpoint, TCP4ServerEndpoint)
    assert endpoint._backlog == 7


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:12345:interface=127.0.0.1", "tcp:12345:interface=127.0.0.1:backlog=4096"),
        ("tcp:0", "tcp:0:backlog=4096"),
        ("tcp:0:127.0.0.1:9", "tcp:0:127.0.0.1:9"),
        ("tcp:0:backlog=7", "tcp:0:backlog=7"),
        ("tcp6:0:interface=\\:\\:1", "tcp6:0:interface=\\:\\:1:backlog=4096"),
        ("tcp6:0:9", "tcp6:0:9"),
        ("unix:/run/tasks.sock", "unix:/run/tasks.sock:backlog=4096"),
        ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=4096"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_withBacklog(listen: str, expected: str) -> None:
    """
    The default backlog is added to the endpoint types that take one, only
    when the description gives none.
    """
    assert tap.withBacklog(listen) == expected


def test_backlogOverSomaxconnIsLogged(tmp_path: Path) -> None:
    """
    When the kernel's C{net.core.somaxconn} is below the backlog, a warning
    says so (the kernel shortens the queue silently); at or above it,
    nothing is said.
    """
    capFile = tmp_path / "somaxconn"
    capFile.write_text("128\n")
    assert tap.somaxconn(str(capFile)) == 128
    assert tap.somaxconn(str(tmp_path / "missing")) is None
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _wiring._checkBacklog(4096, 128)
        _wiring._checkBacklog(4096, 4096)
        _wiring._checkBacklog(4096, None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e.get("log_namespace") == "taskservice.tap"]
    assert [(e["log_level"], e["backlog"], e["cap"]) for e in warnings] == [
        (LogLevel.warn, 4096, 128)
    ]
    assert "net.core.somaxconn" in formatEvent(warnings[0])


# -- schedules -------------------------------------------------------------------


def test_scheduleOption() -> None:
    """
    --schedule NAME=CRON (repeatable) reaches the job service, added to or
    replacing the tasks' own @task(schedule=...).
    """
    options = parse(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--no-websocket",
        "--jobs-db",
        ":memory:",
        "--tasks",
        "tests.crontasks",
        "--schedule",
        "daily=0 6 * * MON-FRI",
        "--schedule",
        "everyFive = @hourly",
    )
    root = tap.makeService(options)
    factory = taskListener(root).factory
    assert isinstance(factory, TaskServerFactory) and factory.jobs is not None
    assert {s.name: s.cron.fields for s in factory.jobs.schedules} == {
        "daily": "0 6 * * MON-FRI",
        "everyFive": "0 * * * *",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--schedule", "fib"], r"^--schedule must be NAME=CRON \(e\.g\."),
        (["--schedule", "=@daily"], r"^--schedule must be NAME=CRON"),
        (["--schedule", "fail="], r"^--schedule must be NAME=CRON"),
        (
            ["--schedule", "fail=* * *"],
            r"^--schedule fail: cron expression '\* \* \*' has 3",
        ),
        (["--schedule", "fail=0 0 * * * *"], r"has 6 fields.*no seconds field"),
        (["--schedule", "fail=99 * * * *"], r"^--schedule fail: .*Bad minute"),
        (
            ["--schedule", "fail=@daily", "--schedule", "fail=@hourly"],
            r"^--schedule fail: given twice",
        ),
        (
            ["--schedule", "nope=@daily"],
            r"^--schedule: no task 'nope' to schedule \(tasks: ",
        ),
        (
            ["--schedule", "fib=@daily"],
            r"^--schedule: task 'fib' cannot be scheduled: a tick",
        ),
    ],
)
def test_wrongSchedulesAreUsageErrors(argv: list[str], message: str) -> None:
    """
    A --schedule that is not NAME=CRON, a wrong cron expression, a task
    named twice, an unknown task or one that needs arguments is a usage
    error saying which.
    """
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


# -- options that do nothing in the mode chosen --------------------------------

_MODES: dict[str, list[str]] = {
    "default": [],
    "no-websocket": ["--no-websocket"],
    "gateway-alone": ["--task-server", "tcp:127.0.0.1:1"],
    "relay": ["--smtp", "mail.example.com:25"],
    "no-sink": ["--no-smtp-sink"],
}
"""The modes of C{twistd taskservice}: what runs is decided by these."""

_VALUES: dict[str, list[str]] = {
    "listen": ["tcp:0:interface=127.0.0.1"],
    "workers": ["1"],
    "timeout": ["5"],
    "max-line": ["100000"],
    "max-queue": ["10"],
    "shutdown-timeout": ["1"],
    "jobs-db": [":memory:"],
    "job-ttl": ["60"],
    "job-concurrency": ["5"],
    "worker-start-timeout": ["5"],
    "max-timeout": ["60"],
    "max-in-flight": ["10"],
    "max-batch": ["10"],
    "worker-concurrency": ["5"],
    "pipeline": ["2"],
    "max-tasks-per-child": ["10"],
    "max-memory": ["100"],
    "max-result": ["1000"],
    "smtp": ["mail.example.com:25"],
    "smtp-sink": ["tcp:2526:interface=127.0.0.1"],
    "websocket": ["tcp:0:interface=127.0.0.1"],
    "max-message": ["1000"],
    "max-browser-calls": ["10"],
    "metrics": ["tcp:0:interface=127.0.0.1"],
    "tracebacks": [],
    "no-smtp-sink": [],
    "allowed-origin": ["https://app.example.com"],
    "tasks": ["taskservice.examples"],
    "schedule": ["fail=@hourly"],
}
"""A valid value of each option the table covers (the rest need files or a
mode of their own and have their own tests: token and TLS files,
--reuse-port, --task-server, --no-websocket)."""


def _hasEffect(option: str, mode: str) -> bool:
    """
    Whether C{option} does something in C{mode}, decided here from what each
    mode runs (not from L{tap.SCOPES}, which the test checks).
    """
    local = mode != "gateway-alone"
    gateway = mode != "no-websocket"
    sink = mode in ("default", "no-websocket")
    if option in ("max-batch", "metrics"):
        return True
    if option in ("websocket", "max-message", "max-browser-calls", "allowed-origin"):
        return gateway
    if option == "smtp-sink":
        return sink
    if option == "no-smtp-sink":
        return local and mode != "relay"
    if option == "smtp":
        return local
    return local


@pytest.mark.parametrize("mode", sorted(_MODES))
@pytest.mark.parametrize("option", sorted(_VALUES))
def test_optionsThatDoNothingAreUsageErrors(option: str, mode: str) -> None:
    """
    Every option against every mode: one that has an effect there is
    accepted; one that would be silently ignored (--listen or --workers
    with --task-server, the gateway's options with --no-websocket, the
    sink's where no sink runs) is a usage error naming it and the mode.
    """
    modeArgs = _MODES[mode]
    if f"--{option}" in modeArgs:
        return  # the mode itself
    argv = [*modeArgs, f"--{option}", *_VALUES[option]]
    if _hasEffect(option, mode) and {option, mode} != {"smtp", "no-sink"}:
        parse(*argv)
    else:
        # (--smtp with --no-smtp-sink: the error names --no-smtp-sink, which
        # the relay makes redundant.)
        with pytest.raises(
            usage.UsageError, match=rf"^--({option}|no-smtp-sink) does nothing here: "
        ):
            parse(*argv)


def test_everyOptionHasAScope() -> None:
    """
    Every option of the command line is in the table of where it has an
    effect (a new option must say).
    """
    assert set(tap.Options()._dispatch) == set(tap.SCOPES)


# -- ports already in use ------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "argv", "hint"),
    [
        ("listen", ["--listen"], "move it with --listen tcp:PORT"),
        ("websocket", ["--websocket"], "or --no-websocket"),
        ("smtp-sink", ["--smtp-sink"], "or turn it off with --no-smtp-sink"),
        ("metrics", ["--metrics"], "move it with --metrics tcp:PORT"),
    ],
)
def test_busyPortIsAUsageError(option: str, argv: list[str], hint: str) -> None:
    """
    A fixed port this process would listen on that another socket holds
    is a usage error naming the option, the address and how to move it
    (before twistd starts anything), not a traceback at start; the same
    port free again is accepted.
    """
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        with pytest.raises(usage.UsageError) as raised:
            parse(*argv, endpoint, checkPorts=True)
        message = str(raised.value)
        assert message.startswith(f"--{option} {endpoint}: 127.0.0.1:{port} is in use")
        assert hint in message, message
    parse(*argv, endpoint, checkPorts=True)


def test_busyAddressForms() -> None:
    """
    The probe reads the port and interface of tcp: (by name or position),
    tcp6: and ssl: descriptions; port 0, UNIX sockets and other endpoint
    types are never busy.
    """
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert _endpoints.busyAddress(f"tcp:{port}:127.0.0.1") == f"127.0.0.1:{port}"
        assert _endpoints.busyAddress(f"tcp:port={port}:interface=127.0.0.1") == (
            f"127.0.0.1:{port}"
        )
        assert _endpoints.busyAddress(f"tcp:{port}") == f"*:{port}"
        assert _endpoints.busyAddress(
            f"ssl:{port}:privateKey=k.pem:interface=127.0.0.1"
        )
    assert _endpoints.busyAddress(f"tcp:{port}:interface=127.0.0.1") is None
    assert _endpoints.busyAddress("tcp:0:interface=127.0.0.1") is None
    assert _endpoints.busyAddress("unix:/tmp/nothing.sock") is None
    assert _endpoints.busyAddress("systemd:domain=INET:index=0") is None


_HELP_PROBE = """
import json, sys
from twisted.scripts import twistd
sys.argv = ["twistd", "taskservice", "--help"]
try:
    twistd.run()
except SystemExit:
    pass
sys.stderr.write(json.dumps(sorted(sys.modules)))
"""


def test_helpLoadsNoneOfThePoolServerWorkerOrJobs() -> None:
    """
    C{twistd taskservice --help} (a real subprocess) prints the options
    without importing the pool, the task server, the worker, the jobs or
    the gateway: their defaults come from Twisted-free modules and the
    service tree's parts are imported only when it is built.
    """
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE],
        capture_output=True,
        timeout=60,
        cwd=Path(tap.__file__).parent.parent,
        check=False,
    )
    assert b"--max-in-flight" in result.stdout, result.stderr[-2000:]
    loaded = set(json.loads(result.stderr.decode().strip().splitlines()[-1]))
    assert "taskservice.tap" in loaded
    heavy = {
        "taskservice.pool",
        "taskservice.server",
        "taskservice.worker",
        "taskservice.jobs",
        "taskservice.gateway",
        "taskservice._sqlitejournal",
        "taskservice._scheduler",
        "autobahn",
    }
    assert not heavy & loaded, sorted(heavy & loaded)


@pytest.mark.integration
def test_jobsDbPostgreSQL(pgDSN: str) -> None:
    """
    A postgresql:// --jobs-db is checked at parse time (a database that is
    not a journal's is a usage error naming it) and gives the job service
    a PostgreSQL journal with --server-timeout.
    """
    import psycopg

    from taskservice._pgjournal import PostgreSQLJournal
    from taskservice.jobs import JobService

    root = tap.makeService(
        parse(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--jobs-db",
            pgDSN,
            "--server-timeout",
            "4.5",
        )
    )
    journal = only(JobService, root).journal
    assert isinstance(journal, PostgreSQLJournal)
    assert (journal.dsn, journal.serverTimeout) == (pgDSN, 4.5)
    assert parse()["server-timeout"] == 10.0
    with psycopg.connect(pgDSN, autocommit=True) as db:
        db.execute(
            "DROP TABLE taskservice_jobs, taskservice_meta, taskservice_servers;"
            " CREATE TABLE taskservice_jobs (x int)"
        )
    with pytest.raises(usage.UsageError, match=r"--jobs-db: .*not a job journal"):
        parse("--jobs-db", pgDSN)
