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

from taskservice import _coalesce
from taskservice._auth import Token
from taskservice._clientcore import ProgressCallback, copyError
from taskservice._clientprotocol import TaskClientProtocol
from taskservice._jobclient import Job, submitJob
from taskservice.errors import TaskServiceError, Unreachable
from taskservice.wire import (
    CLIENT_MAX_LINE,
    NO_OPTIONS,
    CallOptions,
    callOptions,
    callParams,
)

__all__ = [
    "CLIENT_MAX_LINE",
    "ProgressCallback",
    "TaskClient",
    "TaskClientProtocol",
    "callParams",
]


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
        options: CallOptions = NO_OPTIONS,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Call C{method} with C{params} as they go on the wire; C{onProgress}
        receives each progress update (a dict such as C{{"done": 3,
        "total": 10}}); C{options} says how the call is to run
        (L{CallOptions}: its C{timeout} is the caller's own deadline in
        seconds), and C{timeout} is shorthand for C{options=CallOptions(
        timeout=...)}. Cancelling the Deferred cancels the task.
        """
        options = callOptions(options, timeout)
        if not self.running:
            return fail(Unreachable("the client is not started"))
        if self._protocol is not None:
            return self._protocol.request(
                method, params, onProgress=onProgress, options=options
            )
        if self._unreachable:
            if self._refusal is not None:
                return fail(copyError(self._refusal))
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
                method, params, onProgress=onProgress, options=options
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


def _fire(d: Deferred[Any], outcome: Any) -> None:
    if d.called:
        return
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)
