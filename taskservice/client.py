"""
The Twisted client of the task protocol.

L{TaskClient} keeps one persistent connection (reconnecting with backoff)
and multiplexes any number of calls over it::

    client = TaskClient(reactor, "tcp:127.0.0.1:12345")
    client.startService()
    result = await client.call("echo", "hi")

Connections are opened with an endpoint (string or object) through
L{ClientService}, rather than C{ClientCreator}: the same code then speaks TCP,
TLS or UNIX sockets, and reconnection with backoff comes with it.

Every connection L{TaskClient} makes starts with C{$/auth} (with the token,
when it has one); calls are sent right behind it. Its answer tells that the
connection works end to end: a connection lost before it (a refused token, a
TLS failure that TLS 1.3 reports only after the handshake) counts as a failed
attempt, so reconnection keeps backing off instead of spinning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _coalesce, _json, _jsonrpc
from taskservice._auth import AUTH, Token
from taskservice._jobclient import Job, submitJob
from taskservice._lines import LineProtocol
from taskservice._tls import describeTLSFailure
from taskservice.errors import (
    ErrorCode,
    ServerLost,
    TaskServiceError,
    Unauthorised,
    Unavailable,
    Unreachable,
    fromWireError,
)

ProgressCallback = Callable[[dict[str, Any]], object]
CLIENT_MAX_LINE = 1 << 30


class _Pending:
    __slots__ = ("deferred", "onProgress")

    def __init__(self, deferred: Deferred[Any], onProgress: ProgressCallback | None):
        self.deferred = deferred
        self.onProgress = onProgress


class TaskClientProtocol(LineProtocol):
    """
    One connection to a task server; calls are matched to responses by id.

    @param authenticate: send C{$/auth} first (always so with a C{token});
        calls may be sent right behind it. If the server refuses it, every
        call in flight and every later call fails with L{Unauthorised}, and
        the connection is closed.
    @param token: the server's shared secret, or L{None}.
    @param onReady: called with this protocol once C{$/auth} succeeded.

    @ivar ready: C{True} once the server accepted C{$/auth} (at once when
        not authenticating).
    @ivar refusal: the L{Unauthorised} error the server refused with, or
        L{None}.
    @ivar lostReason: why the connection was lost, in words, once it is.
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
        self._token = Token(token) if isinstance(token, str) else token
        self._authenticate = authenticate or self._token is not None
        self._authId: int | None = None
        self.ready = not self._authenticate
        self.refusal: TaskServiceError | None = None
        self.lostReason: str | None = None
        self._givenUp: set[object] = set()
        self._pending: dict[int, _Pending] = {}
        self._nextId = 1
        self._lost: Failure | None = None

    @property
    def inFlight(self) -> int:
        return len(self._pending)

    def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        onProgress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Call C{method} with C{params} (a list, a dict, or L{None}).

        Cancelling the returned Deferred sends C{$/cancelRequest}: the
        server removes the call from its queue, or kills the worker running
        it. The Deferred then fails with C{CancelledError}.

        @param timeout: the caller's own deadline in seconds (the request's
            C{"timeout"} member), or L{None} for the task's default.
        """
        if self.refusal is not None:
            return fail(_copy(self.refusal))
        if self._lost is not None or self.transport is None:
            return fail(Unreachable("not connected to the task server"))
        requestId = self._nextId
        self._nextId += 1
        message = _jsonrpc.requestObject(
            requestId, method, list(params) if isinstance(params, tuple) else params
        )
        if timeout is not None:
            message["timeout"] = timeout
        try:
            data = _jsonrpc.line(message)
        except (TypeError, ValueError) as e:
            raise TypeError(f"params are not JSON-serialisable: {e}") from None

        def cancel(d: Deferred[Any]) -> None:
            if self._pending.pop(requestId, None) is not None and self.transport:
                self._givenUp.add(requestId)
                _coalesce.write(
                    self.transport,
                    _jsonrpc.line(
                        _jsonrpc.notificationObject(
                            "$/cancelRequest", {"id": requestId}
                        )
                    ),
                )

        d: Deferred[Any] = Deferred(cancel)
        self._pending[requestId] = _Pending(d, onProgress)
        _coalesce.write(self.transport, data)
        return d

    def connectionMade(self) -> None:
        if self._authenticate:
            assert self.transport is not None
            self._authId = self._nextId
            self._nextId += 1
            params = None if self._token is None else {"token": self._token.reveal()}
            _coalesce.write(
                self.transport,
                _jsonrpc.line(_jsonrpc.requestObject(self._authId, AUTH, params)),
            )
        if self._onMade is not None:
            self._onMade(self)

    def _authAnswered(self, message: dict[str, Any]) -> None:
        """
        The server's answer to our C{$/auth}: C{true} opens the connection;
        anything else refuses it (a server of a version without C{$/auth},
        -32601, is fine when we have no token to prove).
        """
        self._authId = None
        error = message.get("error")
        if error is None and message.get("result") is True:
            self._becomeReady()
            return
        refusal = fromWireError(error) if error is not None else None
        if (
            self._token is None
            and refusal is not None
            and refusal.code == ErrorCode.METHOD_NOT_FOUND
        ):
            self._becomeReady()
            return
        if not isinstance(refusal, Unauthorised):
            refusal = Unauthorised(
                "unauthorised", {"reason": "the task server did not accept $/auth"}
            )
        self.refusal = refusal
        self.log.error(
            "the task server refused this client: {code} {message} ({detail})",
            code=int(refusal.code),
            message=refusal.message,
            detail=refusal.data,
        )
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.deferred.errback(Failure(_copy(refusal)))
        assert self.transport is not None
        _coalesce.flush(self.transport)
        self.transport.loseConnection()

    def _becomeReady(self) -> None:
        self.ready = True
        if self._onReady is not None:
            self._onReady(self)

    def abandon(self, d: Deferred[Any]) -> None:
        """
        Give up on the call behind C{d} without stopping it if it already
        runs: the server drops it if it is still queued, otherwise lets it
        finish. C{d} fails at once with C{CancelledError}; a late answer is
        ignored.
        """
        for requestId, pending in self._pending.items():
            if pending.deferred is d:
                del self._pending[requestId]
                self._givenUp.add(requestId)
                if self.transport is not None:
                    _coalesce.write(
                        self.transport,
                        _jsonrpc.line(
                            _jsonrpc.notificationObject(
                                "$/cancelRequest",
                                {"id": requestId, "onlyIfQueued": True},
                            )
                        ),
                    )
                d.errback(Failure(CancelledError()))
                return

    def lineReceived(self, line: bytes) -> None:
        try:
            message = _json.loads(line)
        except _json.DecodeError as e:
            self.log.error("undecodable line from the task server: {error}", error=e)
            return
        for item in message if isinstance(message, list) else [message]:
            self._messageReceived(item)

    def _messageReceived(self, message: Any) -> None:
        if not isinstance(message, dict):
            self.log.error("unexpected message from the task server: {m!r}", m=message)
            return
        if message.get("method") == "$/progress":
            params = message.get("params")
            if isinstance(params, dict):
                pending = self._pending.get(params.get("id"))  # type: ignore[arg-type]
                if pending is not None and pending.onProgress is not None:
                    update = {k: v for k, v in params.items() if k != "id"}
                    pending.onProgress(update)
            return
        requestId = message.get("id")
        if self._authId is not None and (
            requestId == self._authId
            or (requestId is None and _errorCode(message) == ErrorCode.UNAUTHORISED)
        ):
            self._authAnswered(message)
            return
        if self.refusal is not None:
            return
        pending = (
            self._pending.pop(requestId, None) if isinstance(requestId, int) else None
        )
        if pending is None:
            if requestId in self._givenUp:
                # The one late answer to a call we cancelled or abandoned.
                self._givenUp.discard(requestId)
                return
            if "error" in message:
                error = fromWireError(message["error"])
                self.log.error(
                    "error from the task server for no call of ours: {error!r}",
                    error=error,
                )
            return
        if "error" in message:
            pending.deferred.errback(Failure(fromWireError(message["error"])))
        else:
            pending.deferred.callback(message.get("result"))

    def lineTooLong(self) -> None:
        self.log.error(
            "a response longer than {limit} bytes; closing the connection",
            limit=self.maxLineLength,
        )
        assert self.transport is not None
        _coalesce.flush(self.transport)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = reason or Failure(Unavailable())
        pending, self._pending = self._pending, {}
        why = "closed"
        if reason is not None:
            tls = describeTLSFailure(reason)
            why = tls or reason.getErrorMessage()
            if tls is None and self._authId is not None:
                why += (
                    " (before the server answered $/auth: a TLS port, which needs"
                    " tls:, or not a task server?)"
                )
        self.lostReason = why
        for call in pending.values():
            call.deferred.errback(
                Failure(
                    ServerLost(
                        "connection to the task server lost",
                        {"reason": why},
                    )
                )
            )
        if self._onLost is not None:
            self._onLost(self)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, client: TaskClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> TaskClientProtocol:
        protocol = TaskClientProtocol(
            onMade=self.client._connected,
            onLost=self.client._disconnected,
            authenticate=True,
            token=self.client._token,
            onReady=self.client._ready,
        )
        protocol.factory = self
        return protocol


class TaskClient(Service):
    """
    A persistent, multiplexed, reconnecting client of one task server.

    A service: start it (or add it to a service tree) before calling. While
    the server is known to be unreachable, calls fail at once with
    L{Unavailable}; reconnection goes on in the background with exponential
    backoff.

    @param reactor: the reactor (for time and connections).
    @param endpoint: an L{IStreamClientEndpoint} or an endpoint string such
        as C{"tcp:127.0.0.1:12345"}, C{"unix:/run/tasks.sock"} or, for mutual
        TLS, C{"tls:tasks.example.com:12345:trustRoots=/etc/tasks/ca:"
        "certificate=/etc/tasks/client.pem:privateKey=/etc/tasks/client.key"}.
    @param token: the task server's shared secret, sent with C{$/auth} first
        on every connection; L{None} for none.

    Each connection starts with C{$/auth}. If the server refuses it, the
    calls in flight fail with L{Unauthorised}, and so does every call made
    until a connection is accepted; reconnection goes on, backing off.

    @param onUp: called with this client each time a connection is
        accepted by the server (its C{$/auth} answered).
    @param onDown: called with this client and the reason, in words, each
        time an accepted connection is lost.

    @ivar endpoint: the endpoint it connects with.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint | str,
        *,
        maxRetryDelay: float = 5.0,
        token: Token | str | None = None,
        onUp: Callable[[TaskClient], object] | None = None,
        onDown: Callable[[TaskClient, str | None], object] | None = None,
    ) -> None:
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        assert IStreamClientEndpoint.providedBy(endpoint)
        self.endpoint = endpoint
        self._onUp = onUp
        self._onDown = onDown
        self._reactor = reactor
        self._token = Token(token) if isinstance(token, str) else token
        self._protocol: TaskClientProtocol | None = None
        self._unreachable = False
        self._refusal: TaskServiceError | None = None
        self._lastReason: str | None = None
        # Connections lost before the server accepted their $/auth, in a
        # row: ClientService counts them as successes (TCP connected), so
        # the retry policy adds them to its own count of failed attempts.
        self._unprovenLosses = 0
        policy = backoffPolicy(initialDelay=0.1, maxDelay=maxRetryDelay)
        self._service = ClientService(
            endpoint,
            _ClientFactory(self),
            retryPolicy=lambda attempt: policy(attempt + self._unprovenLosses),
            clock=reactor,
        )

    def _connected(self, protocol: TaskClientProtocol) -> None:
        self._protocol = protocol
        self._unreachable = False

    def _ready(self, protocol: TaskClientProtocol) -> None:
        self._unprovenLosses = 0
        self._refusal = None
        self._lastReason = None
        if self._onUp is not None:
            self._onUp(self)

    def _disconnected(self, protocol: TaskClientProtocol) -> None:
        if not protocol.ready:
            self._unprovenLosses += 1
        if protocol.refusal is not None:
            self._refusal = protocol.refusal
        self._lastReason = protocol.lostReason
        if self._protocol is protocol:
            self._protocol = None
            self._unreachable = True
        if protocol.ready and self._onDown is not None:
            self._onDown(self, protocol.lostReason)

    @property
    def ready(self) -> bool:
        """
        Connected, and the server accepted this client: calls go out now.
        """
        return self._protocol is not None and self._protocol.ready

    @property
    def unreachable(self) -> bool:
        """
        Known to be down (its last connection or attempt failed): calls fail
        at once with L{Unreachable} until a connection is made again. Before
        the first attempt has ended, neither this nor L{ready} is true.
        """
        return self._unreachable

    @property
    def lastReason(self) -> str | None:
        """
        Why the last connection or attempt failed, in words, or L{None}.
        """
        return self._lastReason

    def _attemptFailed(self, failure: Failure) -> Failure:
        self._unreachable = True
        if failure.check(CancelledError):
            return failure
        self._lastReason = failure.getErrorMessage()
        return Failure(
            Unreachable(
                "the task server is unreachable", {"reason": failure.getErrorMessage()}
            )
        )

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            # What was written this pass (a cancel, say) leaves before the
            # connection is closed.
            _coalesce.flush(protocol.transport)
        return self._service.stopService()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{method} with positional or keyword arguments (JSON-RPC has no
        form for both at once: passing both raises L{TypeError}).
        """
        return self.request(method, callParams(args, kwargs))

    def abandon(self, d: Deferred[Any]) -> None:
        """
        Give up on a call without stopping it if it already runs (see
        L{TaskClientProtocol.abandon}): for callers that are going away.
        """
        if self._protocol is not None:
            self._protocol.abandon(d)
        if not d.called:
            d.cancel()

    def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        onProgress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Call C{method} with C{params} as they go on the wire; C{onProgress}
        receives each progress update (a dict such as C{{"done": 3,
        "total": 10}}); C{timeout} is the caller's own deadline in seconds.
        Cancelling the Deferred cancels the task.
        """
        if not self.running:
            return fail(Unreachable("the client is not started"))
        if self._protocol is not None:
            return self._protocol.request(
                method, params, onProgress=onProgress, timeout=timeout
            )
        if self._unreachable:
            if self._refusal is not None:
                return fail(_copy(self._refusal))
            return fail(
                Unreachable(
                    "the task server is unreachable",
                    None if self._lastReason is None else {"reason": self._lastReason},
                )
            )
        # The first connection is being made: wait for it (or its failure).
        waiting = self._service.whenConnected(failAfterFailures=1)
        waiting.addErrback(self._attemptFailed)

        def send(protocol: IProtocol) -> Deferred[Any]:
            assert isinstance(protocol, TaskClientProtocol)
            return protocol.request(
                method, params, onProgress=onProgress, timeout=timeout
            )

        waiting.addCallback(send)
        result: Deferred[Any] = Deferred(lambda d: waiting.cancel())

        def relay(outcome: Any) -> None:
            # whenConnected fires from inside ClientService's state machine,
            # which must not be re-entered (say, by a caller stopping the
            # client when its call fails): resume the caller afterwards.
            if not result.called:
                self._reactor.callLater(0, _fire, result, outcome)

        waiting.addBoth(relay)
        return result

    def submit(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Deferred[Job]:
        """
        Submit a durable job (C{$/submit}, see docs/jobs): fire with its
        L{Job} handle once the server has it on disk. C{options}: C{key},
        C{delay}, C{at}, C{retries}, C{backoff}, C{timeout}, and
        C{onProgress} for the handle's C{result()}.
        """
        return submitJob(self, method, params, **options)

    def attach(self, jobId: str, onProgress: ProgressCallback | None = None) -> Job:
        """
        A L{Job} handle for a job submitted earlier (by anyone): its
        C{result()} waits for the job's end (C{$/attach}).
        """
        return Job(self, jobId, onProgress)


def callParams(args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """
    The JSON-RPC params of a call made with C{args} or C{kwargs}: JSON-RPC
    has no form for both at once, so passing both raises L{TypeError}.
    """
    if args and kwargs:
        raise TypeError(
            "JSON-RPC params are by position or by name, not both; "
            "use positional or keyword arguments only"
        )
    return kwargs if kwargs else list(args)


def _errorCode(message: dict[str, Any]) -> object:
    error = message.get("error")
    return error.get("code") if isinstance(error, dict) else None


def _copy(error: TaskServiceError) -> TaskServiceError:
    """
    A fresh exception like C{error}, for one more caller.
    """
    copy = type(error)(error.message, error.data)
    copy.code = error.code
    return copy


def _fire(d: Deferred[Any], outcome: Any) -> None:
    if d.called:
        return
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)
