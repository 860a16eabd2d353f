"""
One call to the pool, from submission to its single outcome, and what the
pool tells observers about it.

Lifecycle (L{CallState})::

    QUEUED --dispatched--> RUNNING --answered--> DONE
      |                      |
      |                      +--deadline, cancel--> ABANDONED --released--> DONE
      |                      +--worker lost------------------------------> DONE
      +--cancelled, dropped, pool stopped, overloaded--> DONE

    (a call refused at submission is created, and completed, at once)

Every end goes through L{Call.complete}: it records the L{Outcome} and its
time, tells the pool (which counts it and tells every observer), and only
then tells the caller: its L{CallSink} (the lean lane a connection's
session uses: no L{Deferred} on the way) or the L{Deferred} made for it on
first use of L{Call.deferred}. A call whose caller has its outcome
while a worker still holds it (a deadline or cancel of a coroutine or
pipelined call, or a plain call whose worker was killed and has not yet
exited) is ABANDONED: whatever the worker answers later is dropped, and the
call is DONE when the worker lets it go (L{Call.release}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, NamedTuple, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json
from taskservice._task import TaskSpec
from taskservice.errors import TaskServiceError, outcomeOf

poolLog = Logger(namespace="taskservice.pool.ProcessPool")
"""The log of the pool's parts: their events keep the namespace they had
before the pool was split (log filters name it)."""

ProgressCallback = Callable[[dict[str, Any]], object]

FAILED = frozenset({"task_error", "too_large", "timeout", "worker_lost"})
"""The outcomes counted as C{failed} in the pool's stats."""


class CallState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ABANDONED = "abandoned"
    DONE = "done"


class Outcome(NamedTuple):
    """
    How a call ended: C{kind} is C{"ok"} (then C{value} is the task's
    result) or an error outcome of L{taskservice.errors.OUTCOMES} (then
    C{error} is the exception the caller gets).
    """

    kind: str
    value: Any = None
    error: BaseException | None = None

    @classmethod
    def ok(cls, value: Any) -> Outcome:
        return cls("ok", value)

    @classmethod
    def failure(cls, error: BaseException) -> Outcome:
        if isinstance(error, TaskServiceError):
            return cls(outcomeOf(error), None, error)
        if isinstance(error, CancelledError):
            return cls("cancelled", None, error)
        return cls("internal_error", None, error)


class RawOutcome(Outcome):
    """
    A result as the worker sent it: C{value} is decoded from its JSON
    (C{raw}) only when read, which the lean lane never does: it writes
    the bytes into the reply as they are.
    """

    __slots__ = ()

    @classmethod
    def of(cls, raw: bytes) -> RawOutcome:
        return tuple.__new__(cls, ("ok", raw, None))

    @property
    def raw(self) -> bytes:
        raw: bytes = tuple.__getitem__(self, 1)
        return raw

    @property
    def value(self) -> Any:
        return _json.loads(self.raw)


class CallObserver(Protocol):
    """
    What a pool tells about each call it answers (see
    L{taskservice.metrics.PoolMetrics}); set it as C{pool.observer}.
    """

    def callFinished(
        self,
        task: str,
        outcome: str,
        queuedSeconds: float | None,
        runSeconds: float | None,
    ) -> None:
        """
        A call got its one outcome. Called in the reactor thread, once per
        call, on the pool's hot path: keep it cheap and never raise.

        @param task: the registered task name; C{""} for a call naming no
            registered task (never a name taken from the network).
        @param outcome: C{"ok"}, or the error's outcome (see
            L{taskservice.errors.OUTCOMES}).
        @param queuedSeconds: from submission until a worker took the call
            (or, for a call that never ran, until its outcome); L{None} for
            a call refused at submission.
        @param runSeconds: from dispatch to a worker until the outcome;
            L{None} for a call that never ran.
        """


class CallListener(Protocol):
    """
    Hears everything about each call's end, at one point: the task, the
    call's arguments and options, its outcome (the result value or the
    error) and its timings. Add one with C{pool.addCallListener}; a job
    journal is one.
    """

    def callEnded(self, call: Call) -> None:
        """
        C{call} has just got its outcome (C{call.outcome}); its caller is
        told right after. Called in the reactor thread, once per call
        (refused calls included), on the pool's hot path: read what you
        need, keep no reference to the call, never raise.
        """


class CallSink(Protocol):
    """
    Who hears a call's end without a L{Deferred}: the lean lane of a
    connection's session (L{taskservice._session}).
    """

    def callDone(self, call: Call) -> None:
        """
        C{call} has its outcome (C{call.outcome}; for a result the worker
        sent, C{call.resultBytes} holds its JSON too).
        """

    def callProgress(self, call: Call, update: dict[str, Any]) -> None:
        """
        The task reported progress.
        """


class CallHost(Protocol):
    """
    Who keeps calls: its clock, and who hears each call's end first.
    """

    reactor: Any

    def callEnded(self, call: Call) -> None:
        """
        C{call} has just got its outcome (before its caller is told).
        """

    def cancelCall(self, call: Call) -> None:
        """
        The caller cancels C{call} (an accepted one).
        """


class Call:
    """
    One call, from submission to its single outcome.

    @ivar cid: the pool's call id (0 for a call refused at submission).
    @ivar task: the registered task name, or C{""} for a call naming none.
    @ivar spec: the task's policy (L{None} for a call naming no task).
    @ivar args: the positional arguments.
    @ivar kwargs: the keyword arguments.
    @ivar timeout: the deadline in seconds, from dispatch.
    @ivar owner: the caller's owner object (see C{ProcessPool.submit}).
    @ivar job: the durable job context sent to the worker, or L{None}.
    @ivar queuedAt: when it was accepted; L{None} if it never was (refused
        at submission, or overloaded).
    @ivar startedAt: when it was sent to a worker; L{None} if never.
    @ivar endedAt: when it got its outcome.
    @ivar outcome: its L{Outcome}, once it has one.
    @ivar worker: the worker holding it, while one does.
    @ivar deadline: when it times out (reactor time), once dispatched.
    @ivar sink: the L{CallSink} told of its end, or L{None} (then the
        L{Deferred} is).
    @ivar tag: the sink's note about the call (a request id).
    @ivar resultBytes: the result's JSON as the worker sent it, for a
        result that came from a worker (else L{None}).
    """

    __slots__ = (
        "_deferred",
        "_host",
        "args",
        "cid",
        "deadline",
        "endedAt",
        "job",
        "kwargs",
        "onProgress",
        "outcome",
        "owner",
        "queuedAt",
        "resultBytes",
        "sink",
        "spec",
        "startedAt",
        "state",
        "tag",
        "task",
        "timeout",
        "timer",
        "worker",
    )

    def __init__(
        self,
        host: CallHost,
        cid: int,
        task: str,
        spec: TaskSpec | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timeout: float,
        queuedAt: float | None,
        sink: CallSink | None = None,
        tag: Any = None,
        owner: object = None,
    ) -> None:
        # (Every field set here, in one go: a call is made per request.)
        self._host = host
        self.cid = cid
        self.task = task
        self.spec = spec
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.queuedAt = queuedAt
        self.sink = sink
        self.tag = tag
        self.owner = owner
        self.onProgress: ProgressCallback | None = None
        self.job: Mapping[str, Any] | None = None
        self.state = CallState.QUEUED
        self._deferred: Deferred[Any] | None = None
        self.resultBytes: bytes | None = None
        self.worker: Any = None
        self.timer: IDelayedCall | None = None
        self.startedAt: float | None = None
        self.endedAt: float | None = None
        self.outcome: Outcome | None = None
        self.deadline = 0.0

    def __repr__(self) -> str:
        return f"<Call {self.cid} {self.task!r} {self.state.value}>"

    @property
    def deferred(self) -> Deferred[Any]:
        """
        The caller's L{Deferred}, made on first use (a call on the lean
        lane has none): it fires with the outcome; cancelling it cancels
        the call.
        """
        deferred = self._deferred
        if deferred is None:
            if not self.cid:
                # Refused at submission: nothing to cancel.
                deferred = Deferred()
            else:
                host = self._host

                def cancel(d: Deferred[Any]) -> None:
                    host.cancelCall(self)

                deferred = Deferred(cancel)
            self._deferred = deferred
            outcome = self.outcome
            if outcome is not None:
                _fire(deferred, outcome)
        return deferred

    def owns(self, deferred: Deferred[Any]) -> bool:
        """
        Whether C{deferred} is this call's L{deferred}.
        """
        return self._deferred is deferred

    def cancel(self, onlyIfQueued: bool = False) -> None:
        """
        Cancel the call, as cancelling its L{deferred} does (with
        C{onlyIfQueued}, only if it has not started).
        """
        if onlyIfQueued and self.state is not CallState.QUEUED:
            return
        if self._deferred is not None:
            self._deferred.cancel()
        elif self.cid and self.outcome is None:
            self._host.cancelCall(self)

    @property
    def queuedSeconds(self) -> float | None:
        """
        From acceptance until a worker took it, or until its outcome if
        none did; L{None} if it was never accepted.
        """
        if self.queuedAt is None:
            return None
        until = self.startedAt if self.startedAt is not None else self.endedAt
        return None if until is None else until - self.queuedAt

    @property
    def runSeconds(self) -> float | None:
        """
        From dispatch until its outcome; L{None} if it never ran.
        """
        if self.startedAt is None or self.endedAt is None:
            return None
        return self.endedAt - self.startedAt

    def stopTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def complete(self, outcome: Outcome, now: float | None = None) -> bool:
        """
        End the call with C{outcome}, unless it has ended already: the pool
        counts it and tells every observer, then the caller is told.
        Returns whether this was its end (at C{now}, if given: the time
        its answer was read).
        """
        if self.outcome is not None:
            return False
        if self.timer is not None:
            self.stopTimer()
        self.outcome = outcome
        self.endedAt = self._host.reactor.seconds() if now is None else now
        self.state = CallState.DONE if self.worker is None else CallState.ABANDONED
        self._host.callEnded(self)
        sink = self.sink
        if sink is not None:
            sink.callDone(self)
        deferred = self._deferred
        if deferred is not None and not deferred.called:
            _fire(deferred, outcome)
        return True

    @property
    def abandoned(self) -> bool:
        """
        Whether the caller has its outcome while a worker still holds the
        call (the old flag, kept for code that reads it).
        """
        return self.state is CallState.ABANDONED

    def release(self) -> None:
        """
        The worker no longer holds it (it answered, or it exited).
        """
        self.worker = None
        if self.state is CallState.ABANDONED:
            self.stopTimer()
            self.state = CallState.DONE


def _fire(deferred: Deferred[Any], outcome: Outcome) -> None:
    if outcome.error is None:
        deferred.callback(outcome.value)
    else:
        deferred.errback(Failure(outcome.error))
