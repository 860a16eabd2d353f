"""
The gateway's HTTP side: the page and its static files, and C{/stats}.

Small resources of our own rather than C{twisted.web.static.File}: the few
files of C{taskservice/web/} are read once, when the site is built (no disk
reads while serving), only they can be served (no path is ever joined from a
URL), and Twisted 26.10's deprecated error pages (static's import, every 404
and 405 of the default resources) are never reached.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.abc import Traversable
from importlib.resources import files
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from taskservice import _json

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
    ".map": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
INDEX = b"index.html"

Files = dict[tuple[bytes, ...], tuple[bytes, bytes]]


def defaultWebRoot() -> Traversable:
    """
    The directory of the gateway's page: C{taskservice/web/}.
    """
    return files("taskservice") / "web"


def loadFiles(root: Traversable) -> Files:
    """
    Every file under C{root} with a known type, by URL path segments:
    C{{(b"js", b"app.js"): (contentType, body)}}. Hidden entries are skipped.
    """
    found: Files = {}

    def walk(directory: Traversable, prefix: tuple[bytes, ...]) -> None:
        for entry in directory.iterdir():
            name = entry.name
            if name.startswith((".", "_")):
                continue
            path = (*prefix, name.encode("utf-8"))
            if entry.is_dir():
                walk(entry, path)
                continue
            contentType = CONTENT_TYPES.get(name[name.rfind(".") :].lower())
            if contentType is not None and entry.is_file():
                found[path] = (contentType, entry.read_bytes())

    if root.is_dir():
        walk(root, ())
    return found


def _methodNotAllowed(request: Request, allowed: bytes) -> bytes:
    request.setResponseCode(405)
    request.setHeader(b"allow", allowed)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"405 Method Not Allowed\n"


class _File(Resource):
    isLeaf = True

    def __init__(self, contentType: bytes, body: bytes) -> None:
        super().__init__()
        self.contentType = contentType
        self.body = body

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _methodNotAllowed(request, b"GET, HEAD")
        request.setHeader(b"content-type", self.contentType)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.body


class FilesResource(Resource):
    """
    Serves C{files} (see L{loadFiles}); C{/} and C{.../} serve
    C{index.html}. Children put with C{putChild} come first.
    """

    def __init__(self, files: Files) -> None:
        super().__init__()
        self._files = {path: _File(*entry) for path, entry in files.items()}

    def getChild(self, path: bytes, request: Request) -> IResource:
        segments: tuple[bytes, ...] = (path, *(request.postpath or ()))
        if segments[-1] == b"":
            segments = (*segments[:-1], INDEX)
        found = self._files.get(segments)
        if found is None:
            return pages.notFound()
        return found

    def render(self, request: Request) -> bytes:
        return self.getChild(b"", request).render(request)  # type: ignore[no-any-return]


class StatsResource(Resource):
    """
    C{GET /stats}: C{statsDocument()} as JSON.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, statsDocument: Callable[[], Any]) -> None:
        super().__init__()
        self._statsDocument = statsDocument

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            return _methodNotAllowed(request, b"GET, HEAD")
        gone: list[Failure] = []

        def disconnected(reason: Failure) -> None:
            gone.append(reason)

        request.notifyFinish().addErrback(disconnected)

        def write(document: dict[str, Any]) -> None:
            if gone:
                return
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(_json.dumps(document))
            request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure("could not make the stats document", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        self._statsDocument().addCallback(write).addErrback(failed)
        return NOT_DONE_YET
