"""
L{GatewayProtocol}: one browser's websocket, its JSON-RPC messages turned
into calls of the gateway's upstream client (see L{taskservice.gateway}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _coalesce, _json, _jsonrpc
from taskservice._jsonrpc import Batch, Invalid, Request
from taskservice.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    TaskServiceError,
    toWireError,
)
from taskservice.wire import CANCEL, JOB_METHODS, PROGRESS, STATS

if TYPE_CHECKING:
    from taskservice.gateway import GatewayFactory

RETRY_AFTER = 1.0
"""The C{retryAfter} hint (seconds) of a call refused past a browser's cap."""

# Not the classes' "log": autobahn's own "log" is a txaio logger whose
# debug calls cost nothing unless enabled; a twisted.logger.Logger in its
# place would emit autobahn's per-frame debug events.
_log = Logger()

Response = dict[str, Any] | None


class GatewayProtocol(WebSocketServerProtocol):
    """
    One browser: translates its JSON-RPC messages into upstream calls.
    """

    factory: GatewayFactory

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[Any, Deferred[Any]] = {}
        self._notifications = 0
        self._open = False

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own dataReceived formats a debug message per read.
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
        self.factory._opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._open:
            return
        self._open = False
        calls, self._calls = self._calls, {}
        for d in calls.values():
            self.factory.counters["abandoned"] += 1
            self.factory.client.abandon(d)
        self.factory._closed(self)

    @property
    def inFlight(self) -> int:
        """
        This browser's calls that have not been answered yet.
        """
        return len(self._calls) + self._notifications

    # -- input -------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.counters["messages"] += 1
        if isBinary:
            self._reply(
                self._error(
                    None,
                    InvalidRequest(
                        "invalid request",
                        "binary messages are not supported: send JSON-RPC as text",
                    ),
                )
            )
            return
        factory = self.factory
        message = _jsonrpc.parseLine(
            payload, min(factory.maxBatch, factory.maxBrowserCalls)
        )
        if isinstance(message, Request):
            response = self._start(message, reply=True)
            if not isinstance(response, Deferred):
                self._reply(response)
        elif isinstance(message, Invalid):
            self._reply(self._error(message.id, message.error))
        else:
            self._batch(message)

    def _batch(self, batch: Batch) -> None:
        replies: list[Deferred[Response]] = []
        for item in batch.items:
            response = (
                self._error(item.id, item.error)
                if isinstance(item, Invalid)
                else self._start(item, reply=False)
            )
            replies.append(
                response if isinstance(response, Deferred) else succeed(response)
            )

        def send(responses: list[Response]) -> None:
            answered = [r for r in responses if r is not None]
            if answered:
                self._reply(answered)

        gatherResults(replies).addCallback(send)

    def _start(self, request: Request, reply: bool) -> Deferred[Response] | Response:
        """
        Start one request: its response now, or a Deferred firing with it
        (L{None}: nothing to answer), which with C{reply} is also sent.
        """
        method = request.method
        requestId = request.id
        if request.seed:
            return self._error(
                None,
                InvalidRequest(
                    "invalid request",
                    'the websocket speaks JSON-RPC 2.0 ("jsonrpc": "2.0")',
                ),
            )
        if method == CANCEL:
            return self._cancel(request)
        if method.startswith("$/") and method != STATS and method not in JOB_METHODS:
            if request.notification:
                return None
            return self._error(requestId, MethodNotFound("method not found", method))
        if not request.notification and requestId in self._calls:
            return self._error(
                requestId,
                InvalidRequest(
                    "invalid request",
                    "a call with this id is already in flight on this connection",
                ),
            )
        factory = self.factory
        if self.inFlight >= factory.maxBrowserCalls:
            factory.counters["overloaded"] += 1
            if request.notification:
                _log.info(
                    "notification {method} dropped: the browser has {limit} calls"
                    " in flight",
                    method=method,
                    limit=factory.maxBrowserCalls,
                )
                return None
            return self._error(
                requestId,
                Overloaded(
                    "overloaded",
                    {"retryAfter": RETRY_AFTER, "limit": factory.maxBrowserCalls},
                ),
            )
        factory.counters["calls"] += 1
        factory.inFlight += 1
        if method == STATS:
            d = factory.statsDocument()
        else:
            params = request.kwargs or (list(request.args) if request.args else None)
            try:
                d = factory.client.request(
                    method,
                    params,
                    onProgress=None
                    if request.notification
                    else self._progress(requestId),
                    timeout=request.timeout,
                )
            except TypeError as e:
                # Params that decoded but cannot be re-encoded (nested just
                # under the decoder's limit).
                d = fail(InvalidParams("invalid params", str(e)))
        if request.notification:
            self._notifications += 1
            d.addBoth(self._notificationDone, method)
            return None
        self._calls[requestId] = d
        return d.addBoth(self._finished, requestId, reply)

    def _cancel(self, request: Request) -> Response:
        """
        C{$/cancelRequest {"id": X}}: cancel this browser's call X (answered
        -32800 once). Unknown or finished ids are ignored, as upstream.
        """
        target = request.kwargs.get("id") if request.kwargs else None
        if target is None and request.args:
            target = request.args[0]
        if target is None or not _jsonrpc.validId(target):
            if request.notification:
                return None
            return self._error(
                request.id,
                InvalidParams(
                    "invalid params",
                    '$/cancelRequest needs {"id": ...} naming a request id',
                ),
            )
        d = self._calls.get(target)
        if d is not None:
            self.factory.counters["cancelled"] += 1
            d.cancel()
        return None if request.notification else _jsonrpc.resultObject(request.id, None)

    # -- output --------------------------------------------------------------

    def _progress(self, requestId: Any) -> Callable[[dict[str, Any]], None]:
        def send(update: dict[str, Any]) -> None:
            self._reply(
                _jsonrpc.notificationObject(PROGRESS, {**update, "id": requestId})
            )

        return send

    def _finished(self, outcome: Any, requestId: Any, reply: bool) -> Response:
        self.factory.inFlight -= 1
        error = self._wireError(outcome) if isinstance(outcome, Failure) else None
        self.factory._callEnded(error)
        if self._calls.pop(requestId, None) is None:
            # The browser has gone: nobody to answer.
            return None
        if error is not None:
            response = self._error(requestId, error)
        else:
            response = _jsonrpc.resultObject(requestId, outcome)
        if reply:
            self._reply(response)
            return None
        return response

    def _notificationDone(self, outcome: Any, method: str) -> None:
        self.factory.inFlight -= 1
        self._notifications -= 1
        error = self._wireError(outcome) if isinstance(outcome, Failure) else None
        self.factory._callEnded(error)
        if error is not None:
            _log.info(
                "notification {method} failed: {code} {message}",
                method=method,
                code=int(error.code),
                message=error.message,
            )

    def _wireError(self, failure: Failure) -> TaskServiceError:
        assert failure.value is not None
        error = toWireError(failure.value)
        if isinstance(error, InternalError) and error is not failure.value:
            _log.failure("unexpected error handling a call", failure)
        return error

    def _error(self, requestId: Any, error: TaskServiceError) -> dict[str, Any]:
        self.factory.counters["errors"] += 1
        return _jsonrpc.errorObject(requestId, error)

    def _reply(self, message: Any) -> None:
        if message is not None and self.state == self.STATE_OPEN:
            self.sendMessage(_json.dumps(message))
