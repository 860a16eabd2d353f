"""
Unit tests of the process pool's logic, on the in-memory FakeProcessReactor
(no processes, no real time).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from taskservice.errors import (
    InvalidParams,
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TimedOut,
    Unavailable,
    WorkerLost,
)
from taskservice.examples import echo
from taskservice.pool import ProcessPool, WorkerState
from taskservice.testing import FakeProcessReactor
from tests import pooltasks

_case = SynchronousTestCase()
result = _case.successResultOf
noResult = _case.assertNoResult


def failure(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    return _case.failureResultOf(d, *types).value


def makePool(size: int = 2, **kwargs: Any) -> tuple[FakeProcessReactor, ProcessPool]:
    reactor = FakeProcessReactor()
    kwargs.setdefault("defaultTimeout", 10.0)
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=size, **kwargs)
    pool.startService()
    return reactor, pool


@pytest.fixture
def ready() -> tuple[FakeProcessReactor, ProcessPool]:
    reactor, pool = makePool()
    reactor.readyAll()
    return reactor, pool


def test_startSpawnsWorkersWithExplicitEnvironment() -> None:
    """
    Starting the pool spawns C{size} workers running the worker module with
    the task modules, an explicit environment and dedicated frame pipes.
    """
    reactor, pool = makePool(size=3, env={"ONLY": "this"})
    assert len(reactor.workers) == 3
    worker = reactor.workers[0]
    assert worker.args[1:] == ["-m", "taskservice.worker", "tests.pooltasks"]
    assert worker.env["ONLY"] == "this"
    assert worker.env["PYTHONUNBUFFERED"] == "1"
    assert "PYTHONPATH" in worker.env
    assert worker.childFDs[3] == "w" and worker.childFDs[4] == "r"
    assert 0 in worker.transport.closedFDs, "stdin is closed at once"


def test_noCallGoesToAStartingWorker() -> None:
    """
    A call submitted before any worker is ready waits in the queue and is
    dispatched when a worker says it is ready.
    """
    reactor, pool = makePool(size=1)
    d = pool.submit("add", [1, 2])
    assert reactor.workers[0].calls == []
    assert pool.stats()["queued"] == 1
    reactor.workers[0].ready()
    assert [c["task"] for c in reactor.workers[0].calls] == ["add"]
    reactor.runAllCalls(pool.registry)
    assert result(d) == 3


def test_whenReady(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    whenReady fires once no worker is starting.
    """
    reactor, pool = makePool()
    d = pool.whenReady()
    noResult(d)
    reactor.workers[0].ready()
    noResult(d)
    reactor.workers[1].ready()
    assert result(d) is None


def test_callsGoOnlyToIdleWorkers(
    ready: tuple[FakeProcessReactor, ProcessPool],
) -> None:
    """
    Each worker has at most one call; extra calls queue in the parent, and a
    call never waits behind a long one while another worker is idle.
    """
    reactor, pool = ready
    long = pool.submit("hang")
    short = pool.submit("add", [2, 3])
    busy = [w for w in reactor.workers if w.calls]
    assert len(busy) == 2, "the second call went to the other, idle worker"
    third = pool.submit("add", [1, 1])
    assert pool.stats()["queued"] == 1
    shortWorker = next(w for w in busy if w.calls[0]["task"] == "add")
    shortWorker.reply(5)
    assert result(short) == 5
    assert shortWorker.calls[0]["args"] == [1, 1], "the freed worker took it"
    shortWorker.reply(2)
    assert result(third) == 2
    noResult(long)
    assert pool.stats()["workers"] == {"size": 2, "idle": 1, "busy": 1, "starting": 0}


def test_unknownTaskAndBadArguments(
    ready: tuple[FakeProcessReactor, ProcessPool],
) -> None:
    """
    An unknown name fails with MethodNotFound and arguments that do not fit
    the signature with InvalidParams, before any worker is used.
    """
    reactor, pool = ready
    assert isinstance(failure(pool.submit("nope"), MethodNotFound), MethodNotFound)
    bad = failure(pool.submit("add", [1]), InvalidParams)
    assert "missing a required argument: 'b'" in str(bad.data)
    failure(pool.submit("add", [1, 2], {"c": 3}), InvalidParams)
    assert all(not w.calls for w in reactor.workers)


def test_overloaded() -> None:
    """
    Past maxQueue waiting calls, a call fails at once with Overloaded
    carrying a retry-after hint; nothing queues without bound.
    """
    reactor, pool = makePool(size=1, maxQueue=2)
    reactor.readyAll()
    running = pool.submit("add", [0, 0])
    queued = [pool.submit("add", [i, i]) for i in range(2)]
    error = failure(pool.submit("add", [9, 9]), Overloaded)
    assert error.data["retryAfter"] > 0
    reactor.runAllCalls(pool.registry)
    assert [result(d) for d in [running, *queued]] == [0, 0, 2]


def test_deadlineStartsAtDispatch() -> None:
    """
    A task's deadline counts from dispatch to a ready worker, never from
    worker boot; past it the worker is SIGKILLed, the caller gets TimedOut,
    and a replacement is spawned.
    """
    reactor, pool = makePool(size=1)
    d = pool.submit("hang")  # @task(timeout=0.5)
    reactor.advance(5)
    noResult(d)
    worker = reactor.workers[0]
    worker.ready()
    reactor.advance(0.4)
    noResult(d)
    reactor.advance(0.1)
    error = failure(d, TimedOut)
    assert error.data == {"timeout": 0.5}
    assert worker.killed
    assert pool.stats()["workers"]["busy"] == 0
    worker.reap()
    assert len(reactor.alive) == 1 and reactor.alive[0] is not worker
    # A late answer from the killed worker is ignored.
    assert pool.stats()["failed"] == 1


def test_timeoutPolicy(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    A per-call timeout wins over the task's, which wins over the default.
    """
    reactor, pool = ready
    d1 = pool.submit("hang", timeout=2.0)
    d2 = pool.submit("add", [1, 2])
    reactor.advance(1.0)
    noResult(d1)
    noResult(d2)
    reactor.advance(1.0)
    assert failure(d1, TimedOut).data == {"timeout": 2.0}
    reactor.advance(8.0)
    assert failure(d2, TimedOut).data == {"timeout": 10.0}


def test_workerDiesMidTask(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    A worker that dies while running a call answers it with WorkerLost
    (naming the signal), is replaced, and never gets another call.
    """
    reactor, pool = ready
    d = pool.submit("crash")
    worker = next(w for w in reactor.workers if w.calls)
    worker.exit(signal=9)
    sent = len(worker.messages)
    error = failure(d, WorkerLost)
    assert error.data == {"signal": 9}
    assert len(reactor.workers) == 3
    reactor.readyAll()
    d2 = pool.submit("add", [1, 1])
    d3 = pool.submit("add", [2, 2])
    assert len(worker.messages) == sent, "the dead worker got nothing more"
    reactor.runAllCalls(pool.registry)
    assert (result(d2), result(d3)) == (2, 4)
    assert pool.stats()["restarts"] == 1


def test_workerExitCode(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    WorkerLost names the exit code of a worker that exited on its own.
    """
    reactor, pool = ready
    d = pool.submit("crash")
    next(w for w in reactor.workers if w.calls).exit(7)
    assert failure(d, WorkerLost).data == {"exitCode": 7}


def test_idleWorkerExitIsReplaced(
    ready: tuple[FakeProcessReactor, ProcessPool],
) -> None:
    """
    An idle worker that exits is replaced and no call is lost.
    """
    reactor, pool = ready
    reactor.workers[0].exit(1)
    assert len(reactor.alive) == 2
    reactor.readyAll()
    assert pool.stats()["workers"]["idle"] == 2


def test_cancelQueued() -> None:
    """
    Cancelling a queued call removes it: it is never dispatched, and fails
    once with CancelledError.
    """
    reactor, pool = makePool(size=1)
    d = pool.submit("add", [1, 2])
    d.cancel()
    failure(d, CancelledError)
    reactor.readyAll()
    assert reactor.workers[0].calls == []
    assert pool.stats()["queued"] == 0


def test_cancelRunning(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    Cancelling a running call kills its worker; the caller gets exactly one
    CancelledError, a late result is ignored, the worker is replaced.
    """
    reactor, pool = ready
    d = pool.submit("hang")
    worker = next(w for w in reactor.workers if w.calls)
    d.cancel()
    failure(d, CancelledError)
    assert worker.killed
    worker.reply(None)  # arrives after the kill: ignored
    worker.reap()
    assert len(reactor.alive) == 2
    assert pool.stats()["completed"] == 0


def test_startupFailureBacksOff() -> None:
    """
    Workers that exit before they are ready are restarted with exponential
    backoff, not in a tight loop.
    """
    reactor, pool = makePool(size=1)
    reactor.workers[0].exit(3)
    assert len(reactor.workers) == 1, "no immediate respawn"
    reactor.advance(0.1)
    assert len(reactor.workers) == 2
    reactor.workers[1].exit(3)
    reactor.advance(0.1)
    assert len(reactor.workers) == 2
    reactor.advance(0.1)
    assert len(reactor.workers) == 3
    reactor.workers[2].ready()
    reactor.workers[2].exit(1)
    assert len(reactor.workers) == 4, "a ready worker's exit resets the backoff"
    reactor.advance(0)
    pool.stopService()


def test_progress(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    Progress frames reach the call's onProgress in order; none after the
    call has ended.
    """
    reactor, pool = ready
    updates: list[dict[str, Any]] = []
    d = pool.submit("count", [3], onProgress=updates.append)
    reactor.runAllCalls(pool.registry)
    assert result(d) == 3
    assert updates == [{"done": i, "total": 3} for i in (1, 2, 3)]


def test_taskError(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    An exception in the task becomes TaskFailed with its type and message,
    and the worker stays in service.
    """
    reactor, pool = ready
    d = pool.submit("add", [1, "x"])
    reactor.runAllCalls(pool.registry)
    error = failure(d, TaskFailed)
    assert error.remoteType == "TypeError"
    assert "unsupported operand" in error.remoteMessage
    assert "traceback" not in error.data
    assert pool.stats()["workers"]["idle"] == 2


def test_tracebacksOnRequest() -> None:
    """
    With includeTracebacks, the worker is asked for the traceback.
    """
    reactor, pool = makePool(includeTracebacks=True)
    reactor.readyAll()
    d = pool.submit("add", [1, "x"])
    assert next(w for w in reactor.workers if w.calls).calls[0]["tb"] is True
    reactor.runAllCalls(pool.registry)
    assert "Traceback" in failure(d, TaskFailed).data["traceback"]


def test_workerOutputIsLogged(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    Lines a task prints on stdout and stderr are logged with the worker's id;
    a partial line is logged when the worker exits.
    """
    reactor, pool = ready
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        worker = reactor.workers[0]
        worker.output(b"hello\nwor")
        worker.output(b"ld\n")
        worker.output(b"oops\n", childFD=2)
        worker.output(b"partial")
        worker.exit(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [(e["log_level"].name, e["line"]) for e in events if "line" in e]
    assert lines == [
        ("info", "hello"),
        ("info", "world"),
        ("warn", "oops"),
        ("info", "partial"),
    ]
    assert all(e["workerID"] == worker.protocol.workerID for e in events if "line" in e)


def test_stopDrains(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    Stopping refuses new calls, lets running and queued calls finish, then
    closes every worker's command pipe and fires when all have exited.
    """
    reactor, pool = ready
    running = [pool.submit("add", [i, i]) for i in range(3)]
    stopped = pool.stopService()
    failure(pool.submit("add", [1, 1]), Unavailable)
    noResult(stopped)
    reactor.runAllCalls(pool.registry)
    assert [result(d) for d in running] == [0, 2, 4]
    assert all(w.closed for w in reactor.workers)
    noResult(stopped)
    reactor.reapAll()
    assert result(stopped) is None
    assert reactor.alive == []
    assert reactor.getDelayedCalls() == []


def test_stopTimeout() -> None:
    """
    Past the shutdown timeout, calls still running are killed (WorkerLost)
    and queued ones fail with Unavailable; stop still completes.
    """
    reactor, pool = makePool(size=1, shutdownTimeout=3.0)
    reactor.readyAll()
    running = pool.submit("hang", timeout=60)
    queued = pool.submit("add", [1, 1])
    stopped = pool.stopService()
    reactor.advance(3.0)
    failure(queued, Unavailable)
    assert reactor.workers[0].killed
    reactor.reapAll()
    failure(running, WorkerLost)
    assert result(stopped) is None
    assert reactor.getDelayedCalls() == []


def test_stopKillsStragglers(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    A worker that does not exit after its pipe is closed is SIGKILLed.
    """
    reactor, pool = ready
    stopped = pool.stopService()
    noResult(stopped)
    reactor.advance(5.0)
    assert all(w.killed for w in reactor.workers)
    reactor.reapAll()
    assert result(stopped) is None


def test_deferToProcess(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    deferToProcess takes the @task function itself or its registered name;
    functions that are not tasks of this pool are refused.
    """
    reactor, pool = ready
    d1 = pool.deferToProcess(pooltasks.add, 1, 2)
    d2 = pool.deferToProcess("renamed.task")
    d3 = pool.deferToProcess(pooltasks.add, a=5, b=5)
    reactor.runAllCalls(pool.registry)
    assert (result(d1), result(d2), result(d3)) == (3, "renamed", 10)
    failure(pool.deferToProcess(len), MethodNotFound)
    failure(pool.deferToProcess(echo, 1), MethodNotFound)


def test_dropQueued() -> None:
    """
    dropQueued forgets only the owner's queued calls; running calls and
    other owners' calls carry on.
    """
    reactor, pool = makePool(size=1)
    reactor.readyAll()
    mine, theirs = object(), object()
    running = pool.submit("add", [1, 1], owner=mine)
    queued = pool.submit("add", [2, 2], owner=mine)
    other = pool.submit("add", [3, 3], owner=theirs)
    assert pool.dropQueued(mine) == 1
    failure(queued, CancelledError)
    reactor.runAllCalls(pool.registry)
    assert (result(running), result(other)) == (2, 6)


def test_workerStates(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    Workers move STARTING -> IDLE -> BUSY -> IDLE and end DEAD; illegal
    transitions raise.
    """
    reactor, pool = ready
    protocol = reactor.workers[0].protocol
    assert protocol.state is WorkerState.IDLE
    with pytest.raises(RuntimeError):
        protocol.setState(WorkerState.STARTING)
    reactor.workers[0].exit(0)
    assert protocol.state is WorkerState.DEAD


def test_notRunning() -> None:
    """
    A pool that is not started refuses calls with Unavailable.
    """
    pool = ProcessPool(FakeProcessReactor(), ["tests.pooltasks"], size=1)
    failure(pool.submit("add", [1, 2]), Unavailable)


def test_reactorMustSpawnProcesses() -> None:
    """
    The reactor is checked for what the pool needs.
    """
    with pytest.raises(TypeError):
        ProcessPool(object(), size=1)


def test_drainReplacesWorkersThatDie() -> None:
    """
    While draining, a worker that dies is still replaced so that the calls
    still queued get to run; stop completes after they have.
    """
    reactor, pool = makePool(size=1)
    reactor.readyAll()
    first = pool.submit("add", [1, 1])
    queued = pool.submit("add", [2, 2])
    stopped = pool.stopService()
    reactor.workers[0].exit(signal=15)
    failure(first, WorkerLost)
    assert len(reactor.alive) == 1, "a replacement was started during the drain"
    reactor.readyAll()
    reactor.runAllCalls(pool.registry)
    assert result(queued) == 4
    reactor.reapAll()
    assert result(stopped) is None
    assert reactor.alive == []
