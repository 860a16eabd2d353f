"""
Running calls: the queue in front of the workers, dispatch to the workers
that L{taskservice._placement} chooses, the workers' answers, and the end
of every call (counted, and told to every observer, in one place:
L{Scheduler.callEnded}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed

from taskservice._admission import Admission
from taskservice._call import (
    FAILED,
    Call,
    CallListener,
    CallObserver,
    CallState,
    Outcome,
    RawOutcome,
    poolLog,
)
from taskservice._callrecords import FOLD_AT, CallRecords
from taskservice._deadlines import Deadlines
from taskservice._placement import Placement
from taskservice._queue import CallQueue, FifoQueue
from taskservice._recentcalls import FAILURE_OUTCOMES, RecentCalls
from taskservice._supervisor import Supervisor
from taskservice._task import Registry
from taskservice._workerproc import WorkerProcess, WorkerState
from taskservice.errors import (
    InvalidParams,
    Overloaded,
    TaskFailed,
    TaskServiceError,
    TooLarge,
    Unavailable,
    WorkerLost,
)


class Scheduler(Admission):
    """
    Places queued calls on workers and delivers their outcomes.

    @ivar completed: calls that returned a result.
    @ivar failed: calls that ended in a task error, a too-large result, a
        deadline or a lost worker.
    @ivar observer: the pool's L{CallObserver}, or L{None}.
    @ivar listeners: the L{CallListener}s, told of every call's end.
    @ivar records: the ended calls not yet folded into their readers (the
        recent calls, and an observer that folds batches).
    @ivar recentCalls: the recent calls' times and failures, for C{$/stats}.
    """

    def __init__(
        self,
        reactor: Any,
        queue: CallQueue,
        placement: Placement,
        registry: Registry,
        *,
        defaultTimeout: float,
        maxTimeout: float,
        maxQueue: int,
        maxResult: int,
        includeTracebacks: bool,
    ) -> None:
        self.reactor = reactor
        self.queue = queue
        # A first-in first-out queue's calls, read directly on the hot path.
        self._fifo = queue.calls if type(queue) is FifoQueue else None
        self.placement = placement
        self.registry = registry
        self.defaultTimeout = defaultTimeout
        self.maxTimeout = maxTimeout
        self.maxQueue = maxQueue
        self._nextCallID = 1
        self.maxResult = maxResult
        self.includeTracebacks = includeTracebacks
        self.completed = 0
        self.failed = 0
        self.startedAt: float | None = None
        self.records = CallRecords()
        self.recentCalls = RecentCalls()
        self.records.readers.append(self.recentCalls)
        self._observer: CallObserver | None = None
        self._perCall: CallObserver | None = None
        self.listeners: list[CallListener] = []
        self._drainWaiters: list[Deferred[None]] = []
        # Set by the pool once the supervisor exists (it needs us first).
        self.supervisor: Supervisor = None  # type: ignore[assignment]
        self.deadlines = Deadlines(reactor, self._kill, self.unqueue, self._running)

    def _running(self) -> list[Call]:
        return [c for w in self.supervisor.workers for c in w.calls.values()]

    def _kill(self, worker: WorkerProcess, cause: str) -> None:
        self.supervisor.kill(worker, cause)

    # -- the end of every call ------------------------------------------------

    @property
    def observer(self) -> CallObserver | None:
        return self._observer

    @observer.setter
    def observer(self, observer: CallObserver | None) -> None:
        readers: list[Any] = self.records.readers
        if self._observer in readers:
            readers.remove(self._observer)
        self._observer = observer
        # An observer that folds batches of calls (the pool's metrics) is
        # told of them at once, when read; any other, call by call.
        folds = observer is not None and hasattr(observer, "callsFinished")
        if folds:
            readers.append(observer)
        self._perCall = None if folds else observer

    def callEnded(self, call: Call) -> None:
        """
        C{call} got its outcome (from L{Call.complete}): count it, and tell
        the observer and every listener.
        """
        outcome = call.outcome
        assert outcome is not None
        kind = outcome.kind
        startedAt = call.startedAt
        if kind == "ok":
            self.completed += 1
        elif kind in FAILED:
            self.failed += 1
        if startedAt is not None and kind not in FAILURE_OUTCOMES:
            # The common end (it ran, it did not fail): one tuple, folded
            # into the metrics and recent calls when they are read.
            pending = self.records.pending
            pending.append(
                (call.task, kind, call.queuedAt, startedAt, call.endedAt)  # type: ignore[arg-type]
            )
            if len(pending) >= FOLD_AT:
                self.records.fold()
            observer = self._perCall
            if observer is not None:
                observer.callFinished(
                    call.task, kind, call.queuedSeconds, call.runSeconds
                )
        else:
            # (What is pending first: every reader sees the calls in order.)
            self.records.fold()
            observer = self._observer
            if observer is not None:
                observer.callFinished(
                    call.task, kind, call.queuedSeconds, call.runSeconds
                )
            self.recentCalls.callEnded(call)
        for listener in self.listeners:
            listener.callEnded(call)

    # -- the queue -------------------------------------------------------------

    def enqueue(self, call: Call) -> None:
        """
        Queue an accepted call (placing it at once if it can be); refuse it
        as overloaded if it would have to wait in a full queue.
        """
        queue = self.queue
        waiting = self._fifo
        if waiting is not None and waiting:
            # The common case under load, first in first out: it goes last,
            # nothing can be placed before the calls ahead of it (the last
            # dispatch left them waiting), and nothing else has moved.
            if len(waiting) < self.maxQueue:
                waiting.append(call)
                return
        elif not len(queue):
            # Nothing waits: place it at once if a worker can take it.
            supervisor = self.supervisor
            worker = self.placement.workerFor(call, supervisor.workers, supervisor.idle)
            if worker is not None:
                self._run(worker, call, call.queuedAt or self.reactor.seconds())
                return
        queue.push(call)
        if queue.peek() is call:
            # It is next (first, or before the others in a queue that is not
            # FIFO). Otherwise the call that is next could not be placed at
            # the last dispatch (whatever frees a worker or removes a queued
            # call dispatches again), and this one, behind it, waits too.
            self.dispatch()
        if call.state is CallState.QUEUED and len(queue) > self.maxQueue:
            # It would have to wait, and the waiting room is full.
            queue.remove(call)
            call.queuedAt = None  # refused: it never waited
            call.complete(
                Outcome.failure(
                    Overloaded(
                        "overloaded",
                        {"retryAfter": self.retryAfter(), "queued": len(queue)},
                    )
                )
            )

    def unqueue(self, call: Call) -> None:
        self.queue.remove(call)
        self.dispatch()
        self.checkDrained()

    def dropQueued(self, owner: object) -> int:
        mine = self.queue.removeWhere(lambda call: call.owner is owner)
        for call in mine:
            call.complete(Outcome.failure(CancelledError()))
        if mine:
            self.dispatch()
            self.checkDrained()
        return len(mine)

    def refuseQueued(self) -> None:
        for call in self.queue.clear():
            call.complete(
                Outcome.failure(Unavailable("the pool stopped before this call ran"))
            )

    # -- dispatch --------------------------------------------------------------

    def dispatch(self) -> None:
        """
        Place queued calls, in queue order, while a worker can take the
        next one; the frames for one worker go to it in one write.
        """
        queue = self.queue
        if not len(queue):
            return
        supervisor = self.supervisor
        workers, idle = supervisor.workers, supervisor.idle
        workerFor = self.placement.workerFor
        now = self.reactor.seconds()
        fifo = self._fifo
        held: list[WorkerProcess] = []
        try:
            while True:
                if fifo is not None:
                    # (A FIFO queue's deque, read directly.)
                    if not fifo:
                        return
                    call = fifo[0]
                else:
                    found = queue.peek()
                    if found is None:
                        return
                    call = found
                worker = workerFor(call, workers, idle)
                if worker is None:
                    return
                if fifo is not None:
                    fifo.popleft()
                else:
                    queue.pop()
                if not worker.holding:
                    held.append(worker)
                self._run(worker, call, now, True)
        finally:
            for worker in held:
                worker.sendHeld()

    def _run(
        self, worker: WorkerProcess, call: Call, now: float, hold: bool = False
    ) -> None:
        """
        Send C{call} to C{worker} (C{hold}: keep its frame with the others
        of this dispatch, sent by C{worker.sendHeld}).
        """
        worker.assign(call, call.task in self.placement.short)
        try:
            # (A call of the lean lane holds only what was decoded from its
            # request line: encoded without the check dumps makes.)
            worker.sendCall(call, self.includeTracebacks, call.sink is not None, hold)
        except (TypeError, ValueError) as e:
            worker.take(call.cid, answered=False)
            # (What this dispatch placed before it goes first.)
            worker.sendHeld()
            self.supervisor.recycler.afterCall(worker)
            call.complete(
                Outcome.failure(InvalidParams("invalid params", f"not JSON: {e}"))
            )
            return
        call.state = CallState.RUNNING
        call.worker = worker
        call.startedAt = now
        self.deadlines.arm(call)

    # -- what workers say (SupervisorClient) -----------------------------------

    def workerReady(self, worker: WorkerProcess) -> None:
        self.dispatch()

    def callResults(
        self, worker: WorkerProcess, results: list[tuple[int, bytes]]
    ) -> None:
        """
        A worker's C{result} frames of one read, in order, each result still
        JSON: the common case, kept apart from L{callMessage}. The worker
        lets go of all of them first (measured, released, recycled if due),
        then each caller is told, then the queue is placed once.
        """
        if worker.state is WorkerState.DEAD:
            # A late answer from a killed worker: its callers have had (or
            # will get, when it exits) their one outcome.
            return
        now = self.reactor.seconds()
        blocking = worker.blocking
        answered = worker.takeAnswered(results)
        if not answered:
            return
        if blocking:
            self.placement.measureAll(worker, answered, now)
        self.deadlines.releasedAll(answered)
        self.supervisor.recycler.afterCall(worker)
        for call, raw in answered:
            if call.outcome is None:
                call.resultBytes = raw
                call.complete(RawOutcome.of(raw), now)
        if len(self.queue):
            self.dispatch()
        if self._drainWaiters:
            self.checkDrained()

    def callMessage(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in {"result", "error"}:
            if worker.state is WorkerState.DEAD:
                # A late answer from a killed worker: its callers have had
                # (or will get, when it exits) their one outcome.
                return
            blocking = worker.blocking
            call = worker.take(message.get("cid", -1))
            if call is None:
                return
            if blocking:
                self.placement.measure(worker, call, self.reactor.seconds())
            call.release()
            self.deadlines.released(call)
            self.supervisor.recycler.afterCall(worker)
            if call.outcome is None:
                if op == "result":
                    call.complete(Outcome("ok", message["result"]))
                else:
                    call.complete(Outcome.failure(self._taskError(message)))
            self.dispatch()
            if self._drainWaiters:
                self.checkDrained()
        elif op == "progress":
            call = worker.calls.get(message.get("cid", -1))
            if call is not None and call.outcome is None:
                if call.onProgress is not None:
                    call.onProgress(message["update"])
                elif call.sink is not None:
                    call.sink.callProgress(call, message["update"])

    def _taskError(self, message: dict[str, Any]) -> TaskServiceError:
        error = message.get("error", {})
        if message.get("code") == "too_large":
            return TooLarge(
                error.get("message", "too large"), {"limit": self.maxResult}
            )
        return TaskFailed(f"{error.get('type')}: {error.get('message')}", error)

    def workerLost(
        self, worker: WorkerProcess, calls: list[Call], how: dict[str, int]
    ) -> None:
        for call in calls:
            call.release()
            self.deadlines.released(call)
            if call.outcome is not None:
                continue
            poolLog.warn(
                "worker {workerID} (pid {pid}) died running {task} (call {cid}): {how}",
                workerID=worker.workerID,
                pid=worker.pid,
                task=call.task,
                cid=call.cid,
                how=how,
            )
            call.complete(Outcome.failure(WorkerLost("worker lost", how)))
        self.supervisor.checkReady()
        self.checkDrained()
        self.dispatch()

    # -- draining --------------------------------------------------------------

    def busy(self) -> int:
        return sum(1 for w in self.supervisor.workers if w.calls)

    def whenDrained(self) -> Deferred[None]:
        if not len(self.queue) and not self.busy():
            return succeed(None)
        d: Deferred[None] = Deferred(self._drainWaiters.remove)
        self._drainWaiters.append(d)
        return d

    def checkDrained(self) -> None:
        if self._drainWaiters and not len(self.queue) and not self.busy():
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)
