"""
Calls spread over several task servers.

L{Balancer} keeps one L{TaskClient} (a persistent, reconnecting connection)
per task server and sends each call to the healthy server with the fewest
calls outstanding (ties taken in turn)::

    servers = Balancer(reactor, ["tcp:10.0.0.1:12345", "tcp:10.0.0.2:12345"])
    servers.startService()
    result = await servers.request("echo", ["hi"])

It has L{TaskClient}'s calling half (C{request}, C{call}, C{abandon}), so the
websocket gateway (C{twistd taskservice --task-server A --task-server B})
uses it in place of one client.

What happens when a server fails:

  - A server whose connection is lost is marked down at once; its client
    reconnects in the background with exponential backoff, and the server
    takes calls again as soon as a connection is accepted.
  - A call that did not run goes to another server not tried yet: one that
    could not be sent (its server was unreachable), one its server refused
    with -32003 (queue full), or with -32006 (its pool is stopping: that
    server then gets no calls until it reconnects, as a restarted server).
  - A call in flight on a server that is lost fails at once with
    L{ServerLost} (-32006): it may or may not have run. If its task is
    declared C{@task(idempotent=True)} on that server (its C{$/stats}
    C{idempotentTasks}, read on every connection), it is sent once more,
    to another healthy server, instead (and if that one cannot take it, the
    caller still hears of the loss).
  - Other answers from a server, errors included (a task that raised, a
    worker lost, a timeout), go to the caller as they are: the server has
    dealt with the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._auth import Token
from taskservice._endpoints import displayName
from taskservice.client import ProgressCallback, TaskClient, callParams
from taskservice.errors import (
    Overloaded,
    ServerLost,
    TaskServiceError,
    Unavailable,
    Unreachable,
)
from taskservice.wire import NO_OPTIONS, STATS, CallOptions, callOptions

__all__ = ["Balancer"]

_log = Logger()

MakeClient = Callable[..., TaskClient]


class _Server:
    """
    One task server as the balancer sees it.
    """

    __slots__ = (
        "calls",
        "client",
        "draining",
        "idempotent",
        "inFlight",
        "name",
        "retried",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.client: TaskClient
        self.inFlight = 0
        self.calls = 0
        self.retried = 0
        self.idempotent: frozenset[str] = frozenset()
        # It answered -32006 itself: its pool is stopping. No calls until
        # it reconnects (a restarted server).
        self.draining = False


class _Call:
    """
    One caller's call: where it went, and whether it may go elsewhere.
    """

    __slots__ = (
        "lost",
        "method",
        "onProgress",
        "options",
        "params",
        "result",
        "retried",
        "server",
        "tried",
        "upstream",
    )

    def __init__(
        self,
        method: str,
        params: Any,
        onProgress: ProgressCallback | None,
        options: CallOptions,
    ) -> None:
        self.method = method
        self.params = params
        self.onProgress = onProgress
        self.options = options
        self.result: Deferred[Any] = Deferred(self._cancel)
        self.server: _Server | None = None
        self.upstream: Deferred[Any] | None = None
        self.tried: list[_Server] = []
        self.retried = False
        self.lost: Failure | None = None

    def _cancel(self, result: Deferred[Any]) -> None:
        if self.upstream is not None:
            self.upstream.cancel()


class Balancer(MultiService):
    """
    A client of several task servers: each call goes to the healthy one
    with the fewest calls outstanding.

    @param reactor: the reactor.
    @param endpoints: the task servers, as endpoint strings (as for
        L{TaskClient}: C{"tcp:host:port"}, C{"tls:host:port:..."},
        C{"unix:path"}) or endpoint objects.
    @param token: the token sent to every server with C{$/auth}.
    @param maxRetryDelay: the longest wait between reconnection attempts.
    @param makeClient: builds each server's client (L{TaskClient}; a fake in
        tests).
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[IStreamClientEndpoint | str],
        *,
        token: Token | str | None = None,
        maxRetryDelay: float = 5.0,
        makeClient: MakeClient = TaskClient,
    ) -> None:
        super().__init__()
        if not endpoints:
            raise ValueError("a balancer needs at least one task server")
        self._reactor = reactor
        self.servers: list[_Server] = []
        self._byClient: dict[int, _Server] = {}
        self._calls: dict[Deferred[Any], _Call] = {}
        self._next = 0
        names: set[str] = set()
        for i, endpoint in enumerate(endpoints):
            name = (
                displayName(endpoint)
                if isinstance(endpoint, str)
                else f"#{i + 1} {type(endpoint).__name__}"
            )
            if name in names:
                name = f"{name} #{i + 1}"
            names.add(name)
            server = _Server(name)
            server.client = makeClient(
                reactor,
                endpoint,
                token=token,
                maxRetryDelay=maxRetryDelay,
                onUp=self._up,
                onDown=self._down,
            )
            server.client.setServiceParent(self)
            self._byClient[id(server.client)] = server
            self.servers.append(server)

    # -- health ------------------------------------------------------------

    def _up(self, client: TaskClient) -> None:
        server = self._byClient[id(client)]
        server.draining = False
        _log.info("task server {server} is up", server=server.name)
        client.request(STATS).addCallbacks(
            lambda stats: self._learn(server, stats),
            lambda failure: _log.info(
                "no $/stats from task server {server}: {error}",
                server=server.name,
                error=failure.getErrorMessage(),
            ),
        )

    def _learn(self, server: _Server, stats: Any) -> None:
        names = stats.get("idempotentTasks") if isinstance(stats, Mapping) else None
        if isinstance(names, list):
            server.idempotent = frozenset(n for n in names if isinstance(n, str))

    def _down(self, client: TaskClient, reason: str | None) -> None:
        server = self._byClient[id(client)]
        _log.warn(
            "task server {server} is down ({reason}); {calls} calls were in"
            " flight there, reconnecting with backoff",
            server=server.name,
            reason=reason,
            calls=server.inFlight,
        )

    def _choose(
        self, exclude: Sequence[_Server], advance: bool = True
    ) -> _Server | None:
        """
        The server the next call goes to: of those not in C{exclude}, the
        ready ones, else those still making their first connection; the
        fewest calls outstanding wins, ties in turn (C{advance}: this call
        takes its turn). L{None} if none.
        """
        candidates = [s for s in self.servers if s not in exclude and not s.draining]
        usable = [s for s in candidates if s.client.ready] or [
            s for s in candidates if not s.client.unreachable
        ]
        if not usable:
            return None
        count = len(self.servers)
        start = self._next

        def rank(server: _Server) -> tuple[int, int]:
            return server.inFlight, (self.servers.index(server) - start) % count

        chosen = min(usable, key=rank)
        if advance:
            self._next = (self.servers.index(chosen) + 1) % count
        return chosen

    # -- calls ---------------------------------------------------------------

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
        Call C{method} on one of the servers (see L{TaskClient.request}).
        Cancelling the Deferred cancels the call where it runs.
        """
        if not self.running:
            return fail(Unreachable("the client is not started"))
        call = _Call(method, params, onProgress, callOptions(options, timeout))
        self._send(call)
        return call.result

    def call(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{method} with positional or keyword arguments (not both).
        """
        return self.request(method, callParams(args, kwargs))

    def abandon(self, d: Deferred[Any]) -> None:
        """
        Give up on a call without stopping it if it already runs (see
        L{TaskClient.abandon}): C{d} fails at once with C{CancelledError}.
        """
        call = self._calls.get(d)
        if call is None or call.server is None or call.upstream is None:
            if not d.called:
                d.cancel()
            return
        call.server.client.abandon(call.upstream)

    def _send(self, call: _Call) -> None:
        server = self._choose(call.tried)
        if server is None:
            call.result.errback(Failure(self._noServer(call)))
            return
        # May raise TypeError (params that cannot be encoded): nothing is
        # counted or kept for the call then.
        upstream = server.client.request(
            call.method, call.params, onProgress=call.onProgress, options=call.options
        )
        call.tried.append(server)
        call.server = server
        server.inFlight += 1
        server.calls += 1
        self._calls[call.result] = call
        call.upstream = upstream
        upstream.addBoth(self._answered, call, server)

    def _noServer(self, call: _Call) -> TaskServiceError:
        reasons = {
            s.name: "stopping" if s.draining else (s.client.lastReason or "connecting")
            for s in self.servers
            if s not in call.tried
        }
        if call.tried:
            return Unreachable(
                "no other task server is reachable",
                {"tried": len(call.tried), "servers": len(self.servers)},
            )
        return Unreachable(
            "no task server is reachable",
            {"reason": "; ".join(f"{n}: {r}" for n, r in reasons.items())},
        )

    def _answered(self, outcome: Any, call: _Call, server: _Server) -> None:
        server.inFlight -= 1
        self._calls.pop(call.result, None)
        call.upstream = None
        if call.result.called:
            return
        if not isinstance(outcome, Failure):
            call.result.callback(outcome)
            return
        if outcome.check(ServerLost):
            if (
                not call.retried
                and call.method in server.idempotent
                and self._choose(call.tried, advance=False) is not None
            ):
                call.retried = True
                call.lost = outcome
                server.retried += 1
                _log.info(
                    "retrying idempotent {method} elsewhere: task server"
                    " {server} was lost with it in flight",
                    method=call.method,
                    server=server.name,
                )
                self._resend(call)
                return
        elif self._didNotRun(outcome, server):
            if self._choose(call.tried, advance=False) is not None:
                # It did not run: another server may take it.
                self._resend(call)
                return
            if call.lost is not None:
                # The first server was lost with it (it may have run there):
                # that is the caller's answer, not this one.
                outcome = call.lost
        call.result.errback(outcome)

    def _resend(self, call: _Call) -> None:
        """
        Send C{call} again, from a callback of its previous attempt: an
        exception (params a client encodes only once connected, say) is the
        caller's answer, not an error of that callback.
        """
        try:
            self._send(call)
        except Exception:
            if not call.result.called:
                call.result.errback(Failure())

    def _didNotRun(self, failure: Failure, server: _Server) -> bool:
        """
        Whether C{failure} says the call did not run: it could not be sent
        (L{Unreachable}), the server's pool is stopping (-32006 from the
        server, which then gets no calls until it reconnects), or its queue
        is full (-32003).
        """
        if failure.check(Unreachable, Overloaded):
            return True
        if type(failure.value) is Unavailable:
            if not server.draining:
                server.draining = True
                _log.info(
                    "task server {server} is stopping: no calls until it is back",
                    server=server.name,
                )
            return True
        return False

    # -- stats ---------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """
        Each server as the balancer sees it: C{server} (its endpoint, without
        key or certificate paths), C{up} (connected, and not stopping),
        C{inFlight}, C{calls} sent there,
        C{retried} (idempotent calls sent elsewhere when it was lost).
        """
        return [
            {
                "server": s.name,
                "up": s.client.ready and not s.draining,
                "inFlight": s.inFlight,
                "calls": s.calls,
                "retried": s.retried,
            }
            for s in self.servers
        ]
