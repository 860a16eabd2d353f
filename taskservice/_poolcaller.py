"""
L{PoolCaller}: the gateway's upstream when the task server runs in the same
process, calling its pool directly.

With C{twistd taskservice} (the gateway beside its task server) a browser's
call used to go to the task server over a loopback connection: encoded,
written, read, decoded and routed twice in the same process. Calling the
pool directly halves the parent's work per websocket message; the task
server still serves other clients on its port as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure

from taskservice._jobrequest import callJobMethod
from taskservice.errors import MethodNotFound, TaskServiceError
from taskservice.wire import (
    JOB_METHODS,
    NO_OPTIONS,
    RESERVED_PREFIX,
    STATS,
    CallOptions,
    callOptions,
)

if TYPE_CHECKING:
    from taskservice._jsonrpc import Request
    from taskservice.server import TaskServerFactory

ProgressCallback = Callable[[dict[str, Any]], object]


class PoolCaller(Service):
    """
    L{TaskClient}'s calling half (C{request}, C{abandon}) over the pool of
    a task server in this process.

    Calls are refused, answered and counted exactly as the pool does for
    the task server's own connections (C{Unavailable} while it stops, its
    queue limit, deadlines); C{$/stats} is the task server's own.

    @param server: the task server's factory (its pool and its stats).
    """

    def __init__(self, server: TaskServerFactory) -> None:
        self.server = server
        self.pool = server.pool
        self._upstream: dict[Deferred[Any], Deferred[Any]] = {}
        self._jobCalls: set[Deferred[Any]] = set()

    def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        onProgress: ProgressCallback | None = None,
        options: CallOptions = NO_OPTIONS,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Run C{method} in the pool; cancelling the Deferred cancels the call
        (as C{$/cancelRequest} does).
        """
        if method == STATS:
            return succeed(self.server.stats())
        jobs = self.server.jobs
        if method in JOB_METHODS and jobs is not None:
            try:
                upstream = callJobMethod(
                    jobs,
                    self.pool,
                    method,
                    None if params is None else params,
                    owner=self,
                    onProgress=onProgress,
                )
            except TaskServiceError as e:
                return fail(e)
            self._jobCalls.add(upstream)
            upstream.addBoth(self._jobCallEnded, upstream)
        elif method.startswith(RESERVED_PREFIX):
            return fail(MethodNotFound("method not found", method))
        else:
            args, kwargs = (
                ((), params) if isinstance(params, Mapping) else (params, None)
            )
            upstream = self.pool.submit(
                method,
                args or (),
                kwargs,
                options=callOptions(options, timeout),
                onProgress=onProgress,
                owner=self,
            )
        result: Deferred[Any] = Deferred(lambda _: upstream.cancel())
        self._upstream[result] = upstream
        upstream.addBoth(self._answered, result)
        return result

    def submitRequest(
        self,
        request: Request,
        onProgress: ProgressCallback | None,
        owner: object,
    ) -> Deferred[Any]:
        """
        The gateway's lane for a task call (never a C{$/} method): the
        pool's own Deferred, with no second one in front of it. Cancelling
        it cancels the call; L{abandonAll} gives up on C{owner}'s.
        """
        return self.pool.submit(
            request.method,
            request.args,
            request.kwargs,
            options=request.options,
            onProgress=onProgress,
            owner=owner,
        )

    def abandonAll(self, owner: object, calls: Sequence[Deferred[Any]]) -> list[Any]:
        """
        Give up on C{calls}, from L{submitRequest} for C{owner} or from
        L{request}: queued ones are dropped (their Deferreds fail with
        C{CancelledError}), running ones finish unheard. Returns those
        still running (their Deferreds fire when they end).
        """
        for d in calls:
            if d in self._upstream:
                self.abandon(d)
        self.pool.dropQueued(owner)
        return [d for d in calls if not d.called]

    def _jobCallEnded(self, outcome: Any, upstream: Deferred[Any]) -> Any:
        self._jobCalls.discard(upstream)
        return outcome

    def _answered(self, outcome: Any, result: Deferred[Any]) -> None:
        self._upstream.pop(result, None)
        if result.called:
            # Abandoned: nobody is listening.
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def abandon(self, d: Deferred[Any]) -> None:
        """
        Give up on a call without stopping it if it already runs: a queued
        call is dropped; a running one finishes unheard. C{d} fails at once
        with C{CancelledError}.
        """
        upstream = self._upstream.pop(d, None)
        if upstream is not None and upstream in self._jobCalls:
            # A job method: giving up on it detaches (an attach) and leaves
            # the job as it is.
            upstream.cancel()
        elif upstream is not None and self.pool.cancelIfQueued(upstream):
            return
        if not d.called:
            d.errback(Failure(CancelledError()))
