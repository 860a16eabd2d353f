"""
L{TaskClientProtocol}: one connection of L{taskservice.client.TaskClient},
the Twisted shell over L{taskservice._clientcore.ClientCore}.

The core keeps the ids, the calls in flight, progress, cancellation and the
C{$/auth} step; this protocol only turns its reports into Deferreds and log
events, and its lines into writes (gathered per reactor pass by
L{taskservice._coalesce}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _coalesce
from taskservice._auth import Token
from taskservice._clientcore import ClientCore, ProgressCallback
from taskservice._lines import LineProtocol
from taskservice._tls import describeTLSFailure
from taskservice.errors import TaskServiceError
from taskservice.wire import CLIENT_MAX_LINE, NO_OPTIONS, CallOptions, callOptions


class _Call:
    """
    A call in flight on a L{TaskClientProtocol}, as its L{ClientCore}
    reports it: its Deferred and its progress callback.
    """

    __slots__ = ("deferred", "onProgress")

    deferred: Deferred[Any]

    def __init__(self, onProgress: ProgressCallback | None) -> None:
        self.onProgress = onProgress


class TaskClientProtocol(LineProtocol):
    """
    One connection to a task server; calls are matched to responses by id.

    The Twisted shell over a L{ClientCore}, which keeps the ids, the calls in
    flight, progress, cancellation and the C{$/auth} step: this class only
    turns its reports into Deferreds and its lines into writes.

    @param authenticate: send C{$/auth} first (always so with a C{token});
        calls may be sent right behind it. If the server refuses it, every
        call in flight and every later call fails with L{Unauthorised}, and
        the connection is closed.
    @param token: the server's shared secret, or L{None}.
    @param onReady: called with this protocol once C{$/auth} succeeded.
    """

    log = Logger()
    maxLineLength = CLIENT_MAX_LINE

    def __init__(
        self,
        onMade: Callable[[TaskClientProtocol], object] | None = None,
        onLost: Callable[[TaskClientProtocol], object] | None = None,
        *,
        authenticate: bool = False,
        token: Token | str | None = None,
        onReady: Callable[[TaskClientProtocol], object] | None = None,
    ) -> None:
        super().__init__()
        self._onMade = onMade
        self._onLost = onLost
        self._onReady = onReady
        self._core: ClientCore[_Call] = ClientCore(
            self, authenticate=authenticate, token=token
        )

    @property
    def ready(self) -> bool:
        """
        C{True} once the server accepted C{$/auth} (at once when not
        authenticating).
        """
        return self._core.ready

    @property
    def refusal(self) -> TaskServiceError | None:
        """
        The L{Unauthorised} error the server refused with, or L{None}.
        """
        return self._core.refusal

    @property
    def lostReason(self) -> str | None:
        """
        Why the connection was lost, in words, once it is.
        """
        return self._core.lostReason

    @property
    def inFlight(self) -> int:
        return self._core.inFlight

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
        Call C{method} with C{params} (a list, a dict, or L{None}).

        Cancelling the returned Deferred sends C{$/cancelRequest}: the
        server removes the call from its queue, or kills the worker running
        it. The Deferred then fails with C{CancelledError}.

        @param options: how the call is to run (L{CallOptions}, sent as the
            request's members beside C{"method"}).
        @param timeout: shorthand for C{options=CallOptions(timeout=...)}.
        """
        core = self._core
        call = _Call(onProgress)
        try:
            requestId = core.request(
                method, params, call, options=callOptions(options, timeout)
            )
        except TaskServiceError as e:
            return fail(e)

        def cancel(d: Deferred[Any]) -> None:
            # The Deferred then fails with CancelledError by itself.
            core.cancel(requestId)

        call.deferred = Deferred(cancel)
        return call.deferred

    def abandon(self, d: Deferred[Any]) -> None:
        """
        Give up on the call behind C{d} without stopping it if it already
        runs: the server drops it if it is still queued, otherwise lets it
        finish. C{d} fails at once with C{CancelledError}; a late answer is
        ignored.
        """
        for requestId, call in self._core.pending.items():
            if call.deferred is d:
                self._core.abandon(requestId)
                d.errback(Failure(CancelledError()))
                return

    # -- Twisted tells the core ------------------------------------------------

    def connectionMade(self) -> None:
        self._core.connectionMade()
        if self._onMade is not None:
            self._onMade(self)

    def lineReceived(self, line: bytes) -> None:
        self._core.receiveLine(line)

    def lineTooLong(self) -> None:
        self._core.lineTooLong(self.maxLineLength)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            self._core.connectionLost("closed", explained=True)
        else:
            tls = describeTLSFailure(reason)
            self._core.connectionLost(
                tls or reason.getErrorMessage(), explained=tls is not None
            )
        if self._onLost is not None:
            self._onLost(self)

    # -- the core's ClientShell -----------------------------------------------

    def sendLine(self, line: bytes) -> None:
        assert self.transport is not None
        _coalesce.write(self.transport, line)

    def closeConnection(self) -> None:
        assert self.transport is not None
        _coalesce.flush(self.transport)
        self.transport.loseConnection()

    def callSucceeded(self, handle: _Call, result: Any) -> None:
        handle.deferred.callback(result)

    def callFailed(self, handle: _Call, error: TaskServiceError) -> None:
        handle.deferred.errback(Failure(error))

    def callProgressed(self, handle: _Call, update: dict[str, Any]) -> None:
        if handle.onProgress is not None:
            handle.onProgress(update)

    def accepted(self) -> None:
        if self._onReady is not None:
            self._onReady(self)

    def logError(self, template: str, **fields: Any) -> None:
        self.log.error(template, **fields)
