"""
The twisted.web side of the metrics: L{MetricsResource} renders a
registry in Prometheus's text format, L{MetricsSite} serves it alone
(C{--metrics}).

Part of L{taskservice.metrics}, which re-exports the public names.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from taskservice._web import _methodNotAllowed


class MetricsResource(Resource):
    """
    C{GET /metrics}: C{registry} in Prometheus's text format.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _methodNotAllowed(request, b"GET, HEAD")
        request.setHeader(b"cache-control", b"no-store")
        try:
            body = generate_latest(self.registry)
        except Exception:
            self.log.failure("could not collect the metrics")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"500 could not collect the metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body


class _MetricsRoot(Resource):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.putChild(b"metrics", MetricsResource(registry))

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound()


class MetricsSite(Site):
    """
    A L{Site} serving only C{/metrics} (everything else is 404), for
    C{--metrics}: C{strports.service("tcp:9100", MetricsSite(registry))}.
    Scrapes are not written to the access log.
    """

    noisy = False

    def __init__(self, registry: CollectorRegistry, reactor: Any = None) -> None:
        super().__init__(_MetricsRoot(registry), reactor=reactor)
        self.registry = registry

    def log(self, request: http.Request) -> None:
        pass
