"""
The task server: JSON-RPC 2.0 (and the Workerman FAQ dialect) over lines,
calls handed to a L{taskservice.pool.ProcessPool}.

Many calls may be in flight on one connection; responses are written as each
call finishes, matched by id. Protocol methods live in the reserved C{$/}
namespace: C{$/stats}, C{$/cancelRequest}, C{$/auth}.

With a token (L{TaskServerFactory}'s C{token}), a connection must first send
C{$/auth} with it; anything else first, or a wrong token, is answered -32005
(unauthorised) and the connection is closed once the reply is written.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice import _coalesce, _jsonrpc
from taskservice._auth import Token
from taskservice._jobrequest import parseJobId, parseListing, parseSubmit
from taskservice._jsonrpc import Batch, Invalid, Request
from taskservice._lines import LineProtocol
from taskservice.errors import (
    Cancelled,
    ErrorCode,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    TaskServiceError,
    TooLarge,
    Unauthorised,
    toWireError,
)
from taskservice.pool import ProcessPool
from taskservice.wire import (
    ATTACH,
    AUTH,
    CANCEL,
    CANCEL_JOB,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_LINE,
    JOB,
    JOB_METHODS,
    JOBS,
    PRE_AUTH_MAX_LINE,
    PROGRESS,
    STATS,
    SUBMIT,
)

if TYPE_CHECKING:
    from taskservice.jobs import JobService

DEFAULT_MAX_IN_FLIGHT = 1000
HOLD_LIMIT = 1024 * 1024
"""Bytes of request lines a connection may have waiting before the server
stops reading from it."""

Response = dict[str, Any] | None

REFUSALS: dict[int, str] = {
    ErrorCode.PARSE_ERROR: "parse_error",
    ErrorCode.INVALID_REQUEST: "invalid_request",
    ErrorCode.METHOD_NOT_FOUND: "method_not_found",
    ErrorCode.INVALID_PARAMS: "invalid_params",
    ErrorCode.TOO_LARGE: "too_large",
    ErrorCode.UNAUTHORISED: "unauthorised",
}
"""The errors the server answers itself, before a call reaches the pool,
by the name it counts them under (L{TaskServerFactory.refused}): the error
class's name (see docs/protocol), in snake case."""


class _Access(Enum):
    """
    A connection's standing: it must authenticate first (C{NEEDS_AUTH}),
    may call (C{OPEN}), or was refused and is closing (C{REFUSED}).
    """

    NEEDS_AUTH = "needs auth"
    OPEN = "open"
    REFUSED = "refused"


@implementer(IHalfCloseableProtocol, IPushProducer)
class TaskServerProtocol(LineProtocol):
    """
    One client connection.

    A client may half-close (C{printf ... | nc}): every call it sent is
    still answered, then the connection is closed.

    Backpressure: a connection has at most C{maxInFlight} calls running or
    queued in the pool, each request of a batch counting as one (a batch
    may hold no more requests than that, nor than the factory's
    C{maxBatch}); further calls wait, parsed, on the connection (in
    order), and past L{HOLD_LIMIT} bytes of those the server stops reading
    from the client, so TCP slows it down. It also stops reading from a
    client that does not read its replies (the protocol is a streaming
    producer for its own transport). C{$/cancelRequest} never waits: a
    client at its limit can always cancel.
    """

    log = Logger()

    def __init__(self, factory: TaskServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.pool = factory.pool
        self.maxInFlight = factory.maxInFlight
        self.maxBatch = min(factory.maxBatch, factory.maxInFlight)
        if factory.token is None:
            self._access = _Access.OPEN
            self.maxLineLength = factory.maxLineLength
        else:
            # Not a byte more than $/auth needs until it has been sent.
            self._access = _Access.NEEDS_AUTH
            self.maxLineLength = min(factory.maxLineLength, PRE_AUTH_MAX_LINE)
        self._readingPaused = False
        self._replyBacklog = False
        self._waiting: deque[tuple[Request | Batch | Invalid, int]] = deque()
        self._waitingBytes = 0
        self._cancelLane = False
        self._inFlight: dict[Any, Deferred[Any]] = {}
        self._seedReplies: deque[list[bytes | None]] = deque()
        self._connected = False
        self._producing = False
        self._readClosed = False
        self._outstanding = 0
        self._pendingBatches = 0
        self._closedWaiters: list[Deferred[None]] = []
        self._jobCalls: set[Deferred[Any]] = set()

    def connectionMade(self) -> None:
        self._connected = True
        self.factory.protocols.add(self)
        cast(IConsumer, self.transport).registerProducer(self, True)
        self._producing = True

    # IPushProducer, for our transport: it calls these when its write
    # buffer fills up and drains.
    def pauseProducing(self) -> None:
        self._replyBacklog = True
        self._updateReading()

    def resumeProducing(self) -> None:
        self._replyBacklog = False
        self._updateReading()

    def stopProducing(self) -> None:
        pass

    def _updateReading(self) -> None:
        transport = self.transport
        if transport is None or not self._connected:
            return
        assert IPushProducer.providedBy(transport)
        if self._readingPaused:
            if not self._replyBacklog and self._waitingBytes <= HOLD_LIMIT // 2:
                self._readingPaused = False
                transport.resumeProducing()
        elif self._replyBacklog or self._waitingBytes > HOLD_LIMIT:
            self._readingPaused = True
            transport.pauseProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is not None and reason.check("OpenSSL.SSL.Error"):
            # A client without an acceptable certificate, mostly.
            self.log.info(
                "task connection from {peer} failed TLS: {error}",
                peer=_peerName(self.transport),
                error=reason.getErrorMessage(),
            )
        self._connected = False
        self.factory.protocols.discard(self)
        # Queued calls of this client will never be answered: drop them.
        # Running ones finish and their results are discarded.
        self._waiting.clear()
        self._waitingBytes = 0
        if self._outstanding:
            # (Else none is in the pool: no need to look through its queue,
            # which a client making one connection per call would make us
            # do for every call.)
            self.pool.dropQueued(owner=self)
            if self.factory.jobs is not None:
                self.factory.jobs.detachAll(owner=self)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    def whenClosed(self) -> Deferred[None]:
        """
        Fire when this connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self._connected:
            self._closedWaiters.append(d)
        else:
            d.callback(None)
        return d

    def readConnectionLost(self) -> None:
        # The client's last bytes are a line, with or without their "\n".
        self.finishInput()
        self._readClosed = True
        self._closeIfDone()

    def writeConnectionLost(self) -> None:
        pass

    def _closeIfDone(self) -> None:
        if (
            self._readClosed
            and not self._outstanding
            and not self._pendingBatches
            and not self._waiting
            and self.transport is not None
        ):
            self.close()

    def close(self) -> None:
        """
        Close the connection once what was written has been sent.

        The protocol is its transport's producer, and a TLS transport does
        not close while it has one: stop being it first.
        """
        if self.transport is None or not self._connected:
            return
        _coalesce.flush(self.transport)
        if self._producing:
            self._producing = False
            cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    # -- input -------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        if self._access is not _Access.OPEN:
            self._authenticate(line)
            return
        message = _jsonrpc.parseLine(line, self.maxBatch)
        if isinstance(message, Invalid) and not message.seed:
            self._refused(message.error)
            self._write(_jsonrpc.errorObject(message.id, message.error))
        elif (
            isinstance(message, Request)
            and message.method == CANCEL
            and not message.seed
        ):
            # The cancel lane: acted on at once, even past maxInFlight, and
            # it may reach calls still waiting on this connection.
            self._cancelLane = True
            try:
                self._start(message)
            finally:
                self._cancelLane = False
        elif self._waiting or self._outstanding + _weight(message) > self.maxInFlight:
            self._waiting.append((message, len(line)))
            self._waitingBytes += len(line)
            self._updateReading()
        else:
            self._start(message)

    def _start(self, message: Request | Batch | Invalid) -> None:
        if isinstance(message, Invalid):
            # A malformed Workerman-dialect line: answered in that dialect,
            # in its turn among the others.
            error = message.error
            self._refused(error)
            answered = self._seedReply(lambda: fail(error))
        elif isinstance(message, Batch):
            # Each request counts while it runs; the batch holds the
            # connection open until its reply is written.
            self._outstanding += len(message.items)
            self._pendingBatches += 1
            self._batch(message).addBoth(self._batchAnswered)
            return
        elif message.seed:
            answered = self._seed(message)
        else:
            # The common case, with as little per call as can be: one
            # callback on the pool's Deferred writes the reply.
            self._outstanding += 1
            self._single(message)
            return
        self._outstanding += 1
        answered.addBoth(self._answered)

    def _answered(self, result: object) -> None:
        self._release()
        self._closeIfDone()

    def _release(self) -> None:
        """
        One call of this connection is done: start what waits for room.
        """
        self._outstanding -= 1
        waiting = self._waiting
        while (
            waiting and self._outstanding + _weight(waiting[0][0]) <= self.maxInFlight
        ):
            message, size = waiting.popleft()
            self._waitingBytes -= size
            self._start(message)
        if self._readingPaused:
            self._updateReading()

    def _itemAnswered(self, response: Response) -> Response:
        self._release()
        return response

    def _batchAnswered(self, result: object) -> None:
        self._pendingBatches -= 1
        self._closeIfDone()

    def lineTooLong(self) -> None:
        if self._access is _Access.REFUSED:
            return
        if self._access is not _Access.OPEN:
            self._refuse(None, "authenticate first: send $/auth with the token")
            return
        limit = self.maxLineLength
        # The id, when the line starts with it, so the caller can match the
        # error to its call; else null.
        requestId = _jsonrpc.leadingId(self.tooLongPrefix)
        if requestId in self._inFlight:
            requestId = None
        error = TooLarge(f"line longer than {limit} bytes discarded", {"limit": limit})
        self._refused(error)
        self._write(_jsonrpc.errorObject(requestId, error))

    def _refused(self, error: TaskServiceError) -> None:
        """
        Count C{error}, answered by the server itself, in
        L{TaskServerFactory.refused}. Only error paths call this.
        """
        self.factory.refused[REFUSALS.get(error.code, "internal_error")] += 1

    # -- authentication ------------------------------------------------------

    def _authenticate(self, line: bytes) -> None:
        """
        A line before the connection has authenticated: only C{$/auth} with
        the right token (alone, not in a batch) opens it; anything else
        refuses it.
        """
        if self._access is _Access.REFUSED:
            return
        message = _jsonrpc.parseLine(line, self.maxBatch)
        if isinstance(message, Request) and message.method == AUTH:
            assert self.factory.token is not None
            if self.factory.token.matches(_authToken(message)):
                self._access = _Access.OPEN
                self.maxLineLength = self.factory.maxLineLength
                if message.seed:
                    self._send(_jsonrpc.line(True))
                elif not message.notification:
                    self._write(_jsonrpc.resultObject(message.id, True))
                return
            self._refuse(message, "wrong or missing token")
        else:
            self._refuse(message, "authenticate first: send $/auth with the token")

    def _refuse(self, message: Request | Invalid | Batch | None, why: str) -> None:
        """
        Answer -32005 (in the dialect of C{message}, with its id if it had
        one) and close the connection once the reply is written.
        """
        self._access = _Access.REFUSED
        error = Unauthorised("unauthorised", why)
        self._refused(error)
        if isinstance(message, Request) and message.seed:
            self._send(_jsonrpc.line({"error": error.toWire()}))
        else:
            requestId = (
                message.id
                if isinstance(message, Request | Invalid)
                and not (isinstance(message, Request) and message.notification)
                else None
            )
            self._write(_jsonrpc.errorObject(requestId, error))
        assert self.transport is not None
        self.log.info(
            "task connection from {peer} refused: {why}",
            peer=_peerName(self.transport),
            why=why,
        )
        self.close()

    def _single(self, request: Request) -> None:
        """
        Run one JSON-RPC request (counted in C{_outstanding}) and write its
        response, if it has one.
        """
        requestId = request.id
        if request.notification:
            d = self._call(request)
            d.addErrback(self._logNotificationFailure, request)
            d.addCallback(self._answered)
        elif requestId in self._inFlight:
            self._write(_jsonrpc.errorObject(requestId, self._duplicate()))
            self._answered(None)
        else:
            d = self._call(request)
            self._inFlight[requestId] = d
            d.addBoth(self._singleFinished, requestId)

    def _singleFinished(self, outcome: Any, requestId: Any) -> None:
        self._inFlight.pop(requestId, None)
        try:
            if isinstance(outcome, Failure):
                self._write(_jsonrpc.errorObject(requestId, self._wireError(outcome)))
            else:
                self._write(_jsonrpc.resultObject(requestId, outcome))
        finally:
            self._answered(None)

    def _duplicate(self) -> InvalidRequest:
        error = InvalidRequest(
            "invalid request",
            "a call with this id is already in flight on this connection",
        )
        self._refused(error)
        return error

    def _batch(self, batch: Batch) -> Deferred[None]:
        """
        Run a batch's requests (counted in C{_outstanding}, each released
        as it finishes) and write the one reply.
        """
        replies: list[Deferred[Response]] = []
        for item in batch.items:
            reply: Deferred[Response]
            if isinstance(item, Invalid):
                self._refused(item.error)
                reply = succeed(_jsonrpc.errorObject(item.id, item.error))
            else:
                reply = self._respond(item)
            replies.append(reply.addBoth(self._itemAnswered))

        def write(responses: list[Response]) -> None:
            answered = [r for r in responses if r is not None]
            if answered:
                self._write(answered)

        return gatherResults(replies).addCallback(write)

    def _seed(self, request: Request) -> Deferred[None]:
        """
        Workerman FAQ dialect: answer with the bare result (or
        C{{"error": ...}}) in the order the calls came.
        """
        return self._seedReply(lambda: self._call(request))

    def _seedReply(self, start: Callable[[], Deferred[Any]]) -> Deferred[None]:
        # The reply's place is taken before the call starts: starting it may
        # finish other calls (and start the next dialect line) at once.
        slot: list[bytes | None] = [None]
        self._seedReplies.append(slot)
        outcome = start()

        def done(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                body: Any = {"error": self._wireError(outcome).toWire()}
            else:
                body = outcome
            slot[0] = _jsonrpc.line(body)
            while self._seedReplies and self._seedReplies[0][0] is not None:
                ready = self._seedReplies.popleft()[0]
                assert ready is not None
                self._send(ready)

        return outcome.addBoth(done)

    # -- calls ---------------------------------------------------------------

    def _respond(self, request: Request) -> Deferred[Response]:
        """
        Run a JSON-RPC request; fire with its response object, or L{None}
        for a notification.
        """
        requestId = request.id
        if not request.notification and requestId in self._inFlight:
            return succeed(_jsonrpc.errorObject(requestId, self._duplicate()))
        d = self._call(request)
        if request.notification:
            d.addErrback(self._logNotificationFailure, request)
            return d.addCallback(lambda _: None)
        self._inFlight[requestId] = d

        def finished(outcome: Any) -> dict[str, Any]:
            self._inFlight.pop(requestId, None)
            if isinstance(outcome, Failure):
                return _jsonrpc.errorObject(requestId, self._wireError(outcome))
            return _jsonrpc.resultObject(requestId, outcome)

        return d.addBoth(finished)

    def _call(self, request: Request) -> Deferred[Any]:
        method = request.method
        if method.startswith("$/"):
            return self._builtin(request)
        onProgress = None
        if not request.notification and not request.seed:
            onProgress = self._progressTo(request.id)
        return self.pool.submit(
            method,
            request.args,
            request.kwargs,
            timeout=request.timeout,
            onProgress=onProgress,
            owner=self,
        )

    def _builtin(self, request: Request) -> Deferred[Any]:
        try:
            if request.method == STATS:
                return succeed(self.factory.stats())
            if request.method == CANCEL:
                self._cancel(request)
                return succeed(None)
            if request.method in JOB_METHODS:
                return self._jobMethod(request)
            if request.method == AUTH:
                # Already open: a token check that changes nothing.
                token = self.factory.token
                if token is None or token.matches(_authToken(request)):
                    return succeed(True)
                raise Unauthorised("unauthorised", "wrong or missing token")
            raise MethodNotFound("method not found", request.method)
        except TaskServiceError as e:
            self._refused(e)
            return fail(e)

    def _jobMethod(self, request: Request) -> Deferred[Any]:
        """
        The durable-job methods, answered by the factory's job service.
        """
        jobs = self.factory.jobs
        if jobs is None:
            raise MethodNotFound(
                "method not found",
                f"{request.method}: this task server keeps no jobs (--jobs-db)",
            )
        if request.seed:
            raise InvalidRequest(
                "invalid request", "job methods are JSON-RPC only (no FAQ dialect)"
            )
        params = _objectParams(request)
        d = callJobMethod(
            jobs,
            self.pool,
            request.method,
            params,
            owner=self,
            onProgress=None if request.notification else self._progressTo(request.id),
        )
        self._jobCalls.add(d)
        return d.addBoth(self._jobCallEnded, d)

    def _jobCallEnded(self, outcome: Any, d: Deferred[Any]) -> Any:
        self._jobCalls.discard(d)
        return outcome

    def _progressTo(self, requestId: Any) -> Callable[[Any], None]:
        """
        Write a task's progress updates as C{$/progress} of C{requestId}.
        """

        def report(update: Any) -> None:
            self._write(
                _jsonrpc.notificationObject(PROGRESS, {**update, "id": requestId})
            )

        return report

    def _cancel(self, request: Request) -> None:
        """
        C{$/cancelRequest}: C{{"id": X}} cancels call X whether it waits or
        runs; with C{"onlyIfQueued": true}, a running call is left to finish
        (what a client that is going away wants).
        """
        target = request.kwargs.get("id") if request.kwargs else None
        if target is None and request.args:
            target = request.args[0]
        onlyIfQueued = bool(request.kwargs.get("onlyIfQueued", False))
        if target is None or not _jsonrpc.validId(target):
            raise InvalidParams(
                "invalid params",
                '$/cancelRequest needs {"id": ...} naming a request id',
            )
        d = self._inFlight.get(target)
        if d is not None:
            if not onlyIfQueued or d in self._jobCalls:
                # (A job method given up on: an attach detaches, and the
                # job is left as it is.)
                d.cancel()
            else:
                self.pool.cancelIfQueued(d)
            return
        if not self._cancelLane:
            # A cancel that waited its turn (in a batch): everything still
            # waiting arrived after it.
            return
        for entry in self._waiting:
            waiting = entry[0]
            if (
                isinstance(waiting, Request)
                and not waiting.notification
                and not waiting.seed
                and waiting.id == target
            ):
                self._waiting.remove(entry)
                self._waitingBytes -= entry[1]
                self._write(_jsonrpc.errorObject(waiting.id, Cancelled()))
                self._closeIfDone()
                return

    # -- output --------------------------------------------------------------

    def _wireError(self, failure: Failure) -> TaskServiceError:
        assert failure.value is not None
        error = toWireError(failure.value)
        if isinstance(error, InternalError) and error is not failure.value:
            self.log.failure("unexpected error handling a call", failure)
        return error

    def _logNotificationFailure(self, failure: Failure, request: Request) -> None:
        error = self._wireError(failure)
        self.log.info(
            "notification {method} failed: {code} {message}",
            method=request.method,
            code=int(error.code),
            message=error.message,
        )

    def _write(self, message: Any) -> None:
        try:
            data = _jsonrpc.line(message)
        except (TypeError, ValueError):
            self.log.failure("could not encode a response")
            requestId = message.get("id") if isinstance(message, dict) else None
            data = _jsonrpc.line(
                _jsonrpc.errorObject(
                    requestId if _encodable(requestId) else None,
                    InternalError(
                        "internal error", "the response could not be encoded"
                    ),
                )
            )
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self._connected and self.transport is not None:
            _coalesce.write(self.transport, data)


class TaskServerFactory(Factory):
    """
    Builds L{TaskServerProtocol}s that run calls in C{pool}.

    @param maxInFlight: calls one connection may have in the pool at once
        (each request of a batch counts).
    @param maxBatch: the most requests a batch may hold (and never more
        than C{maxInFlight}); a larger one is answered -32004.
    @param token: the shared secret every connection must send with
        C{$/auth} before anything else, or L{None} for none (C{$/auth} is
        then answered C{true}).
    """

    protocol = TaskServerProtocol
    noisy = False

    def __init__(
        self,
        pool: ProcessPool,
        *,
        maxLineLength: int = DEFAULT_MAX_LINE,
        maxInFlight: int = DEFAULT_MAX_IN_FLIGHT,
        maxBatch: int = DEFAULT_MAX_BATCH,
        token: Token | str | None = None,
        jobs: JobService | None = None,
    ) -> None:
        self.pool = pool
        self.jobs = jobs
        """The durable-job service answering C{$/submit} and the other job
        methods, or L{None} (they are then "method not found")."""
        self.maxLineLength = maxLineLength
        self.maxInFlight = maxInFlight
        self.maxBatch = maxBatch
        self.token = Token(token) if isinstance(token, str) else token
        self.protocols: set[TaskServerProtocol] = set()
        self.refused: Counter[str] = Counter(dict.fromkeys(REFUSALS.values(), 0))
        """Messages the server answered with an error itself, before they
        reached the pool, by reason (the values of L{REFUSALS})."""
        self._statsProviders: list[Callable[[], Mapping[str, Any]]] = []

    def buildProtocol(self, addr: Any) -> TaskServerProtocol:
        return TaskServerProtocol(self)

    def addStatsProvider(self, provider: Callable[[], Mapping[str, Any]]) -> None:
        """
        Merge C{provider()} (a mapping such as C{{"smtpSink": {"received":
        3}}}) into every C{$/stats} result.
        """
        self._statsProviders.append(provider)

    def stats(self) -> dict[str, Any]:
        stats = self.pool.stats()
        stats["connections"] = len(self.protocols)
        stats["refused"] = dict(self.refused)
        if self.jobs is not None:
            stats["jobs"] = self.jobs.stats()
        for provider in self._statsProviders:
            stats.update(provider())
        return stats


def callJobMethod(
    jobs: JobService,
    pool: ProcessPool,
    method: str,
    params: object,
    *,
    owner: object = None,
    onProgress: Callable[[Any], object] | None = None,
) -> Deferred[Any]:
    """
    Run job method C{method} with its C{params} on C{jobs}: the one place
    the task server and the gateway beside it turn a job method into a
    call of the job service.
    """
    if method == SUBMIT:
        return jobs.submit(parseSubmit(params, pool.registry, pool.maxTimeout))
    if method == JOBS:
        return jobs.jobs(*parseListing(params))
    jobId = parseJobId(params, method)
    if method == JOB:
        return jobs.job(jobId)
    if method == CANCEL_JOB:
        return jobs.cancel(jobId)
    assert method == ATTACH

    def progress(update: Any) -> None:
        if onProgress is not None:
            onProgress({**update, "job": jobId})

    return jobs.attach(jobId, progress, owner)


def _objectParams(request: Request) -> object:
    """
    The params of a request as sent: an object, an array, or L{None}.
    """
    if request.kwargs:
        return request.kwargs
    return list(request.args) if request.args else None


def _weight(message: Request | Batch | Invalid) -> int:
    """
    How many of a connection's C{maxInFlight} C{message} takes: one per
    request of a batch, else one.
    """
    return len(message.items) if isinstance(message, Batch) else 1


def _authToken(request: Request) -> object:
    """
    The token a C{$/auth} request carries: C{{"token": "..."}}.
    """
    return request.kwargs.get("token") if request.kwargs else None


def _peerName(transport: Any) -> str:
    if transport is None:
        return "?"
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return getattr(peer, "name", None) or type(peer).__name__


def _encodable(value: Any) -> bool:
    try:
        _jsonrpc.line(value)
    except (TypeError, ValueError):
        return False
    return True
