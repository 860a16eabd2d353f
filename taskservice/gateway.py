"""
The websocket gateway: browsers call tasks over a websocket.

::

    browser ──ws──> GatewayProtocol ──TaskClient (one connection)──> task server

Each websocket text message is JSON-RPC 2.0, as on the task protocol: a
request, a notification or a batch. Every browser's calls share the
gateway's one persistent, multiplexed L{TaskClient} connection; the client
allocates its own request ids, and each browser is answered with its own
ids, so two browsers using the same id never meet. C{$/progress}
notifications go to the browser that asked, C{$/cancelRequest} cancels that
browser's call, and a browser that goes away abandons its calls (queued ones
are dropped, running ones finish unheard).

L{GatewaySite} (or L{makeGatewayResource}, to mount it in a site of your
own) serves the websocket at C{/ws}, C{/stats} as JSON, C{/metrics} for
Prometheus, and the page and its JavaScript client from C{taskservice/web/}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from importlib.abc import Traversable
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from taskservice._gatewayprotocol import RETRY_AFTER, GatewayProtocol
from taskservice._origins import parseOrigin, sameOrigin
from taskservice._poolcaller import PoolCaller
from taskservice._web import FilesResource, StatsResource, defaultWebRoot, loadFiles
from taskservice.errors import (
    InternalError,
    TaskServiceError,
    Unavailable,
    outcomeOf,
    toWireError,
)
from taskservice.metrics import MetricsResource, makeRegistry
from taskservice.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BROWSER_CALLS,
    DEFAULT_MAX_MESSAGE,
    NO_OPTIONS,
    STATS,
    CallOptions,
)

if TYPE_CHECKING:
    from taskservice._dashfeed import DashboardFeed

__all__ = [
    "DEFAULT_MAX_BROWSER_CALLS",
    "DEFAULT_MAX_MESSAGE",
    "RETRY_AFTER",
    "GatewayFactory",
    "GatewayProtocol",
    "GatewaySite",
    "TaskCaller",
    "makeGatewayResource",
]

DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 10.0
STATS_TIMEOUT = 5.0
GOING_AWAY = 1001

StatsProvider = Callable[[], Mapping[str, Any]]

_log = Logger()


class TaskCaller(Protocol):
    """
    What the gateway needs of its upstream: L{TaskClient}'s calling half.
    """

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        onProgress: Callable[[dict[str, Any]], object] | None = None,
        options: CallOptions = NO_OPTIONS,
    ) -> Deferred[Any]: ...

    def abandon(self, d: Deferred[Any]) -> None: ...


class _ReactorTimer:
    """
    Autobahn's timer seam (C{factory._batched_timer}) on the injected
    reactor, instead of txaio's global loop.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(
        self, delay: float, f: Callable[..., object], *a: Any, **kw: Any
    ) -> Any:
        return self._reactor.callLater(delay, f, *a, **kw)


class GatewayFactory(WebSocketServerFactory):
    """
    Builds a L{GatewayProtocol} per browser, all calling through C{client}.

    @param reactor: for timers (auto-ping, handshake and close timeouts).
    @param client: the upstream, a started L{TaskClient} (or anything with
        its C{request} and C{abandon}).
    @param allowedOrigins: origins (C{"https://example.com:8443"}) allowed
        besides the page's own, or C{"*"} for any. A browser that sends no
        C{Origin} (not a browser) is allowed.
    @param maxMessageSize: the largest message (and frame) a browser may
        send, in bytes; past it the connection is closed with code 1009.
    @param maxBrowserCalls: calls one browser may have in flight; past it a
        call is answered -32003 (overloaded) with C{data.retryAfter}.
    @param maxBatch: the most requests one batch may hold, and never more
        than C{maxBrowserCalls} (each counts against it); a larger batch is
        answered -32004 whole, as by the task server.
    """

    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        client: TaskCaller,
        *,
        allowedOrigins: Iterable[str] = (),
        maxMessageSize: int = DEFAULT_MAX_MESSAGE,
        maxBrowserCalls: int = DEFAULT_MAX_BROWSER_CALLS,
        maxBatch: int = DEFAULT_MAX_BATCH,
        autoPingInterval: float = DEFAULT_PING_INTERVAL,
        autoPingTimeout: float = DEFAULT_PING_TIMEOUT,
        statsTimeout: float = STATS_TIMEOUT,
    ) -> None:
        super().__init__(server="taskservice", reactor=reactor)
        self._batched_timer = _ReactorTimer(reactor)
        self.client = client
        # The task server's pool in this process: called with no client
        # in between (see PoolCaller.submitRequest).
        self.lane = client if isinstance(client, PoolCaller) else None
        self.maxMessageSize = maxMessageSize
        self.maxBrowserCalls = maxBrowserCalls
        self.maxBatch = maxBatch
        self.statsTimeout = statsTimeout
        self.anyOrigin = False
        self.extraOrigins: set[tuple[str, str, int] | str] = set()
        for origin in allowedOrigins:
            self.allowOrigin(origin)
        self.setProtocolOptions(
            maxFramePayloadSize=maxMessageSize,
            maxMessagePayloadSize=maxMessageSize,
            failByDrop=False,
            autoPingInterval=autoPingInterval,
            autoPingTimeout=autoPingTimeout,
            webStatus=False,
            # Autobahn lets every origin through; checkOrigin decides (403).
            allowNullOrigin=True,
        )
        self.browsers: set[GatewayProtocol] = set()
        self.inFlight = 0
        self.counters = dict.fromkeys(
            (
                "messages",
                "calls",
                "errors",
                "overloaded",
                "cancelled",
                "abandoned",
                "deniedOrigins",
            ),
            0,
        )
        self.callOutcomes: Counter[str] = Counter()
        self._statsProviders: list[StatsProvider] = []
        self._emptyWaiters: list[Deferred[None]] = []

    # -- origins -------------------------------------------------------------

    def allowOrigin(self, origin: str) -> None:
        """
        Also allow C{origin} (C{scheme://host[:port]}, C{"null"}, or C{"*"}
        for any); L{ValueError} if it is none of these.
        """
        if origin == "*":
            self.anyOrigin = True
        elif origin == "null":
            self.extraOrigins.add("null")
        else:
            parsed = parseOrigin(origin)
            if parsed is None:
                raise ValueError(f"not an http(s) origin: {origin!r}")
            self.extraOrigins.add(parsed)

    def checkOrigin(self, request: ConnectionRequest) -> None:
        """
        Refuse (HTTP 403) a browser whose C{Origin} is neither the page's
        own (the C{Host} it asked for) nor allowed.
        """
        origin = request.origin
        if not origin or self.anyOrigin:
            return
        if origin.strip().lower() == "null":
            if "null" in self.extraOrigins:
                return
        else:
            parsed = parseOrigin(origin)
            if parsed is not None and (
                parsed in self.extraOrigins
                or sameOrigin(parsed, request.headers.get("host", ""))
            ):
                return
        self.counters["deniedOrigins"] += 1
        _log.info(
            "websocket from {peer} refused: origin {origin} not allowed",
            peer=request.peer,
            origin=origin,
        )
        raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")

    # -- browsers ------------------------------------------------------------

    def _opened(self, browser: GatewayProtocol) -> None:
        self.browsers.add(browser)

    def _closed(self, browser: GatewayProtocol) -> None:
        self.browsers.discard(browser)
        if not self.browsers:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Close every browser's websocket (code 1001, going away); fire when
        all are closed. Autobahn drops a browser that does not answer the
        close within its close-handshake timeout.
        """
        d: Deferred[None] = Deferred()
        if not self.browsers:
            d.callback(None)
            return d
        self._emptyWaiters.append(d)
        for browser in list(self.browsers):
            browser.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server shutting down")
        return d

    def _callEnded(self, error: TaskServiceError | None) -> None:
        """
        A call sent upstream was answered: count its outcome.
        """
        self.callOutcomes["ok" if error is None else outcomeOf(error)] += 1

    # -- stats ---------------------------------------------------------------

    def addStatsProvider(self, provider: StatsProvider) -> None:
        """
        Merge C{provider()} (a mapping such as C{{"smtpSink": {"received":
        3}}}) into every stats document.
        """
        self._statsProviders.append(provider)

    def stats(self) -> dict[str, Any]:
        """
        The gateway's own counters.
        """
        return {
            "connections": len(self.browsers),
            "inFlight": self.inFlight,
            **self.counters,
            "maxBrowserCalls": self.maxBrowserCalls,
            "maxMessageSize": self.maxMessageSize,
        }

    def statsDocument(self) -> Deferred[dict[str, Any]]:
        """
        C{{"gateway": ..., "taskServer": ...}} plus every provider's
        mapping; C{"taskServer"} is the task server's C{$/stats} (with
        several, the one that answered), or C{{"error": ...}} when it cannot
        be had. With several task servers (a L{Balancer}), C{"taskServers"}
        lists each as the gateway sees it (up, calls in flight).
        """
        upstream = self.client.request(STATS)
        upstream.addTimeout(self.statsTimeout, self.reactor)

        def taskServerError(failure: Failure) -> dict[str, Any]:
            assert failure.value is not None
            error = toWireError(failure.value)
            if isinstance(error, InternalError) and error is not failure.value:
                error = Unavailable(
                    "no stats from the task server",
                    {"reason": failure.getErrorMessage()},
                )
            return {"error": error.toWire()}

        def document(taskServer: Any) -> dict[str, Any]:
            result: dict[str, Any] = {"gateway": self.stats(), "taskServer": taskServer}
            status = getattr(self.client, "status", None)
            if status is not None:
                result["taskServers"] = status()
            for provider in self._statsProviders:
                try:
                    result.update(provider())
                except Exception:
                    _log.failure("a stats provider failed")
            return result

        return upstream.addErrback(taskServerError).addCallback(document)


def makeGatewayResource(
    factory: GatewayFactory,
    web: Traversable | None = None,
    metrics: CollectorRegistry | None = None,
    dashboard: DashboardFeed | None = None,
) -> Resource:
    """
    The gateway's root resource: C{/ws} (the websocket), C{/stats} (JSON),
    C{/metrics} (Prometheus text: C{metrics}, by default a registry of the
    gateway's and this process's metrics), the files of C{web} (default:
    C{taskservice/web/}), C{/} being its C{index.html}, and with a
    C{dashboard} feed (a service of its own: start it), the live dashboard
    at C{/dashboard/} (see L{taskservice.dashboard}). The files are read
    once, here.
    """
    files = loadFiles(defaultWebRoot() if web is None else web)
    # The dashboard's files are served by its own resource, or not at all.
    root = FilesResource({k: v for k, v in files.items() if k[0] != b"dashboard"})
    root.putChild(b"ws", WebSocketResource(factory))
    root.putChild(b"stats", StatsResource(factory.statsDocument))
    if metrics is None:
        metrics = makeRegistry(gateway=factory)
    root.putChild(b"metrics", MetricsResource(metrics))
    if dashboard is not None:
        from taskservice.dashboard import DashboardFactory, DashboardResource

        root.putChild(
            b"dashboard", DashboardResource(DashboardFactory(factory, dashboard))
        )
    return root


class GatewaySite(Site):
    """
    A L{Site} serving L{makeGatewayResource}: listen on it with any
    endpoint, e.g. C{strports.service("tcp:8080", GatewaySite(factory))}.
    """

    def __init__(
        self,
        factory: GatewayFactory,
        web: Traversable | None = None,
        metrics: CollectorRegistry | None = None,
        dashboard: DashboardFeed | None = None,
    ) -> None:
        super().__init__(
            makeGatewayResource(factory, web, metrics, dashboard),
            reactor=factory.reactor,
        )
        self.gateway = factory
