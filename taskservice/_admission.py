"""
Admission of calls to the pool: a call is checked (the pool runs, the task
exists, the arguments fit, the timeout is allowed) and made a L{Call}, or
refused and ended at once; and the retry hint of a call refused as
overloaded. A base of L{taskservice._scheduler.Scheduler}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskservice._call import Call, CallSink, Outcome, ProgressCallback
from taskservice._poolstate import PoolState
from taskservice._queue import CallQueue
from taskservice._supervisor import Supervisor
from taskservice._task import Registry
from taskservice.errors import (
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Unavailable,
)
from taskservice.wire import CallOptions

if TYPE_CHECKING:
    from taskservice._deadlines import Deadlines


class Admission:
    """
    Turns submissions into calls (see the module).
    """

    reactor: Any
    registry: Registry
    queue: CallQueue
    supervisor: Supervisor
    deadlines: Deadlines
    defaultTimeout: float
    maxTimeout: float
    completed: int
    startedAt: float | None
    _nextCallID: int
    callEnded: Callable[[Call], None]

    def accept(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: CallOptions,
        onProgress: ProgressCallback | None,
        owner: object,
        job: Mapping[str, Any] | None,
        sink: CallSink | None = None,
        tag: Any = None,
    ) -> Call:
        if self.supervisor.state is not PoolState.RUNNING:
            raise Unavailable("the pool is not running")
        spec = self.registry.get(name)
        if spec is None:
            raise MethodNotFound("method not found", name)
        try:
            spec.checkArguments(args, kwargs)
        except TypeError as e:
            raise InvalidParams("invalid params", str(e)) from None
        timeout = options.timeout
        if timeout is None:
            timeout = spec.timeout if spec.timeout is not None else self.defaultTimeout
        elif not 0 < timeout <= self.maxTimeout:
            raise InvalidRequest(
                "invalid request",
                f"timeout must be more than 0 and at most {self.maxTimeout:g} seconds",
            )
        cid = self._nextCallID
        self._nextCallID = cid + 1
        call = Call(
            self,
            cid,
            spec.name,
            spec,
            args,
            kwargs,
            timeout,
            self.reactor.seconds(),
            sink,
            tag,
            owner,
        )
        if onProgress is not None:
            call.onProgress = onProgress
        if job is not None:
            call.job = job
        return call

    def cancelCall(self, call: Call) -> None:
        """
        The canceller of every accepted call (see L{Call.cancel}).
        """
        self.deadlines.cancel(call)

    def refuse(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: CallOptions,
        owner: object,
        job: Mapping[str, Any] | None,
        error: Exception,
        sink: CallSink | None = None,
        tag: Any = None,
    ) -> Call:
        """
        End a call refused at submission; its task is named only if C{name}
        is registered (never a name taken from the network).
        """
        known = isinstance(name, str) and name in self.registry
        call = Call(
            self,
            0,
            name if known else "",
            self.registry[name] if known else None,
            args,
            kwargs,
            options.timeout or 0.0,
            None,
            sink,
            tag,
            owner,
        )
        call.job = job
        call.complete(Outcome.failure(error))
        return call

    def retryAfter(self) -> float:
        """
        A hint for callers refused as overloaded: roughly how long the queue
        ahead of them takes to drain, from the calls completed so far.
        """
        uptime = self.reactor.seconds() - (self.startedAt or 0.0)
        rate = self.completed / uptime if uptime > 0 and self.completed else 0.0
        if not rate:
            return 1.0
        return round(min(60.0, max(0.1, len(self.queue) / rate)), 1)
