"""
End to end: the gateway's C{/dashboard} in real headless Chromium against a
real C{twistd taskservice} (task server, two worker processes, gateway, job
journal) while a bounded loop of calls runs on its task port. The page's
numbers change without it asking (samples are pushed), the chart draws,
workers, latency, failures and jobs show; read-only, it has no control
buttons and the gateway refuses control sent by hand; with
C{--dashboard-control}, Cancel stops a running job and Retry submits it
again. A page from another origin is refused.

Set C{TASKSERVICE_DASHBOARD_SCREENSHOT=path.png} to keep the screenshot of
the page under load. (The one in docs/_static/ was taken the same way by
hand, after two minutes of steady calls with a burst every 15 s, so that
the chart has more to show than this test's few seconds.)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from taskservice.testing import Twistd, freePort
from tests.test_js_client import CHROMIUM, BrowserThread, browser, syncAPI
from tests.test_twistd import DEADLINE, call

__all__ = ["browser"]  # the module-scoped fixture, shared

HOST = "127.0.0.1"
WAIT = 60.0
"""Seconds any one wait in the page may take (a loaded machine)."""
MAX_LOAD_CALLS = 200_000
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]


class Load:
    """
    A bounded loop of calls on the task port, in a thread of its own: C{fib}
    and, every tenth call, C{fail} (so that failures show), one at a time,
    until stopped or after L{MAX_LOAD_CALLS}.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE)

    def _run(self) -> None:
        with socket.create_connection((HOST, self.port), timeout=DEADLINE) as s:
            reader = s.makefile("rb")
            for i in range(MAX_LOAD_CALLS):
                if self._stop.is_set():
                    return
                method, params = (
                    ("fail", ["load test"]) if i % 10 == 9 else ("fib", [16])
                )
                request = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": method,
                    "params": params,
                }
                reply = call(s, reader, json.dumps(request).encode() + b"\n")
                self.calls += 1
                self.errors += "error" in reply


def taskCall(port: int, method: str, params: Any) -> Any:
    """
    One JSON-RPC call on the task port; its reply.
    """
    with socket.create_connection((HOST, port), timeout=DEADLINE) as s:
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        return call(s, s.makefile("rb"), json.dumps(request).encode() + b"\n")


def handshakeStatus(port: int, origin: str) -> bytes:
    """
    The status line the gateway answers a websocket handshake to
    C{/dashboard/ws} from C{origin} with.
    """
    request = (
        f"GET /dashboard/ws HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection((HOST, port), timeout=DEADLINE) as s:
        s.sendall(request.encode())
        return s.makefile("rb").readline().strip()


def distinctRows(png: bytes) -> int:
    """
    How many different rows of pixels an 8-bit RGB(A) PNG has (a blank
    page has a handful; standard library only).
    """
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, data, width, channels = 8, b"", 0, 0
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        body = png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", body[:4])[0]
            assert body[8] == 8, "8 bits per channel"
            channels = {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            data += body
        offset += 12 + length
    raw = zlib.decompress(data)
    stride = 1 + width * channels
    return len({raw[i + 1 : i + stride] for i in range(0, len(raw), stride)})


SEEN = """() => ({
  samples: Number(document.body.dataset.samples ?? 0),
  completed: document.querySelector("#completed").textContent,
  points: Number(document.querySelector("#chart").dataset.points ?? 0),
  workers: [...document.querySelectorAll("#workers tbody tr")].map(
    (r) => [...r.cells].map((c) => c.textContent)),
  p50: document.querySelector("#p50").textContent,
  failures: [...document.querySelectorAll("#failures tbody tr")].map(
    (r) => r.cells[3].textContent),
  jobs: [...document.querySelectorAll("#jobs tbody tr")].map(
    (r) => [r.dataset.job, r.dataset.state]),
  buttons: document.querySelectorAll("#jobs button").length,
  mode: document.querySelector("#mode").textContent,
  chartInk: (() => {
    const c = document.querySelector("#chart");
    const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    for (let i = 3; i < pixels.length; i += 4) ink += pixels[i] > 0;
    return ink;
  })(),
})"""

CONTROL_BY_HAND = """async () => {
  const url = new URL("ws", location.href);
  url.protocol = "ws:";
  const socket = new WebSocket(url);
  const answer = new Promise((resolve) => socket.addEventListener("message", (e) => {
    const message = JSON.parse(e.data);
    if (message.id === 99) resolve(message);
  }));
  await new Promise((resolve) => socket.addEventListener("open", resolve));
  socket.send(JSON.stringify(
    { jsonrpc: "2.0", id: 99, method: "cancelJob", params: { job: "%s" } }));
  const message = await answer;
  socket.close();
  return message;
}"""


OTHER_ORIGIN = """async (url) => {
  const socket = new WebSocket(url);
  return await new Promise((resolve) => {
    socket.addEventListener("open", () => { socket.close(); resolve("open"); });
    socket.addEventListener("close", () => resolve("refused"));
  });
}"""
"""In a page of another origin: open the dashboard's websocket at C{url}."""


class OtherSite(Resource):
    """
    A page served from another origin (another port of this machine).
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return b"<!doctype html><title>elsewhere</title><p>another site</p>"


def _fromOtherOrigin(browser: BrowserThread, page: str, url: str) -> str:
    """
    In the browser's thread: from C{page}, open the websocket C{url}.
    """
    tab = browser.browser.new_page()
    try:
        tab.goto(page)
        outcome: str = tab.evaluate(OTHER_ORIGIN, url)
    finally:
        tab.close()
    return outcome


def openDashboard(browser: BrowserThread, origin: str) -> tuple[Any, list[str]]:
    page = browser.browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" else None,
    )
    page.set_default_timeout(WAIT * 1000)
    page.goto(origin + "/dashboard")
    syncAPI.expect(page.locator("#status")).to_have_text("Live")
    return page, errors


def _readOnly(browser: BrowserThread, origin: str, jobId: str, shot: Path) -> Any:
    """
    In the browser's thread: watch the dashboard under load.
    """
    page, errors = openDashboard(browser, origin)
    try:
        assert page.url == origin + "/dashboard/"
        page.wait_for_function("Number(document.body.dataset.samples) >= 2")
        first = page.evaluate(SEEN)
        page.wait_for_function(
            "document.querySelector('#completed').textContent !== "
            + json.dumps(first["completed"])
            + " && document.querySelector('#failures tbody tr')"
            + " && document.querySelector('#p50').textContent !== '—'"
            + " && Number(document.querySelector('#chart').dataset.points) >= 2"
            + f" && document.querySelector('#jobs tr[data-job=\"{jobId}\"]')"
        )
        later = page.evaluate(SEEN)
        for selector in ("#chart", "#workers", "#failures", "#jobs", "#p50", "#rate"):
            syncAPI.expect(page.locator(selector)).to_be_visible()
        png = page.screenshot(path=str(shot), full_page=True)
        page.select_option("#job-filter", "succeeded")
        page.wait_for_function(
            "document.querySelector('#jobs-note').textContent.includes('succeeded')"
        )
        filtered = page.evaluate(SEEN)["jobs"]
        byHand = page.evaluate(CONTROL_BY_HAND % jobId)
    finally:
        page.close()
    return {
        "first": first,
        "later": later,
        "png": png,
        "filtered": filtered,
        "byHand": byHand,
        "errors": errors,
    }


@pytest_twisted.ensureDeferred
async def test_liveUnderLoad(browser: BrowserThread, tmp_path: Path) -> None:
    """
    Read-only (the default), under load: the page's counters move as
    samples are pushed, the chart has points and ink, both workers show
    with their pids and calls served, p50 is known, the load's failures
    show with their error, the failed job is listed and the filter lists
    only succeeded jobs when asked. No Cancel or Retry button, and a
    cancelJob sent by hand on the websocket is refused (-32005). A
    handshake from another origin gets 403, and a page of another origin
    in Chromium cannot open the websocket. The screenshot is not blank.
    """
    taskPort, wsPort = freePort(), freePort()
    shot = Path(
        os.environ.get("TASKSERVICE_DASHBOARD_SCREENSHOT") or tmp_path / "dash.png"
    )
    with Twistd(
        tmp_path,
        "--workers",
        "2",
        "--listen",
        f"tcp:{taskPort}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
    ) as server:
        server.connect(wsPort).close()
        failed = taskCall(taskPort, "$/submit", {"method": "fail", "params": ["no"]})
        ok = taskCall(taskPort, "$/submit", {"method": "echo", "params": ["hi"]})
        jobId = failed["result"]["job"]
        origin = f"http://{HOST}:{wsPort}"
        with Load(taskPort) as load:
            seen = await browser.run(_readOnly, browser, origin, jobId, shot)
        refused = handshakeStatus(wsPort, "http://evil.example")
        allowed = handshakeStatus(wsPort, origin)
        other = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(
            Site(OtherSite())
        )
        try:
            elsewhere = await browser.run(
                _fromOtherOrigin,
                browser,
                f"http://{HOST}:{other.getHost().port}/",
                f"ws://{HOST}:{wsPort}/dashboard/ws",
            )
        finally:
            await other.stopListening()
        with urllib.request.urlopen(origin + "/stats", timeout=DEADLINE) as response:
            denied = json.load(response)["gateway"]["deniedOrigins"]
        pids = {p.pid for p in server.family()} - {server.process.pid}
    assert seen["errors"] == []
    first, later = seen["first"], seen["later"]
    assert load.calls > 0 and load.errors > 0
    assert first["mode"] == "read-only"
    assert later["samples"] > first["samples"]
    assert later["completed"] != first["completed"]
    assert later["points"] >= 2
    assert later["chartInk"] > 500
    assert len(later["workers"]) == 2
    assert {int(row[1]) for row in later["workers"]} <= pids
    assert all(row[2] in ("idle", "busy") for row in later["workers"])
    assert sum(int(row[4].replace(",", "")) for row in later["workers"]) > 0
    assert later["p50"] != "—"
    assert "ValueError: load test" in later["failures"]
    assert [jobId, "failed"] in later["jobs"]
    assert later["buttons"] == 0, "read-only: no control buttons"
    assert seen["filtered"] == [[ok["result"]["job"], "succeeded"]]
    assert seen["byHand"]["error"]["code"] == -32005
    assert refused == b"HTTP/1.1 403 origin not allowed"
    assert allowed == b"HTTP/1.1 101 Switching Protocols"
    assert elsewhere == "refused", "a page of another origin cannot open it"
    assert denied == 2
    assert distinctRows(seen["png"]) > 100, "the screenshot is not blank"


def _control(browser: BrowserThread, origin: str, jobId: str) -> Any:
    """
    In the browser's thread: cancel the running job, then retry it.
    """
    page, errors = openDashboard(browser, origin)
    row = f"#jobs tr[data-job='{jobId}']"
    try:
        syncAPI.expect(page.locator("#mode")).to_have_text("control enabled")
        page.locator(f"{row}[data-state='running'] button.cancel").click()
        page.wait_for_function(
            "document.querySelector('#action-result').dataset.outcome === 'ok'"
        )
        cancelled = page.text_content("#action-result")
        page.wait_for_selector(f"{row}[data-state='cancelled']")
        retryButtons = page.locator(f"{row} button.retry").count()
        cancelButtons = page.locator(f"{row} button.cancel").count()
        page.locator(f"{row} button.retry").click()
        page.wait_for_function(
            "document.querySelector('#action-result').textContent"
            ".includes('submitted again')"
        )
        retried = page.text_content("#action-result")
    finally:
        page.close()
    return {
        "cancelled": cancelled,
        "retried": retried,
        "buttons": (cancelButtons, retryButtons),
        "errors": errors,
    }


@pytest_twisted.ensureDeferred
async def test_cancelAndRetryWithControl(
    browser: BrowserThread, tmp_path: Path
) -> None:
    """
    With --dashboard-control, a running job has a Cancel button: clicking
    it cancels the job (the task server's journal says cancelled), and the
    cancelled job then has Retry instead, which submits the same method and
    params as a new job.
    """
    taskPort, wsPort = freePort(), freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "2",
        "--listen",
        f"tcp:{taskPort}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
        "--dashboard-control",
    ) as server:
        server.connect(wsPort).close()
        submitted = taskCall(taskPort, "$/submit", {"method": "sleep", "params": [300]})
        jobId = submitted["result"]["job"]
        origin = f"http://{HOST}:{wsPort}"
        seen = await browser.run(_control, browser, origin, jobId)
        first = taskCall(taskPort, "$/job", {"job": jobId})["result"]
        newId = seen["retried"].split("as job ")[1].split(" ")[0]
        again = taskCall(taskPort, "$/job", {"job": newId})["result"]
        taskCall(taskPort, "$/cancelJob", {"job": newId})
    assert seen["errors"] == []
    assert seen["cancelled"] == f"Job {jobId}: cancelled."
    assert seen["buttons"] == (0, 1)
    assert first["state"] == "cancelled"
    assert first["error"]["code"] == -32800
    assert newId != jobId
    assert (again["method"], again["params"]) == ("sleep", [300])


class DashboardTab:
    """
    A dashboard page kept open across steps (each runs in the browser's
    thread; the reactor's side acts in between).
    """

    def __init__(self, browser: BrowserThread) -> None:
        self.browser = browser
        self.page: Any = None
        self.errors: list[str] = []

    async def open(self, origin: str) -> None:
        def inBrowser() -> None:
            self.page, self.errors = openDashboard(self.browser, origin)

        await self.browser.run(inBrowser)

    async def waitFor(self, expression: str) -> None:
        await self.browser.run(
            lambda: self.page.wait_for_function(
                expression, timeout=WAIT * 1000, polling=50
            )
        )

    async def samples(self) -> int:
        count: int = await self.browser.run(
            lambda: self.page.evaluate("Number(document.body.dataset.samples)")
        )
        return count

    async def close(self) -> None:
        if self.page is not None:
            await self.browser.run(self.page.close)


@pytest_twisted.ensureDeferred
async def test_pageReconnectsAfterRestart(
    browser: BrowserThread, tmp_path: Path
) -> None:
    """
    The gateway going away (SIGTERM) closes the page's websocket; the page
    says it is reconnecting, and once the gateway is back on the
    same port it is live again and the samples go on by themselves, the
    chart starting afresh from the new gateway's history.
    """
    taskPort, wsPort = freePort(), freePort()
    args = (
        "--workers",
        "1",
        "--listen",
        f"tcp:{taskPort}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
    )
    origin = f"http://{HOST}:{wsPort}"
    tab = DashboardTab(browser)
    try:
        (tmp_path / "first").mkdir()
        with Twistd(tmp_path / "first", *args) as first:
            first.connect(wsPort).close()
            await tab.open(origin)
            await tab.waitFor("Number(document.body.dataset.samples) >= 2")
            first.process.terminate()
            await tab.waitFor(
                "document.querySelector('#status').dataset.state === 'reconnecting'"
            )
            first.process.wait(timeout=DEADLINE)
        before = await tab.samples()
        (tmp_path / "second").mkdir()
        with Twistd(tmp_path / "second", *args) as second:
            second.connect(wsPort).close()
            await tab.waitFor(
                "document.querySelector('#status').dataset.state === 'open'"
                f" && Number(document.body.dataset.samples) >= {before + 2}"
            )
    finally:
        await tab.close()
    assert first.process.returncode == -15
    # Chromium logs each refused attempt while the gateway is down.
    assert [e for e in tab.errors if "ERR_CONNECTION_REFUSED" not in e] == []
