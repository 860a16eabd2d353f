"""
L{GatewayProtocol}: one browser's websocket, its JSON-RPC messages turned
into calls of the gateway's upstream client (see L{taskservice.gateway}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from taskservice import _coalesce, _wsframes
from taskservice._jsonrpc import Request
from taskservice._session import RETRY_AFTER, Progress, Session, SessionConfig
from taskservice.errors import (
    Cancelled,
    ErrorCode,
    InvalidParams,
    InvalidRequest,
    TaskServiceError,
    toWireError,
)

if TYPE_CHECKING:
    from taskservice._call import Call, CallSink
    from taskservice.gateway import GatewayFactory

__all__ = ["RETRY_AFTER", "GatewayProtocol"]


class _BrowserCall:
    """
    A browser's task call on the lean lane (beside the pool): the pool's
    L{Call}, no L{Deferred}. What the session keeps in flight for it, so
    that a C{$/cancelRequest} is counted as through L{GatewayProtocol.cancel}.
    """

    __slots__ = ("browser", "call")

    def __init__(self, call: Call, browser: GatewayProtocol) -> None:
        self.call = call
        self.browser = browser

    @property
    def called(self) -> bool:
        """
        Whether the call has its outcome (as a L{Deferred}'s C{called}).
        """
        return self.call.outcome is not None

    def cancel(self, onlyIfQueued: bool = False) -> None:
        # (As GatewayProtocol.cancel does for a Deferred: counted, and
        # cancelled whatever the flag.)
        self.browser.factory.counters["cancelled"] += 1
        self.call.cancel()


class GatewayProtocol(WebSocketServerProtocol):
    """
    One browser: translates its JSON-RPC messages into upstream calls.
    """

    factory: GatewayFactory
    _lean = False
    """Whether frames go through L{taskservice._wsframes} (decided on open)."""
    _abandoned: set[Any] | None = None
    """Calls of the pool still running when the browser went, counted then
    (their Deferreds, and the L{Call}s of the lean lane)."""

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        self._open = False
        self._sink: Any = None

    @property
    def session(self) -> Session:
        """
        This browser's JSON-RPC session (made once the factory is known).
        """
        if self._session is None:
            factory = self.factory
            self._session = Session(
                self,
                SessionConfig(
                    maxInFlight=factory.maxBrowserCalls,
                    maxBatch=factory.maxBatch,
                    refuseOverflow=True,
                    dialect=False,
                    answersAuth=False,
                ),
            )
        return self._session

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own dataReceived formats a debug message per read.
        if self._lean:
            _wsframes.receive(self, data)
        else:
            self._dataReceived(data)

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """
        Autobahn's C{sendData}, for the common case (no chopping, nothing
        queued, no octet logging) without its per-message debug formatting,
        and written through L{taskservice._coalesce}: a browser's replies of
        one reactor pass leave in one send.
        """
        if sync or chopsize or self.send_queue or getattr(self, "logOctets", False):
            # Autobahn writes at once (or queues): what waits goes first.
            _coalesce.flush(self.transport)
            super().sendData(data, sync, chopsize)
            return
        _coalesce.write(self.transport, data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def _closeConnection(self, abort: bool = False) -> None:
        # What sendData gathered (a close frame, say) leaves first; an abort
        # drops it, as Twisted's abortConnection drops its own buffer.
        if not abort:
            _coalesce.flush(self.transport)
        super()._closeConnection(abort)

    def onConnect(self, request: ConnectionRequest) -> None:
        self.factory.checkOrigin(request)

    def onOpen(self) -> None:
        self._open = True
        self._lean = _wsframes.compatible(self)
        self.factory._opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._open:
            return
        self._open = False
        factory = self.factory
        calls = self.session.connectionLost()
        factory.counters["abandoned"] += len(calls)
        lane = factory.lane
        if lane is None:
            for d in calls:
                factory.client.abandon(d)
        elif calls:
            # Running calls finish unheard; to the gateway they end now, as
            # a client's abandoned calls do.
            running = lane.abandonAll(self, calls)
            if running:
                self._abandoned = {
                    d.call if isinstance(d, _BrowserCall) else d for d in running
                }
                factory.inFlight -= len(running)
                for _ in running:
                    factory._callEnded(Cancelled())
        factory._closed(self)

    @property
    def inFlight(self) -> int:
        """
        This browser's calls that have not been answered yet.
        """
        return self.session.outstanding

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.counters["messages"] += 1
        if isBinary:
            self.session.replyError(
                None,
                InvalidRequest(
                    "invalid request",
                    "binary messages are not supported: send JSON-RPC as text",
                ),
            )
            return
        self.session.messageReceived(payload)

    # -- SessionHost: calls go upstream ----------------------------------------

    def send(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            if self._lean:
                _wsframes.send(self, data)
            else:
                self.sendMessage(data)

    @property
    def startCall(self) -> Any:
        """
        The session's lean lane (L{taskservice._sessionhost.Lane}) when the
        gateway calls its task server's pool in this process, else L{None}
        (every call goes through L{call}).
        """
        return self._startCall if self.factory.lane is not None else None

    def _startCall(self, request: Request, sink: CallSink, tag: Any) -> _BrowserCall:
        """
        Start a browser's task call on the pool, with no L{Deferred}: its end
        comes to L{callDone} (counted here) and goes on to C{sink}, the
        session, which splices the worker's result JSON into the reply.
        """
        factory = self.factory
        factory.counters["calls"] += 1
        factory.inFlight += 1
        self._sink = sink
        pool = factory.lane.pool  # type: ignore[union-attr]
        return _BrowserCall(
            pool.start(
                request.method,
                request.args,
                request.kwargs,
                request.options,
                self,
                tag,
                self,
            ),
            self,
        )

    def callDone(self, call: Call) -> None:
        """
        A call of the lean lane ended (L{CallSink}): counted as
        L{_upstreamEnded} counts a Deferred's, then answered by the session.
        """
        abandoned = self._abandoned
        if abandoned is not None and call in abandoned:
            # Counted when the browser went.
            abandoned.discard(call)
        else:
            factory = self.factory
            factory.inFlight -= 1
            error = call.outcome.error  # type: ignore[union-attr]
            factory._callEnded(None if error is None else toWireError(error))
        self._sink.callDone(call)

    def callProgress(self, call: Call, update: dict[str, Any]) -> None:
        self._sink.callProgress(call, update)

    def call(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        lane = self.factory.lane
        if lane is not None:
            # (A notification's call is nobody's: it keeps running if the
            # browser goes.)
            owner = None if request.notification else self
            return self._upstream(lane.submitRequest(request, onProgress, owner))
        return self._forward(request, onProgress)

    def _forward(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        """
        A call through the upstream client's C{request}.
        """
        params = request.kwargs or (list(request.args) if request.args else None)
        try:
            d = self.factory.client.request(
                request.method, params, onProgress=onProgress, options=request.options
            )
        except TypeError as e:
            # Params that decoded but cannot be re-encoded (nested just
            # under the decoder's limit).
            d = fail(InvalidParams("invalid params", str(e)))
        return self._upstream(d)

    def stats(self) -> Deferred[Any]:
        return self._upstream(self.factory.statsDocument())

    def jobMethod(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        # Forwarded: the task server behind answers them.
        return self._forward(request, onProgress)

    def cancel(self, call: Deferred[Any], onlyIfQueued: bool) -> None:
        self.factory.counters["cancelled"] += 1
        call.cancel()

    def error(self, error: TaskServiceError, *, refused: bool, answered: bool) -> None:
        if answered:
            self.factory.counters["errors"] += 1
        if refused and error.code == ErrorCode.OVERLOADED:
            self.factory.counters["overloaded"] += 1

    def holdInput(self, hold: bool) -> None:
        # (Only the waiting rule holds input; a browser is refused instead.)
        pass

    def close(self) -> None:
        self.sendClose()

    def refuseConnection(self, why: str) -> None:
        # (The gateway has no token of its own.)
        self.close()

    def _upstream(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        Count a call sent upstream while it runs, and its outcome.
        """
        factory = self.factory
        factory.counters["calls"] += 1
        factory.inFlight += 1
        return d.addBoth(self._upstreamEnded, d)

    def _upstreamEnded(self, outcome: Any, d: Deferred[Any]) -> Any:
        abandoned = self._abandoned
        if abandoned is not None and d in abandoned:
            # Counted when the browser went.
            abandoned.discard(d)
            return outcome
        factory = self.factory
        factory.inFlight -= 1
        if isinstance(outcome, Failure):
            assert outcome.value is not None
            factory._callEnded(toWireError(outcome.value))
        else:
            factory._callEnded(None)
        return outcome
