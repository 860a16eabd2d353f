"""
Unit tests of the process pool's logic, on the in-memory FakeProcessReactor
(no processes, no real time).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from taskservice.errors import (
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TimedOut,
    TooLarge,
    Unavailable,
    WorkerLost,
)
from taskservice.examples import echo
from taskservice.pool import ProcessPool, WorkerState
from taskservice.testing import FakeProcessReactor
from taskservice.wire import NO_OPTIONS, CallOptions
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
    workers = pool.stats()["workers"]
    assert (workers["idle"], workers["busy"], workers["starting"]) == (1, 1, 0)


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


def test_callOptionsCarryTheTimeout(
    ready: tuple[FakeProcessReactor, ProcessPool],
) -> None:
    """
    A call's L{CallOptions} set its deadline as C{timeout=} does, and
    L{NO_OPTIONS} leaves the task's own.
    """
    reactor, pool = ready
    d1 = pool.submit("hang", options=CallOptions(timeout=2.0))
    d2 = pool.submit("add", [1, 2], options=NO_OPTIONS)
    reactor.advance(2.0)
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
    assert pool.stats()["restartsByCause"] == {"crash": 1}


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


def test_workerNotReadyInTimeIsKilledAndStartedAgain() -> None:
    """
    A worker that has not said it is ready within C{startTimeout} (a task
    module's import hangs) is killed, logged and counted, and started again
    with the back-off of a worker that exits before it is ready; a ready
    worker's start timer is gone.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, pool = makePool(size=2, startTimeout=5.0)
        hung, fine = reactor.workers
        hungPid = hung.pid
        fine.ready()
        reactor.advance(4.9)
        assert hung.transport.signals == []
        reactor.advance(0.1)
        assert hung.transport.signals == ["KILL"]
        assert fine.transport.signals == []
        hung.reap()
        assert len(reactor.workers) == 2, "started again after a back-off"
        reactor.advance(0.1)
        assert len(reactor.workers) == 3
        reactor.workers[2].ready()
        assert result(pool.whenReady()) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert pool.workerExits == {"not_ready": 1}
    assert pool.stats()["workers"]["idle"] == 2
    assert reactor.getDelayedCalls() == []
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert errors[0] == (
        f"worker {hung.protocol.workerID} (pid {hungPid}) not ready after 5s"
        " (a task module's import hangs?); killing it"
    )
    assert errors[1].startswith(f"worker {hung.protocol.workerID} exited before")
    pool.stopService()


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


def test_coroutineCallsShareAWorker() -> None:
    """
    Coroutine calls are packed onto a worker up to C{concurrency} at a time,
    leaving the other worker idle for plain calls; a plain call never joins
    a worker running anything else.
    """
    reactor, pool = makePool(size=2, concurrency=3)
    reactor.readyAll()
    naps = [pool.submit("nap", [0]) for _ in range(4)]
    loads = sorted(len(w.calls) for w in reactor.workers)
    assert loads == [1, 3], "three packed on one worker, the fourth on the other"
    plain = pool.submit("add", [1, 2])
    assert pool.stats()["queued"] == 1, "no worker is free of other calls"
    lightest = min(reactor.workers, key=lambda w: len(w.calls))
    lightest.reply(1)
    assert lightest.calls[0]["task"] == "add"
    reactor.runAllCalls(pool.registry)
    assert result(plain) == 3
    assert all(isinstance(result(d), int) for d in naps)


def test_queuedCallsKeepTheirOrder() -> None:
    """
    The queue is FIFO across kinds: a coroutine call behind a waiting plain
    call does not overtake it.
    """
    reactor, pool = makePool(size=1, concurrency=5)
    reactor.readyAll()
    first = pool.submit("nap", [1])
    plain = pool.submit("add", [1, 1])
    later = pool.submit("nap", [1])
    worker = reactor.workers[0]
    assert [c["task"] for c in worker.calls] == ["nap"]
    worker.reply(1)
    assert [c["task"] for c in worker.calls] == ["add"]
    worker.reply(2)
    assert [c["task"] for c in worker.calls] == ["nap"]
    worker.reply(1)
    assert (result(first), result(plain), result(later)) == (1, 2, 1)


def test_cancelledHeadLetsTheNextCallGo() -> None:
    """
    Calls wait in order behind the first queued one; when that one is
    cancelled, the next is dispatched at once if it can run (here a
    coroutine call joining the worker's other coroutine calls).
    """
    reactor, pool = makePool(size=1, concurrency=3)
    reactor.readyAll()
    pool.submit("nap", [0])
    plain = pool.submit("add", [1, 2])
    later = pool.submit("nap", [0])
    [worker] = reactor.workers
    assert len(worker.calls) == 1 and pool.stats()["queued"] == 2
    plain.cancel()
    failure(plain, CancelledError)
    assert len(worker.calls) == 2, "the coroutine call behind it was dispatched"
    assert pool.stats()["queued"] == 0
    assert not later.called


def test_droppedQueuedCallsLetTheNextGo() -> None:
    """
    The same when a connection's queued calls are dropped.
    """
    reactor, pool = makePool(size=1, concurrency=3)
    reactor.readyAll()
    pool.submit("nap", [0])
    owner = object()
    pool.submit("add", [1, 2], owner=owner)
    pool.submit("nap", [0])
    [worker] = reactor.workers
    assert pool.dropQueued(owner) == 1
    assert len(worker.calls) == 2
    assert pool.stats()["queued"] == 0


def test_coroutineTimeoutCancelsInTheWorker() -> None:
    """
    A coroutine call past its deadline is cancelled inside its worker (the
    other calls there carry on); its slot is freed when the worker
    acknowledges.
    """
    reactor, pool = makePool(size=1, concurrency=5)
    reactor.readyAll()
    slow = pool.submit("nap", [60], timeout=1.0)
    other = pool.submit("nap", [0], timeout=5.0)
    worker = reactor.workers[0]
    reactor.advance(1.0)
    failure(slow, TimedOut)
    assert not worker.killed
    assert worker.cancelled == [1]
    assert pool.stats()["running"] == 2, "the slot is held until acknowledged"
    worker.acknowledgeCancel(1)
    assert pool.stats()["running"] == 1
    worker.reply(1)
    assert result(other) == 1
    assert reactor.getDelayedCalls() == []


def test_coroutineCancelUnacknowledgedKillsTheWorker() -> None:
    """
    A worker that does not acknowledge a cancel within the grace period (its
    event loop is stuck) is killed; its other calls get WorkerLost.
    """
    reactor, pool = makePool(size=1, concurrency=5)
    reactor.readyAll()
    stuck = pool.submit("nap", [60])
    other = pool.submit("nap", [60])
    stuck.cancel()
    failure(stuck, CancelledError)
    worker = reactor.workers[0]
    assert worker.cancelled == [1]
    reactor.advance(2.0)
    assert worker.killed
    worker.reap()
    failure(other, WorkerLost)
    assert pool.stats()["restartsByCause"] == {"unresponsive": 1}


def test_recyclingStartsTheSuccessorEarly() -> None:
    """
    With maxTasksPerChild, the successor is started before the worker
    retires, so a ready worker is always there; the old one is closed
    gracefully after its last call.
    """
    reactor, pool = makePool(size=1, maxTasksPerChild=10)
    reactor.readyAll()
    old = reactor.workers[0]
    for i in range(8):
        d = pool.submit("add", [i, 0])
        reactor.runAllCalls(pool.registry)
        assert result(d) == i
    assert len(reactor.workers) == 1
    d = pool.submit("add", [8, 0])
    reactor.runAllCalls(pool.registry)
    assert len(reactor.workers) == 2, "successor started at 90%"
    successor = reactor.workers[1]
    successor.ready()
    d = pool.submit("add", [9, 0])
    # Either worker may take it; drive both.
    reactor.runAllCalls(pool.registry)
    assert result(d) == 9
    calls = [pool.submit("add", [1, 1]) for _ in range(3)]
    reactor.runAllCalls(pool.registry)
    assert all(result(c) == 2 for c in calls)
    assert old.closed and not old.killed
    old.reap()
    assert reactor.alive == [successor]
    assert pool.stats()["restartsByCause"] == {"recycled": 1}


def test_recyclingNeverStalls() -> None:
    """
    A worker past maxTasksPerChild whose successor is still starting serves
    on (no call waits for a worker to boot) and retires the moment the
    successor is ready.
    """
    reactor, pool = makePool(size=1, maxTasksPerChild=2)
    reactor.readyAll()
    old = reactor.workers[0]
    for i in range(5):
        d = pool.submit("add", [i, 0])
        assert old.calls, f"call {i} went to the old worker at once"
        reactor.runAllCalls(pool.registry)
        assert result(d) == i
    assert len(reactor.workers) == 2, "one successor, not one per call"
    assert not old.closed
    reactor.workers[1].ready()
    assert reactor.workers[0].closed, "retired once its successor is ready"
    d = pool.submit("add", [1, 1])
    assert reactor.workers[1].calls
    reactor.runAllCalls(pool.registry)
    assert result(d) == 2


def test_memoryCapRecycles() -> None:
    """
    A worker whose memory passes maxMemory after a call is retired and
    replaced; its caller still gets the result.
    """
    usage = {"rss": 10}
    reactor = FakeProcessReactor()
    pool = ProcessPool(
        reactor,
        ["tests.pooltasks"],
        size=1,
        maxMemory=100,
        memoryOf=lambda pid: usage["rss"],
    )
    pool.startService()
    reactor.readyAll()
    d = pool.submit("add", [1, 1])
    reactor.runAllCalls(pool.registry)
    assert result(d) == 2
    assert len(reactor.workers) == 1
    usage["rss"] = 101
    d = pool.submit("add", [2, 2])
    reactor.runAllCalls(pool.registry)
    assert result(d) == 4
    assert len(reactor.workers) == 2, "a successor is starting"
    old, successor = reactor.workers
    d = pool.submit("add", [3, 3])
    assert old.calls, "the old worker serves on until its successor is ready"
    reactor.runAllCalls(pool.registry)
    assert result(d) == 6
    successor.ready()
    assert old.closed and not old.killed
    assert pool.stats()["restartsByCause"] == {"memory": 1}


def test_crashLoopBacksOff() -> None:
    """
    A task that kills its worker again and again does not make the pool
    respawn in a tight loop: past twice the pool size in the crash window,
    replacements are delayed, and other calls still get served by the
    workers that remain.
    """
    reactor, pool = makePool(size=2)
    reactor.readyAll()
    for _ in range(4):
        d = pool.submit("crash")
        next(w for w in reactor.alive if w.calls).exit(1)
        failure(d, WorkerLost)
        reactor.readyAll()
    assert len(reactor.alive) == 2, "the first crashes are replaced at once"
    d = pool.submit("crash")
    next(w for w in reactor.alive if w.calls).exit(1)
    failure(d, WorkerLost)
    assert len(reactor.alive) == 1, "the next replacement waits"
    ok = pool.submit("add", [1, 1])
    reactor.runAllCalls(pool.registry)
    assert result(ok) == 2, "the remaining worker keeps serving"
    reactor.advance(0.1)
    assert len(reactor.alive) == 2


def test_perCallTimeoutCap(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    A caller may ask for its own deadline, up to maxTimeout; beyond it, or
    not positive, the call is refused with InvalidRequest.
    """
    reactor, pool = ready
    failure(pool.submit("add", [1, 1], timeout=10_000), InvalidRequest)
    failure(pool.submit("add", [1, 1], timeout=0), InvalidRequest)
    d = pool.submit("add", [1, 1], timeout=3600)
    reactor.runAllCalls(pool.registry)
    assert result(d) == 2


def test_resultTooLarge(ready: tuple[FakeProcessReactor, ProcessPool]) -> None:
    """
    A worker's too-large report becomes TooLarge with the limit.
    """
    reactor, pool = ready
    d = pool.submit("big", [10])
    worker = next(w for w in reactor.workers if w.calls)
    worker.send(
        {
            "op": "error",
            "cid": worker.calls.pop()["cid"],
            "code": "too_large",
            "error": {"type": "TooLarge", "message": "the result is 99 bytes"},
        }
    )
    error = failure(d, TooLarge)
    assert error.data == {"limit": pool.maxResult}


def test_retryAfterFollowsThroughput() -> None:
    """
    The overloaded hint estimates how long the queue takes to drain at the
    rate calls have been completing.
    """
    reactor, pool = makePool(size=1, maxQueue=5)
    reactor.readyAll()
    for _ in range(10):
        d = pool.submit("add", [1, 1])
        reactor.advance(0.1)
        reactor.runAllCalls(pool.registry)
        result(d)
    pool.submit("hang", timeout=60)
    for _ in range(5):
        pool.submit("add", [1, 1])
    error = failure(pool.submit("add", [1, 1]), Overloaded)
    assert error.data["retryAfter"] == 0.5
    pool.stopService()
    reactor.advance(30)
    reactor.reapAll()


def _teachShort(reactor: FakeProcessReactor, pool: ProcessPool, name: str) -> None:
    """
    Run enough calls of C{name} instantly for the pool to measure it short.
    """
    for _ in range(5):
        d = pool.submit(name, [1, 1])
        reactor.runAllCalls(pool.registry)
        result(d)
    assert pool.isShort(name)


def test_shortCallsArePipelined() -> None:
    """
    With no idle worker, calls of a task measured to be short wait in the
    pipes of busy workers running only short calls (up to C{pipeline} per
    worker); the rest queue in the parent. All are answered, in order.
    """
    reactor, pool = makePool(size=2, pipeline=3)
    reactor.readyAll()
    _teachShort(reactor, pool, "add")
    calls = [pool.submit("add", [i, 0]) for i in range(8)]
    assert sorted(len(w.calls) for w in reactor.alive) == [3, 3]
    assert pool.stats()["queued"] == 2
    reactor.runAllCalls(pool.registry)
    assert [result(d) for d in calls] == list(range(8))


def test_noCallWaitsBehindALongOne() -> None:
    """
    A worker running a call not known to be short takes nothing more, and
    calls of unmeasured tasks are never pipelined.
    """
    reactor, pool = makePool(size=1, pipeline=4)
    reactor.readyAll()
    _teachShort(reactor, pool, "add")
    long = pool.submit("hang", timeout=60)
    short = pool.submit("add", [1, 1])
    worker = reactor.workers[0]
    assert [c["task"] for c in worker.calls] == ["hang"]
    assert pool.stats()["queued"] == 1
    worker.reply(None)
    assert result(long) is None
    worker.runCalls(pool.registry)
    assert result(short) == 2
    assert not pool.isShort("hang")


def test_cancelAPipelinedCall() -> None:
    """
    Cancelling a short call waiting in a worker's pipe asks the worker to
    skip it: no worker is killed, the caller gets one CancelledError, the
    calls around it are answered.
    """
    reactor, pool = makePool(size=1, pipeline=4)
    reactor.readyAll()
    _teachShort(reactor, pool, "add")
    first, second, third = (pool.submit("add", [i, 1]) for i in range(3))
    worker = reactor.workers[0]
    assert len(worker.calls) == 3
    second.cancel()
    failure(second, CancelledError)
    assert not worker.killed
    assert worker.cancelled == [worker.calls[1]["cid"]]
    reactor.runAllCalls(pool.registry)
    assert (result(first), result(third)) == (1, 3)
    assert pool.stats()["running"] == 0
    assert pool.stats()["restartsByCause"] == {}
    assert reactor.getDelayedCalls() == []


def test_pipelinedCallThatHangsIsKilled() -> None:
    """
    A short task's call past its deadline is answered TimedOut at once;
    if the worker does not answer the cancel within the grace period (the
    call really hangs), the worker is killed and the calls behind it get
    WorkerLost.
    """
    reactor, pool = makePool(size=1, pipeline=4)
    reactor.readyAll()
    _teachShort(reactor, pool, "add")
    stuck = pool.submit("add", [1, 1], timeout=1.0)
    behind = pool.submit("add", [2, 2], timeout=10.0)
    worker = reactor.workers[0]
    reactor.advance(1.0)
    failure(stuck, TimedOut)
    assert worker.transport.signals == [], "not killed yet: asked to cancel"
    reactor.advance(2.0)
    assert worker.transport.signals == ["KILL"]
    worker.reap()
    failure(behind, WorkerLost)
