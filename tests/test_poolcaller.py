"""
L{PoolCaller}, the gateway's upstream when the task server runs in the same
process, on a pool of fake workers.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from taskservice._poolcaller import PoolCaller
from taskservice.errors import InvalidParams, MethodNotFound, TaskFailed, Unavailable
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.testing import FakeProcessReactor


@pytest.fixture
def caller() -> tuple[FakeProcessReactor, PoolCaller]:
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1, defaultTimeout=10.0)
    pool.startService()
    reactor.readyAll()
    return reactor, PoolCaller(TaskServerFactory(pool))


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not answered"
    return results[0]


def test_positionalAndNamed(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    reactor, c = caller
    positional = c.request("add", [1, 2])
    named = c.request("add", {"a": 2, "b": 3})
    reactor.runAllCalls(c.pool.registry)
    assert outcome(positional) == 3
    assert outcome(named) == 5


def test_errorsAsThePoolGivesThem(
    caller: tuple[FakeProcessReactor, PoolCaller],
) -> None:
    """
    Unknown tasks, wrong arguments and task errors fail as the pool fails
    them for the task server's own connections.
    """
    reactor, c = caller
    unknown = outcome(c.request("nope", []))
    assert isinstance(unknown, Failure) and unknown.check(MethodNotFound)
    wrong = outcome(c.request("add", [1]))
    assert isinstance(wrong, Failure) and wrong.check(InvalidParams)
    d = c.request("add", [1, 2])
    reactor.workers[0].raise_("ValueError", "no")
    failed = outcome(d)
    assert isinstance(failed, Failure) and failed.check(TaskFailed)


def test_builtins(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    """
    $/stats is the task server's own document; other $/ methods are not
    found.
    """
    _, c = caller
    stats = outcome(c.request("$/stats"))
    assert stats["workers"]["size"] == 1
    assert "refused" in stats and "connections" in stats
    missing = outcome(c.request("$/auth"))
    assert isinstance(missing, Failure) and missing.check(MethodNotFound)


def test_progress(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    reactor, c = caller
    updates: list[dict[str, Any]] = []
    d = c.request("add", [1, 2], onProgress=updates.append)
    reactor.workers[0].progress({"done": 1, "total": 2})
    reactor.workers[0].reply(3)
    assert updates == [{"done": 1, "total": 2}]
    assert outcome(d) == 3


def test_timeout(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    """
    The caller's timeout is the call's deadline, within the pool's limit.
    """
    _, c = caller
    tooLong = outcome(c.request("add", [1, 2], timeout=1e9))
    assert isinstance(tooLong, Failure)
    assert tooLong.value.code == -32600


def test_cancelStopsTheCall(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    """
    Cancelling a running plain call stops it (its worker is killed), as
    $/cancelRequest does.
    """
    reactor, c = caller
    d = c.request("hang", [])
    [worker] = reactor.workers
    d.cancel()
    assert isinstance(outcome(d), Failure)
    assert worker.killed


def test_abandonQueued(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    """
    An abandoned queued call is dropped: it never runs.
    """
    reactor, c = caller
    running = c.request("add", [1, 1])
    queued = c.request("add", [2, 2])
    c.abandon(queued)
    failure = outcome(queued)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert c.pool.stats()["queued"] == 0
    reactor.runAllCalls(c.pool.registry)
    assert outcome(running) == 2
    assert c.pool.completed == 1


def test_abandonRunning(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    """
    An abandoned running call finishes unheard: the caller's Deferred fails
    at once, the worker is not killed, the late result goes nowhere.
    """
    reactor, c = caller
    d = c.request("add", [1, 1])
    [worker] = reactor.workers
    c.abandon(d)
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert not worker.killed
    worker.reply(2)
    assert c.pool.completed == 1
    c.abandon(d)  # again: nothing happens


def test_poolStopped(caller: tuple[FakeProcessReactor, PoolCaller]) -> None:
    reactor, c = caller
    c.pool.stopService()
    failure = outcome(c.request("add", [1, 2]))
    assert isinstance(failure, Failure) and failure.check(Unavailable)
