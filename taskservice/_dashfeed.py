"""
L{DashboardFeed}: what the gateway's live dashboard shows, sampled once and
pushed to every viewer.

Every C{interval} seconds (1 s by default) the feed takes one stats document
(the gateway's C{/stats}: its own counters and its task server's
C{$/stats}), turns it into one point of the chart (queue depth, calls
running, calls per second) kept for the last C{history} seconds, encodes
one C{sample} message and writes the same bytes to every viewer. While
anybody watches, it also lists the newest jobs once per job state that some
viewer filters on (at most one C{$/jobs} per state per tick, however many
viewers), and pushes each list to the viewers of that filter. No viewer
ever polls: what a tick costs does not grow with the viewers but for the
writes. A tick still waiting for its task server's answer delays the next
one (ticks never pile up).

Its messages are JSON-RPC 2.0 notifications (see docs/dashboard):
C{hello} (to a new viewer: the options and the chart's history), C{sample}
and C{jobs}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json, _jsonrpc
from taskservice._journal import FINAL_STATES, STATES
from taskservice.errors import InvalidParams, Unauthorised, toWireError
from taskservice.wire import CANCEL_JOB, JOB, JOBS, SUBMIT

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_INTERVAL",
    "JOBS_LISTED",
    "DashboardFeed",
    "Viewer",
]

DEFAULT_INTERVAL = 1.0
"""Seconds between samples."""
DEFAULT_HISTORY = 300.0
"""Seconds of chart points kept (and sent to a new viewer)."""
JOBS_LISTED = 50
"""The newest jobs listed per filter."""
READ_ONLY = (
    "the dashboard is read-only: start the gateway with --dashboard-control"
    " to cancel and retry jobs from it"
)

_log = Logger()


class Viewer(Protocol):
    """
    One dashboard page, as the feed sees it.

    @ivar jobState: the job state it lists (L{None}: every state).
    """

    jobState: str | None

    def push(self, message: bytes) -> None:
        """
        Send C{message} (an encoded notification) to the page.
        """

    def close(self) -> Deferred[None]:
        """
        Close the page's connection (the server is going away); fire once
        it is closed.
        """


class Gateway(Protocol):
    """
    What the feed needs of the gateway (a L{GatewayFactory}).
    """

    client: Any

    def statsDocument(self) -> Deferred[dict[str, Any]]: ...


def _count(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _sameServer(
    uptime: float | None, lastUptime: float | None, elapsed: float, slack: float
) -> bool:
    """
    Whether two samples C{elapsed} seconds apart, with these uptimes, can
    be of the same task server, running all along.
    """
    if uptime is None or lastUptime is None:
        return True
    return abs(uptime - lastUptime - elapsed) <= slack


class DashboardFeed(Service):
    """
    Samples C{gateway}'s stats every C{interval} seconds while it runs and
    pushes them to the viewers added with L{addViewer}.

    @param control: whether viewers may cancel and retry jobs.
    """

    def __init__(
        self,
        reactor: Any,
        gateway: Gateway,
        *,
        control: bool = False,
        interval: float = DEFAULT_INTERVAL,
        history: float = DEFAULT_HISTORY,
        jobsListed: int = JOBS_LISTED,
    ) -> None:
        if interval <= 0 or history < interval:
            raise ValueError("interval must be positive and history at least one")
        self.reactor = reactor
        self.gateway = gateway
        self.control = control
        self.interval = interval
        self.historySeconds = history
        self.jobsListed = jobsListed
        self.history: deque[dict[str, Any]] = deque(maxlen=int(history / interval))
        self.viewers: set[Viewer] = set()
        self.samples = 0
        self._latest: bytes | None = None
        self._jobs: dict[str | None, bytes] = {}
        self._listing: set[str | None] = set()
        self._last: tuple[float, float, float, float | None] | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Stop sampling and close every viewer; fire once they are closed.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        closing = [viewer.close() for viewer in list(self.viewers)]
        return gatherResults(closing).addCallback(lambda _: None)

    # -- viewers ---------------------------------------------------------------

    def addViewer(self, viewer: Viewer) -> None:
        """
        A page opened: send it C{hello} (with the chart's history), then the
        latest sample and the latest list of its jobs, if there are.
        """
        self.viewers.add(viewer)
        viewer.push(
            _json.dumps(
                _jsonrpc.notificationObject(
                    "hello",
                    {
                        "control": self.control,
                        "interval": self.interval,
                        "history": self.historySeconds,
                        "jobsListed": self.jobsListed,
                        "states": list(STATES),
                        "points": list(self.history),
                    },
                )
            )
        )
        if self._latest is not None:
            viewer.push(self._latest)
        listed = self._jobs.get(viewer.jobState)
        if listed is not None:
            viewer.push(listed)

    def removeViewer(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    # -- sampling --------------------------------------------------------------

    def _tick(self) -> Deferred[None]:
        at = self.reactor.seconds()
        d = self.gateway.statsDocument().addCallback(self._sampled, at)
        # Never let a failure stop the loop.
        return d.addErrback(lambda f: _log.failure("the dashboard's sample failed", f))

    def _sampled(self, document: dict[str, Any], at: float) -> None:
        point = self._point(at, document.get("taskServer"))
        self.history.append(point)
        self.samples += 1
        self._latest = _json.dumps(
            _jsonrpc.notificationObject(
                "sample", {"at": at, "point": point, "stats": document}
            )
        )
        for viewer in list(self.viewers):
            viewer.push(self._latest)
        # The listings go on beside the samples (the tick does not wait for
        # them): a slow journal does not hold the chart back.
        self.refreshJobs()

    def _point(self, at: float, server: object) -> dict[str, Any]:
        """
        One point of the chart: C{queued}, C{running}, C{busy} (workers),
        C{rate} and C{failedRate} (calls per second since the last point;
        L{None} for the first point, after a gap, or when the counters are
        not the same task server's since the last point: they went back, or
        its uptime did not grow as the time did, as when it restarted or
        another of several task servers answered).
        """
        point: dict[str, Any] = {
            "at": round(at, 3),
            "queued": None,
            "running": None,
            "busy": None,
            "rate": None,
            "failedRate": None,
        }
        if not isinstance(server, Mapping) or "error" in server:
            self._last = None
            return point
        workers = server.get("workers")
        point["queued"] = _count(server.get("queued"))
        point["running"] = _count(server.get("running"))
        if isinstance(workers, Mapping):
            point["busy"] = _count(workers.get("busy"))
        completed = _count(server.get("completed"))
        failed = _count(server.get("failed"))
        uptime = _count(server.get("uptime"))
        if completed is None or failed is None:
            self._last = None
            return point
        last, self._last = self._last, (at, completed, failed, uptime)
        if last is not None:
            lastAt, lastCompleted, lastFailed, lastUptime = last
            elapsed = at - lastAt
            if (
                0 < elapsed <= 3 * self.interval
                and completed >= lastCompleted
                and failed >= lastFailed
                and _sameServer(uptime, lastUptime, elapsed, self.interval)
            ):
                point["rate"] = round((completed - lastCompleted) / elapsed, 2)
                point["failedRate"] = round((failed - lastFailed) / elapsed, 2)
        return point

    # -- jobs ------------------------------------------------------------------

    def refreshJobs(self) -> Deferred[None]:
        """
        List the jobs of every state some viewer filters on (one C{$/jobs}
        each), and push each list to its viewers.
        """
        states = {viewer.jobState for viewer in self.viewers}
        for gone in set(self._jobs) - states:
            del self._jobs[gone]
        listings = []
        for state in states - self._listing:
            # (A state still being listed is not asked for again.)
            self._listing.add(state)
            listings.append(self.listJobs(state).addBoth(self._listed, state))
        return gatherResults(listings).addCallback(lambda _: None)

    def listJobs(self, state: str | None) -> Deferred[list[dict[str, Any]]]:
        """
        The newest L{JOBS_LISTED} jobs in C{state} (L{None}: any).
        """
        if state is not None and state not in STATES:
            return fail(
                InvalidParams(
                    "invalid params", f'"state" must be one of {", ".join(STATES)}'
                )
            )
        params: dict[str, Any] = {"limit": self.jobsListed}
        if state is not None:
            params["state"] = state
        d: Deferred[list[dict[str, Any]]] = self.gateway.client.request(JOBS, params)
        return d

    def _listed(self, outcome: object, state: str | None) -> None:
        self._listing.discard(state)
        params: dict[str, Any] = {"state": state}
        if isinstance(outcome, Failure):
            assert outcome.value is not None
            params["error"] = toWireError(outcome.value).toWire()
        else:
            params["jobs"] = outcome
        message = _json.dumps(_jsonrpc.notificationObject("jobs", params))
        self._jobs[state] = message
        for viewer in list(self.viewers):
            if viewer.jobState == state:
                viewer.push(message)

    # -- control ---------------------------------------------------------------

    def cancelJob(self, jobId: str) -> Deferred[Any]:
        """
        C{$/cancelJob} of C{jobId}, if control is enabled.
        """
        if not self.control:
            return fail(Unauthorised("unauthorised", READ_ONLY))
        d: Deferred[Any] = self.gateway.client.request(CANCEL_JOB, {"job": jobId})
        return d.addCallback(self._changed)

    def retryJob(self, jobId: str) -> Deferred[Any]:
        """
        Submit a job that has ended again, as a new job with the same method
        and params (C{$/job}, then C{$/submit}), if control is enabled; fire
        with the new job's C{{"job", "state"}}. Its retries and timeout are
        the task's own (the first job's options are not kept), and it has no
        idempotency key (the first job's key would name the first job).
        """
        if not self.control:
            return fail(Unauthorised("unauthorised", READ_ONLY))
        client = self.gateway.client

        def resubmit(job: dict[str, Any]) -> Deferred[Any]:
            if job.get("state") not in FINAL_STATES:
                raise InvalidParams(
                    "invalid params",
                    f"job {jobId} is {job.get('state')}: only a job that has"
                    f" ended ({', '.join(FINAL_STATES)}) can be retried",
                )
            submit: dict[str, Any] = {"method": job["method"]}
            if job.get("params") is not None:
                submit["params"] = job["params"]
            resubmitted: Deferred[Any] = client.request(SUBMIT, submit)
            return resubmitted

        d: Deferred[Any] = client.request(JOB, {"job": jobId})
        return d.addCallback(resubmit).addCallback(self._changed)

    def _changed(self, result: object) -> object:
        # Show the change now rather than at the next tick.
        self.refreshJobs()
        return result
