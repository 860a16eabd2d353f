"""
The gateway's live dashboard: C{/dashboard} (a page of plain JavaScript)
and C{/dashboard/ws}, a websocket on which L{DashboardFeed} pushes what the
page shows (see docs/dashboard).

The websocket takes the gateway's own C{Origin} rules (its allow-list,
same origin by default: L{GatewayFactory.checkOrigin}). A page may send
JSON-RPC 2.0 requests on it: C{jobs} (which state to list), and, only when
the feed has C{control}, C{cancelJob} and C{retryJob}; anything else is
answered with an error and the connection stays open.
"""

from __future__ import annotations

from importlib.abc import Traversable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from taskservice import _json, _jsonrpc
from taskservice._dashfeed import DashboardFeed
from taskservice._jobrequest import parseJobId
from taskservice._journal import STATES
from taskservice._web import INDEX, Files, _File, defaultWebRoot, loadFiles
from taskservice.errors import (
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    TaskServiceError,
    toWireError,
)
from taskservice.gateway import GatewayFactory, _ReactorTimer

__all__ = [
    "MAX_VIEWERS",
    "DashboardFactory",
    "DashboardFeed",
    "DashboardProtocol",
    "DashboardResource",
]

MAX_VIEWERS = 100
"""Dashboard pages open at once; past it, the handshake is refused (503)."""
MAX_REQUESTS = 10
"""Requests one page may have unanswered; past it, -32003."""
MAX_MESSAGE = 64 * 1024
"""The largest message a page may send (close 1009 past it)."""
GOING_AWAY = 1001

_log = Logger()


class DashboardProtocol(WebSocketServerProtocol):
    """
    One dashboard page.
    """

    factory: DashboardFactory

    def __init__(self) -> None:
        super().__init__()
        self.jobState: str | None = None
        self._pending = 0
        self._open = False
        self._closed: list[Deferred[None]] = []

    def onConnect(self, request: ConnectionRequest) -> None:
        self.factory.checkRequest(request)

    def onOpen(self) -> None:
        self._open = True
        self.factory.feed.addViewer(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.feed.removeViewer(self)
        self._open = False
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)

    # -- Viewer ----------------------------------------------------------------

    def push(self, message: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(message)

    def close(self) -> Deferred[None]:
        if not self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server shutting down")
        return d

    # -- requests --------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._error(
                None,
                InvalidRequest("invalid request", "send JSON-RPC 2.0 as text"),
            )
            return
        message = _jsonrpc.parseLine(payload)
        if isinstance(message, _jsonrpc.Invalid):
            self._error(message.id, message.error)
            return
        if isinstance(message, _jsonrpc.Batch) or message.seed:
            self._error(
                None,
                InvalidRequest(
                    "invalid request", "one JSON-RPC 2.0 request per message"
                ),
            )
            return
        if self._pending >= MAX_REQUESTS:
            self._error(
                message.id,
                Overloaded("overloaded", {"retryAfter": 1.0, "limit": MAX_REQUESTS}),
            )
            return
        try:
            d = self._dispatch(message)
        except TaskServiceError as e:
            if not message.notification:
                self._error(message.id, e)
            return
        self._pending += 1
        d.addBoth(self._answered, message)

    def _dispatch(self, request: _jsonrpc.Request) -> Deferred[Any]:
        feed = self.factory.feed
        params = request.kwargs
        if request.method == "jobs":
            state = params.get("state")
            if state is not None and state not in STATES:
                raise InvalidParams(
                    "invalid params",
                    f'"state" must be null or one of {", ".join(STATES)}',
                )
            self.jobState = state
            return feed.listJobs(state)
        if request.method == "cancelJob":
            return feed.cancelJob(parseJobId(params, "cancelJob"))
        if request.method == "retryJob":
            return feed.retryJob(parseJobId(params, "retryJob"))
        raise MethodNotFound("method not found", request.method)

    def _answered(self, outcome: object, request: _jsonrpc.Request) -> None:
        self._pending -= 1
        if request.notification:
            return
        if isinstance(outcome, Failure):
            assert outcome.value is not None
            error = toWireError(outcome.value)
            if error is not outcome.value and not outcome.check(TaskServiceError):
                _log.failure("a dashboard request failed", outcome)
            self._error(request.id, error)
        else:
            self._write(_jsonrpc.resultObject(request.id, outcome))

    def _error(self, requestId: Any, error: TaskServiceError) -> None:
        self._write(_jsonrpc.errorObject(requestId, error))

    def _write(self, message: Any) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(_json.dumps(message))


class DashboardFactory(WebSocketServerFactory):
    """
    The dashboard's websocket: pages are L{DashboardProtocol}s fed by
    C{feed}, admitted by C{gateway}'s origin rules.
    """

    protocol = DashboardProtocol  # type: ignore[assignment]

    def __init__(
        self,
        gateway: GatewayFactory,
        feed: DashboardFeed,
        *,
        maxViewers: int = MAX_VIEWERS,
    ) -> None:
        super().__init__(server="taskservice", reactor=gateway.reactor)
        self._batched_timer = _ReactorTimer(gateway.reactor)
        self.gateway = gateway
        self.feed = feed
        self.maxViewers = maxViewers
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            failByDrop=False,
            autoPingInterval=gateway.autoPingInterval,
            autoPingTimeout=gateway.autoPingTimeout,
            webStatus=False,
            allowNullOrigin=True,
        )

    def checkRequest(self, request: ConnectionRequest) -> None:
        """
        Refuse a page from an origin the gateway would refuse (403), or
        past L{MAX_VIEWERS} (503).
        """
        self.gateway.checkOrigin(request)
        if len(self.feed.viewers) >= self.maxViewers:
            _log.info(
                "dashboard from {peer} refused: {limit} viewers already",
                peer=request.peer,
                limit=self.maxViewers,
            )
            raise ConnectionDeny(
                ConnectionDeny.SERVICE_UNAVAILABLE, "too many dashboard viewers"
            )


def dashboardFiles(web: Traversable | None = None) -> Files:
    """
    The page's files: C{dashboard/} of C{web} (default C{taskservice/web/}).
    """
    root = defaultWebRoot() if web is None else web
    return loadFiles(root / "dashboard")


class DashboardResource(Resource):
    """
    C{/dashboard}: redirects to C{/dashboard/}, which serves the page;
    C{/dashboard/ws} is the websocket; the page's other files by name.
    """

    def __init__(self, factory: DashboardFactory, files: Files | None = None) -> None:
        super().__init__()
        self.factory = factory
        self._files = {
            path: _File(*entry)
            for path, entry in (dashboardFiles() if files is None else files).items()
        }
        self._websocket = WebSocketResource(factory)

    def getChild(self, path: bytes, request: Request) -> IResource:
        segments: tuple[bytes, ...] = (path, *(request.postpath or ()))
        if segments == (b"ws",):
            return self._websocket
        if segments[-1] == b"":
            segments = (*segments[:-1], INDEX)
        found = self._files.get(segments)
        if found is None:
            return pages.notFound()
        return found

    def render(self, request: Request) -> bytes:
        # /dashboard: the page's relative links need the slash.
        request.setResponseCode(301)
        request.setHeader(b"location", b"dashboard/")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"see dashboard/\n"
