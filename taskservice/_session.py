"""
One JSON-RPC session, sans-I/O: the protocol logic that the task server's
line protocol (L{taskservice.server}) and the websocket gateway
(L{taskservice._gatewayprotocol}) share, each of them a thin transport.

Messages in (L{Session.messageReceived}), encoded messages out
(L{SessionHost.send}), over a small typed interface to whoever runs the
calls (L{SessionHost}). The session parses and validates each message,
bounds batches, routes the C{$/} methods (C{$/cancelRequest} and C{$/auth}
itself; C{$/stats} and the job methods to its host), counts what is in
flight, answers in the caller's dialect and never lets one bad message cost
anything else::

    session = Session(host, SessionConfig(maxInFlight=1000, maxBatch=1000))
    session.messageReceived(b'{"jsonrpc":"2.0","id":1,"method":"echo"}')
    # host.call(request, onProgress) runs it; host.send(...) gets the reply.

Two overflow rules (L{SessionConfig.refuseOverflow}): a task server
connection past its C{maxInFlight} keeps further messages waiting, parsed
and in order (and asks its host to stop reading past L{HOLD_LIMIT} bytes of
them); a browser past its cap is answered -32003 at once.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _jsonrpc
from taskservice._jsonrpc import Batch, Invalid, Request
from taskservice._sessionhost import (
    HOLD_LIMIT,
    RETRY_AFTER,
    Access,
    Lane,
    Progress,
    Response,
    SessionConfig,
    SessionHost,
)
from taskservice._sessionroutes import (
    NO_JOB_CALLS,
    NO_SEED_REPLIES,
    NOTHING_WAITS,
    Routes,
    weight,
)
from taskservice.errors import (
    InvalidRequest,
    MethodNotFound,
    TaskServiceError,
)
from taskservice.wire import (
    AUTH,
    CANCEL,
    JOB_METHODS,
    PRE_AUTH_MAX_LINE,
    PROGRESS,
    STATS,
)

__all__ = [
    "HOLD_LIMIT",
    "RETRY_AFTER",
    "Access",
    "Progress",
    "Session",
    "SessionConfig",
    "SessionHost",
]

if TYPE_CHECKING:
    from taskservice._call import Call

_log = Logger()

_ON_LANE: dict[str, Any] = {}
"""What L{Session._dispatch} returns for a call on the lean lane (and what
stands for the call in C{_inFlight} while it starts)."""

_WITHOUT_AUTH = frozenset({STATS, *JOB_METHODS})
"""The C{$/} methods a session routes, besides C{$/cancelRequest}."""
_WITH_AUTH = _WITHOUT_AUTH | {AUTH}


class Session(Routes):
    """
    One peer's JSON-RPC session (see the module's docstring).

    @ivar outstanding: the peer's calls counted against C{maxInFlight}.
    @ivar waitingBytes: the size of the messages waiting for room.
    """

    # (Class defaults: a connection that makes one call sets few of them.)
    outstanding = 0
    waitingBytes = 0
    _held = False
    _cancelLane = False
    _pendingBatches = 0
    _inputEnded = False
    _lost = False

    def __init__(self, host: SessionHost, config: SessionConfig) -> None:
        self.host = host
        self.config = config
        self._maxInFlight = config.maxInFlight
        self._maxBatch = min(config.maxBatch, config.maxInFlight)
        self._refuseOverflow = config.refuseOverflow
        self._builtins = _WITH_AUTH if config.answersAuth else _WITHOUT_AUTH
        if config.token is None:
            self.access = Access.OPEN
            self.maxLineLength = config.maxLineLength
        else:
            # Not a byte more than $/auth needs until it has been sent.
            self.access = Access.NEEDS_AUTH
            self.maxLineLength = min(config.maxLineLength, PRE_AUTH_MAX_LINE)
        self._dialect = config.dialect
        # The lean lane (a host that starts calls itself, with no Deferred).
        self._lane: Lane | None = getattr(host, "startCall", None)
        self._inFlight: dict[Any, Any] = {}
        # (The queues below are made when first needed: shared, empty and
        # never changed until then.)
        self._jobCalls = NO_JOB_CALLS
        self._waiting = NOTHING_WAITS
        self._seedReplies = NO_SEED_REPLIES

    # -- input ---------------------------------------------------------------

    def messageReceived(self, data: bytes) -> None:
        """
        One message (a line without its delimiter, or a websocket text
        message).
        """
        if self.access is not Access.OPEN:
            self._authenticate(data)
            return
        message = _jsonrpc.parseLine(data, self._maxBatch)
        if isinstance(message, Request):
            if message.method == CANCEL and not message.seed:
                # The cancel lane: acted on at once, even past maxInFlight,
                # and it may reach calls still waiting.
                self._cancelLane = True
                try:
                    self._reply(self._dispatch(message, reply=True))
                finally:
                    self._cancelLane = False
            elif self._refuseOverflow:
                self._reply(self._dispatch(message, reply=True))
            elif self._waiting or self.outstanding >= self._maxInFlight:
                self._wait(message, len(data))
            else:
                self._start(message)
        elif isinstance(message, Invalid) and not (message.seed and self._dialect):
            self.replyError(message.id, message.error)
        elif self._refuseOverflow:
            if isinstance(message, Batch):
                self._batch(message)
            else:
                self.replyError(message.id, message.error)
        elif self._waiting or self.outstanding + weight(message) > self._maxInFlight:
            self._wait(message, len(data))
        else:
            self._start(message)

    def _wait(self, message: Request | Batch | Invalid, size: int) -> None:
        """
        Keep C{message} waiting for room (the waiting rule), in order.
        """
        if self._waiting is NOTHING_WAITS:
            self._waiting = deque()
        self._waiting.append((message, size))
        self.waitingBytes += size
        if not self._held and self.waitingBytes > HOLD_LIMIT:
            self._held = True
            self.host.holdInput(True)

    def inputEnded(self) -> None:
        """
        The peer sends nothing more: close once everything is answered.
        """
        self._inputEnded = True
        self._closeIfDone()

    def connectionLost(self) -> list[Deferred[Any]]:
        """
        The peer has gone: drop what waits, answer nothing more. Returns
        its calls still running (their results will be discarded).
        """
        self._lost = True
        if self._waiting:
            self._waiting.clear()
        self.waitingBytes = 0
        calls = list(self._inFlight.values())
        self._inFlight.clear()
        return calls

    # -- the waiting rule ------------------------------------------------------

    def _start(self, message: Request | Batch | Invalid) -> None:
        """
        Start C{message}, counted against C{maxInFlight} (the waiting rule).
        """
        if isinstance(message, Request) and not message.seed:
            # The common case, with as little per call as can be.
            self.outstanding += 1
            response = self._dispatch(message, reply=True)
            if response is not _ON_LANE and not isinstance(response, Deferred):
                self._reply(response, release=True)
        elif isinstance(message, Batch):
            self.outstanding += len(message.items)
            self._pendingBatches += 1
            self._batch(message).addBoth(self._batchAnswered)
        else:
            self.outstanding += 1
            if isinstance(message, Invalid):
                # A malformed dialect line: answered in its turn.
                error = message.error
                self.host.error(error, refused=True, answered=True)
                answered = self._seedReply(lambda: fail(error))
            elif self._lane is not None and not message.method.startswith("$/"):
                # The lean lane: callDone fills the reply's place.
                slot: list[bytes | None] = [None]
                if self._seedReplies is NO_SEED_REPLIES:
                    self._seedReplies = deque()
                self._seedReplies.append(slot)
                self._lane(message, self, slot)
                return
            else:
                request = message
                answered = self._seedReply(lambda: self._call(request))
            answered.addBoth(self._seedAnswered)

    def _release(self) -> None:
        """
        One counted call is done: start what waits for room.
        """
        self.outstanding -= 1
        waiting = self._waiting
        while waiting and self.outstanding + weight(waiting[0][0]) <= self._maxInFlight:
            message, size = waiting.popleft()
            self.waitingBytes -= size
            self._start(message)
        if self._held and self.waitingBytes <= HOLD_LIMIT // 2:
            self._held = False
            self.host.holdInput(False)
        if self._inputEnded:
            self._closeIfDone()

    def _closeIfDone(self) -> None:
        if (
            self._inputEnded
            and not self.outstanding
            and not self._pendingBatches
            and not self._waiting
            and not self._lost
        ):
            self.host.close()

    # -- requests --------------------------------------------------------------

    def _dispatch(self, request: Request, reply: bool) -> Deferred[Response] | Response:
        """
        Start one request: its response now, or a Deferred firing with it
        (L{None}: nothing to answer; with C{reply}, it is written instead).
        A call that runs is counted and released when it ends.
        """
        method = request.method
        if request.seed:
            return self._own(
                request,
                InvalidRequest(
                    "invalid request",
                    'the websocket speaks JSON-RPC 2.0 ("jsonrpc": "2.0")',
                ),
            )
        if method.startswith("$/"):
            if method == CANCEL:
                try:
                    self._cancel(request)
                except TaskServiceError as e:
                    return self._own(request, e)
                if request.notification:
                    return None
                return _jsonrpc.resultObject(request.id, None)
            if method not in self._builtins:
                return self._own(request, MethodNotFound("method not found", method))
        requestId = request.id
        if not request.notification and requestId in self._inFlight:
            return self._own(
                request,
                InvalidRequest(
                    "invalid request",
                    "a call with this id is already in flight on this connection",
                ),
            )
        if self._refuseOverflow:
            if self.outstanding >= self._maxInFlight:
                return self._overloaded(request)
            self.outstanding += 1
        if method.startswith("$/"):
            d = self._call(request)
        elif reply and not request.notification and self._lane is not None:
            # The lean lane: the call tells callDone of its end.
            inFlight = self._inFlight
            inFlight[requestId] = _ON_LANE
            call = self._lane(request, self, requestId)
            if inFlight.get(requestId) is _ON_LANE:
                inFlight[requestId] = call
            return _ON_LANE
        elif request.notification:
            d = self.host.call(request, None)
        else:
            d = self.host.call(request, self._progressTo(requestId))
        if request.notification:
            # (Returned, firing with None: the call releases its count.)
            d.addErrback(self._notificationFailed, method)
            return d.addBoth(self._notificationDone)
        self._inFlight[requestId] = d
        return d.addBoth(self._finished, requestId, reply)

    def callDone(self, call: Call) -> None:
        """
        A call of the lean lane ended (L{CallSink}): answer it, splicing in
        the result's JSON as the worker sent it.
        """
        requestId = call.tag
        if type(requestId) is list:
            self._seedDone(call, requestId)
            return
        if self._inFlight.pop(requestId, None) is not None:
            outcome = call.outcome
            assert outcome is not None
            raw = call.resultBytes
            if outcome.error is not None:
                error = self._wireError(Failure(outcome.error))
                self.host.error(error, refused=False, answered=True)
                self._write(_jsonrpc.errorObject(requestId, error))
            elif raw is not None and not self._lost:
                self.host.send(_jsonrpc.resultLine(requestId, raw))
            else:
                self._write(_jsonrpc.resultObject(requestId, outcome.value))
        self._release()

    def callProgress(self, call: Call, update: Any) -> None:
        """
        A call of the lean lane reported progress (L{CallSink}); a FAQ
        dialect call's is not told.
        """
        if type(call.tag) is list:
            return
        self._write(_jsonrpc.notificationObject(PROGRESS, {**update, "id": call.tag}))

    def _finished(self, outcome: Any, requestId: Any, reply: bool) -> Response:
        response: Response
        if self._inFlight.pop(requestId, None) is None:
            # The peer has gone: nobody to answer.
            response = None
        elif isinstance(outcome, Failure):
            error = self._wireError(outcome)
            self.host.error(error, refused=False, answered=True)
            response = _jsonrpc.errorObject(requestId, error)
        else:
            response = _jsonrpc.resultObject(requestId, outcome)
        if reply:
            if response is not None:
                self._write(response)
            response = None
        self._release()
        return response

    def _reply(
        self, response: Deferred[Response] | Response, release: bool = False
    ) -> None:
        """
        Write an immediate C{response} (a Deferred one writes itself);
        C{release} the count it was started under.
        """
        if response is _ON_LANE or isinstance(response, Deferred):
            return
        if response is not None:
            self._write(response)
        if release:
            self._release()

    # -- output ------------------------------------------------------------------------
