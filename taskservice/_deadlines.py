"""
Deadlines and cancellation of calls.

A call's deadline starts when it is sent to a worker. One timer per pool
watches them all, not one per call: it is set for the earliest deadline of
the calls running (set again only when a call with an earlier one is
dispatched), and when it fires it sweeps the running calls, times out
those whose deadline has come (in deadline order, then dispatch order)
and is set for the earliest deadline left, if any. A call that ends
meanwhile costs the timer nothing. At the deadline, or
when the caller cancels, the caller gets its outcome at once
(L{taskservice.errors.TimedOut}, C{CancelledError}) and the call is
stopped in its worker: a plain call's worker is killed; a coroutine call,
or a short call waiting in (or running from) a worker's pipe, is cancelled
in the worker, which is killed if it has not answered within a grace
period. A queued call that is cancelled simply leaves the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError

from taskservice._call import Call, CallState, Outcome, poolLog
from taskservice._workerproc import WorkerProcess, WorkerState
from taskservice.errors import TimedOut

CANCEL_GRACE = 2.0


class Deadlines:
    """
    Ends calls whose deadline passed or whose caller cancelled, and stops
    them in their workers.

    @param kill: kills a worker to stop a call, with the cause to count.
    @param unqueue: takes a queued call out of the queue.
    @param running: the calls that workers hold, in dispatch order.
    """

    def __init__(
        self,
        reactor: Any,
        kill: Callable[[WorkerProcess, str], object],
        unqueue: Callable[[Call], object],
        running: Callable[[], Iterable[Call]],
    ) -> None:
        self.reactor = reactor
        self._kill = kill
        self._unqueue = unqueue
        self._running = running
        self._timer: Any = None
        self._timerAt = 0.0
        self._armed = 0

    def arm(self, call: Call) -> None:
        """
        C{call} was just sent to its worker: its deadline starts.
        """
        deadline = call.deadline = call.startedAt + call.timeout  # type: ignore[operator]
        self._armed += 1
        if self._timer is None or deadline < self._timerAt:
            self._setTimer(deadline)

    def released(self, call: Call) -> None:
        """
        C{call}'s worker no longer holds it; with no call left running, the
        timer goes too.
        """
        if call.deadline:
            call.deadline = 0.0
            self._armed -= 1
            if not self._armed:
                self.stop()

    def releasedAll(self, answered: list[tuple[Call, bytes]]) -> None:
        """
        L{released} for each call of C{answered} (and L{Call.release}).
        """
        before = armed = self._armed
        for call, _ in answered:
            call.release()
            if call.deadline:
                call.deadline = 0.0
                armed -= 1
        self._armed = armed
        if not armed and armed != before:
            self.stop()

    def _setTimer(self, at: float) -> None:
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timerAt = at
        self._timer = self.reactor.callLater(
            max(0.0, at - self.reactor.seconds()), self._sweep
        )

    def stop(self) -> None:
        """
        Forget the timer (the pool has stopped).
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _sweep(self) -> None:
        """
        The timer fired: time out the running calls whose deadline has come
        and set it for the next deadline.
        """
        self._timer = None
        # (The timer's own time: the clock may read a hair before it.)
        now = max(self.reactor.seconds(), self._timerAt)
        due: list[Call] = []
        nextAt: float | None = None
        for call in self._running():
            if not call.deadline or call.outcome is not None:
                continue
            if call.deadline <= now:
                due.append(call)
            elif nextAt is None or call.deadline < nextAt:
                nextAt = call.deadline
        due.sort(key=lambda c: c.deadline)
        for call in due:
            if call.outcome is None:
                self.timedOut(call)
        if nextAt is not None and (self._timer is None or nextAt < self._timerAt):
            # (A call dispatched meanwhile, by an outcome told above, may
            # have set the timer already, for a later deadline.)
            self._setTimer(nextAt)

    def timedOut(self, call: Call) -> None:
        """
        C{call}'s deadline passed.
        """
        worker = call.worker
        poolLog.warn(
            "task {task} (call {cid}) passed its {timeout}s deadline"
            " in worker {workerID}",
            task=call.task,
            cid=call.cid,
            timeout=call.timeout,
            workerID=worker.workerID if worker else None,
            pid=worker.pid if worker else None,
        )
        call.complete(Outcome.failure(TimedOut("timed out", {"timeout": call.timeout})))
        self._stop(call, "timeout")

    def cancel(self, call: Call) -> None:
        """
        The canceller of a call's Deferred (which thus fails with
        C{CancelledError}, shown on the wire as "cancelled").
        """
        if call.state is CallState.QUEUED:
            self._unqueue(call)
            call.complete(Outcome.failure(CancelledError()))
            return
        call.complete(Outcome.failure(CancelledError()))
        worker = call.worker
        if worker is None:
            return
        poolLog.info(
            "call {cid} ({task}) cancelled while running in worker {workerID}",
            cid=call.cid,
            task=call.task,
            workerID=worker.workerID,
            pid=worker.pid,
        )
        self._stop(call, "cancel")

    def _stop(self, call: Call, cause: str) -> None:
        """
        Stop a running call whose caller has had its outcome: kill a plain
        call's worker; ask the worker to cancel a coroutine call, or to skip
        a short call still waiting in its pipe (one already running is let
        finish: it is short), and kill it if it does not answer within a
        grace period.
        """
        worker = call.worker
        if worker is None or worker.state is WorkerState.DEAD:
            return
        assert call.spec is not None
        if call.spec.isAsync or worker.shortOnly:
            worker.send({"op": "cancel", "cid": call.cid})
            call.timer = self.reactor.callLater(
                CANCEL_GRACE, self._unresponsive, worker, call
            )
        else:
            self._kill(worker, cause)

    def _unresponsive(self, worker: WorkerProcess, call: Call) -> None:
        call.timer = None
        if worker.calls.get(call.cid) is call and worker.state is not WorkerState.DEAD:
            poolLog.warn(
                "worker {workerID} did not cancel call {cid} ({task}) within"
                " {grace}s; killing it",
                workerID=worker.workerID,
                pid=worker.pid,
                cid=call.cid,
                task=call.task,
                grace=CANCEL_GRACE,
            )
            self._kill(worker, "unresponsive")
