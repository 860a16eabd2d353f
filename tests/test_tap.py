"""
Unit tests of L{taskservice.tap}: the C{twistd taskservice} options, parsed
with C{parseOptions}, and the service tree that C{makeService} builds (built
and inspected, never started: nothing listens and no worker is spawned).
"""

from __future__ import annotations

import os
from typing import TypeVar

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python import usage

from taskservice import tap
from taskservice._lines import DEFAULT_MAX_LINE
from taskservice.pool import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEOUT,
    ProcessPool,
)
from taskservice.server import TaskServerFactory

T = TypeVar("T")


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
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
    assert parse()["tasks"] == ["taskservice.examples"]


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
    assert options["smtp"] is None
    assert not options["tracebacks"]


def test_defaultTasksAreNotSharedBetweenInstances() -> None:
    """
    Filling in the default task list on one Options does not leak into
    another (no shared mutable default).
    """
    first = parse()
    first["tasks"].append("mutated")
    assert parse()["tasks"] == ["taskservice.examples"]


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
    "max-timeout",
    "max-in-flight",
    "worker-concurrency",
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
@pytest.mark.parametrize("name", ["timeout", "shutdown-timeout"])
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
    )
    root = tap.makeService(options)

    assert IService.providedBy(root)
    assert isinstance(root, MultiService)
    assert not root.running
    assert not any(service.running for service in descendants(root))
    pool = only(ProcessPool, root)
    listener = only(StreamServerEndpointService, root)

    assert not pool.running
    assert pool.size == 2
    assert pool.defaultTimeout == 12.0
    assert pool.maxQueue == 5
    assert pool.shutdownTimeout == 3.0
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
    )
    root = tap.makeService(options)
    pool = only(ProcessPool, root)
    assert pool.maxTimeout == 300.0, "never below the default timeout"
    assert pool.concurrency == 7
    assert pool.maxTasksPerChild == 500
    assert pool.maxMemory == 256 * 1024 * 1024
    assert pool.maxResult == 1000
    listener = only(StreamServerEndpointService, root)
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
