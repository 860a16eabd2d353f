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

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice import _coalesce
from taskservice._auth import Token
from taskservice._call import Call, CallSink
from taskservice._defaults import DEFAULT_MAX_IN_FLIGHT
from taskservice._jobrequest import callJobMethod
from taskservice._jsonrpc import Request
from taskservice._lines import LineProtocol
from taskservice._session import HOLD_LIMIT, Progress, Session, SessionConfig
from taskservice.errors import ErrorCode, MethodNotFound, TaskServiceError
from taskservice.pool import ProcessPool
from taskservice.wire import (
    CANCEL,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_LINE,
    PROGRESS,
    STATS,
)

if TYPE_CHECKING:
    from taskservice.jobs import JobService

__all__ = [
    "CANCEL",
    "DEFAULT_MAX_IN_FLIGHT",
    "HOLD_LIMIT",
    "PROGRESS",
    "REFUSALS",
    "STATS",
    "TaskServerFactory",
    "TaskServerProtocol",
    "callJobMethod",
]


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


# Ends that are no TLS failure (checked first: quicker than by class name).
_CLEAN_ENDS = (ConnectionDone, ConnectionLost)


@implementer(IHalfCloseableProtocol, IPushProducer)
class TaskServerProtocol(LineProtocol):
    """
    One client connection: lines in and out of a L{Session}, whose calls
    run in the factory's pool.

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

    # (Class defaults: a connection that makes one call sets few of them.)
    _readingPaused = False
    _replyBacklog = False
    _inputHeld = False
    _connected = False
    _producing = False
    _inputEnded = False
    _closedWaiters: list[Deferred[None]] | None = None

    def __init__(self, factory: TaskServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.pool = factory.pool
        self.session = Session(self, factory.sessionConfig())

    @property
    def maxLineLength(self) -> int:
        # The session's: a connection that must authenticate first gets not
        # a byte more than $/auth needs.
        return self.session.maxLineLength

    @maxLineLength.setter
    def maxLineLength(self, value: int) -> None:
        self.session.maxLineLength = value

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
        pause = self._replyBacklog or self._inputHeld
        if pause != self._readingPaused:
            self._readingPaused = pause
            if pause:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if (
            reason is not None
            and reason.type not in _CLEAN_ENDS
            and reason.check("OpenSSL.SSL.Error")
        ):
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
        self.session.connectionLost()
        if self.session.outstanding:
            # (Else none is in the pool: no need to look through its queue,
            # which a client making one connection per call would make us
            # do for every call.)
            self.pool.dropQueued(owner=self)
            if self.factory.jobs is not None:
                self.factory.jobs.detachAll(owner=self)
        waiters, self._closedWaiters = self._closedWaiters, None
        for d in waiters or ():
            d.callback(None)

    def whenClosed(self) -> Deferred[None]:
        """
        Fire when this connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self._connected:
            if self._closedWaiters is None:
                self._closedWaiters = []
            self._closedWaiters.append(d)
        else:
            d.callback(None)
        return d

    def readConnectionLost(self) -> None:
        # The client's last bytes are a line, with or without their "\n".
        self._inputEnded = True
        self.finishInput()
        self.session.inputEnded()

    def writeConnectionLost(self) -> None:
        pass

    def lineReceived(self, line: bytes) -> None:
        if line.strip():
            self.session.messageReceived(line)

    def lineTooLong(self) -> None:
        self.session.messageTooLong(self.tooLongPrefix)

    # -- SessionHost -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._connected and self.transport is not None:
            _coalesce.write(self.transport, data + b"\n")

    def call(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        return self.pool.submit(
            request.method,
            request.args,
            request.kwargs,
            options=request.options,
            onProgress=onProgress,
            owner=self,
        )

    def startCall(self, request: Request, sink: CallSink, tag: Any) -> Call:
        """
        The lean lane (see L{taskservice._sessionhost.Lane}).
        """
        return self.pool.start(
            request.method,
            request.args,
            request.kwargs,
            request.options,
            sink,
            tag,
            self,
        )

    def stats(self) -> Deferred[Any]:
        return succeed(self.factory.stats())

    def jobMethod(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        """
        The durable-job methods, answered by the factory's job service.
        """
        jobs = self.factory.jobs
        if jobs is None:
            raise MethodNotFound(
                "method not found",
                f"{request.method}: this task server keeps no jobs (--jobs-db)",
            )
        return callJobMethod(
            jobs,
            self.pool,
            request.method,
            _objectParams(request),
            owner=self,
            onProgress=onProgress,
        )

    def cancel(self, call: Deferred[Any], onlyIfQueued: bool) -> None:
        if onlyIfQueued:
            self.pool.cancelIfQueued(call)
        else:
            call.cancel()

    def error(self, error: TaskServiceError, *, refused: bool, answered: bool) -> None:
        if refused:
            self.factory.refused[REFUSALS.get(error.code, "internal_error")] += 1

    def holdInput(self, hold: bool) -> None:
        self._inputHeld = hold
        self._updateReading()

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
        # Half-closed by the client and all sent: closed now, not a pass later.
        if not (self._inputEnded and _coalesce.closeNow(self.transport)):
            self.transport.loseConnection()

    def refuseConnection(self, why: str) -> None:
        self.log.info(
            "task connection from {peer} refused: {why}",
            peer=_peerName(self.transport),
            why=why,
        )
        self.close()


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
        self._sessionConfig: SessionConfig | None = None
        self._sessionConfigKey: tuple[Any, ...] = ()

    def buildProtocol(self, addr: Any) -> TaskServerProtocol:
        return TaskServerProtocol(self)

    def sessionConfig(self) -> SessionConfig:
        """
        The rules of a new connection's session (read at each connection:
        the limits and the token may be changed meanwhile).
        """
        key = (self.maxInFlight, self.maxBatch, self.maxLineLength, self.token)
        if self._sessionConfig is None or key != self._sessionConfigKey:
            # (Made again only when a limit or the token changed.)
            self._sessionConfigKey = key
            self._sessionConfig = SessionConfig(
                maxInFlight=self.maxInFlight,
                maxBatch=self.maxBatch,
                maxLineLength=self.maxLineLength,
                token=self.token,
            )
        return self._sessionConfig

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


def _objectParams(request: Request) -> object:
    """
    The params of a request as sent: an object, an array, or L{None}.
    """
    if request.kwargs:
        return request.kwargs
    return list(request.args) if request.args else None


def _peerName(transport: Any) -> str:
    if transport is None:
        return "?"
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return getattr(peer, "name", None) or type(peer).__name__
