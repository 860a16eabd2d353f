"""
Durable jobs: a service in front of a L{ProcessPool} that records every job
in a journal before it is accepted, runs it in the pool, and records its
end, so a job survives a closed browser tab, a restart or a crash.

The pool stays journal-free: this service calls its public C{submit} like
any caller. See docs/jobs for the states and the guarantees.

The service is built in layers: L{taskservice._jobengine.JobEngine} runs
jobs, L{taskservice._jobticks.TickingJobs} adds the schedules, and
L{JobService} here is the front: the wire's job methods and the lifecycle.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._defaults import DEFAULT_MAX_RUNNING, DEFAULT_TTL
from taskservice._jobengine import _PURGE_EVERY
from taskservice._jobparts import (
    JobIds,
    ProgressCallback,
    _Attacher,
    _deliver,
    _detached,
)
from taskservice._jobrequest import JobRequest
from taskservice._jobticks import TickingJobs
from taskservice._journal import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    IJournal,
    JobRecord,
    NewJob,
    Recovered,
)
from taskservice._sharedjobs import SharedJobs, SharedJournal
from taskservice.errors import (
    Cancelled,
    JobNotFound,
    Overloaded,
    Unavailable,
)
from taskservice.pool import ProcessPool

__all__ = [
    "DEFAULT_MAX_PENDING",
    "RESTART_ALLOWANCE",
    "JobIds",
    "JobService",
    "ProgressCallback",
    # (Re-exported: taskservice._sharedjobs imports them from here.)
    "_Attacher",
    "_deliver",
]

DEFAULT_MAX_PENDING = 1_000_000
"""Jobs that may wait; past it, C{$/submit} answers -32003."""
RESTART_ALLOWANCE = 3
"""Runs cut short by a stopped server that an idempotent job may have
beyond its own attempts (so a job that takes its server down each time it
runs stops being run)."""


class JobService(TickingJobs, Service):
    """
    Durable jobs over C{pool}, recorded in C{journal}.

    @param ttl: seconds a finished job is kept before it is purged.
    @param maxRunning: jobs handed to the pool at once (others wait in the
        journal, not in the pool's queue).
    @param maxPending: jobs that may wait at once.
    @param schedules: cron expressions by task name, adding to or replacing
        the tasks' own C{@task(schedule=...)} (see L{schedulesOf}, which
        raises L{ValueError} for a wrong one).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        pool: ProcessPool,
        journal: IJournal,
        *,
        ttl: float = DEFAULT_TTL,
        maxRunning: int = DEFAULT_MAX_RUNNING,
        maxPending: int = DEFAULT_MAX_PENDING,
        jitter: Callable[[], float] = random.random,
        schedules: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            reactor,
            pool,
            journal,
            schedules=schedules,
            ttl=ttl,
            maxRunning=maxRunning,
            jitter=jitter,
        )
        self.maxPending = maxPending
        self.recovered: Recovered | None = None
        self._shared: SharedJobs | None = None

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        """
        Open the journal (a journal that cannot be opened stops the start
        with L{JournalError}), recover the jobs an earlier process left
        running, start running jobs, and start the schedules (each tries
        its latest tick, then arms a timer for the next).
        """
        self.journal.open()
        super().startService()
        self._stopping = self._closed = False
        if isinstance(self.journal, SharedJournal):
            # Several servers share this journal: hear of their jobs.
            self._shared = SharedJobs(self, self.journal)
            self._shared.start()
        now = self.reactor.seconds()
        self.journal.recover(now, now + self.ttl, self._mayRunAgain).addCallbacks(
            self._recovered, self._journalFailed
        )
        # (After the recovery in the journal's order, whether it works or
        # not: a tick the journal refuses is tried again by itself.)
        for ticker in self._tickers:
            ticker.start()
        self._purgeCall = self.reactor.callLater(
            min(_PURGE_EVERY, self.ttl), self._purge
        )

    def _mayRunAgain(self, job: JobRecord) -> bool:
        spec = self.pool.registry.get(job.method)
        return (
            spec is not None
            and (spec.idempotent or spec.resumable)
            and job.attempts < job.maxAttempts + RESTART_ALLOWANCE
        )

    def _recovered(self, recovered: Recovered) -> None:
        self.recovered = recovered
        if recovered.requeued or recovered.interrupted:
            self.log.info(
                "jobs left running by the last run: {requeued} queued to run"
                " again, {interrupted} interrupted",
                requeued=len(recovered.requeued),
                interrupted=len(recovered.interrupted),
            )
        self._schedulePump()

    def stopService(self) -> Deferred[None]:
        """
        Stop starting jobs. Jobs running now are left to the pool's drain:
        those that end meanwhile are recorded; those the pool stops (after
        its shutdown timeout) stay running in the journal, for the next
        start to recover. Call L{closeJournal} once the pool has stopped.
        """
        super().stopService()
        self._stopping = True
        for call in (self._pumpCall, self._wake, self._purgeCall):
            if call is not None and call.active():
                call.cancel()
        for ticker in self._tickers:
            ticker.stop()
        self._pumpCall = self._wake = self._purgeCall = None
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def closeJournal(self) -> Deferred[None]:
        """
        After the pool stopped: tell the callers still attached that this
        server stopped, and close the journal.
        """
        self._closed = True
        unrecorded, self._unrecorded = self._unrecorded, {}
        for retry in unrecorded.values():
            if retry.active():
                retry.cancel()
        attached, self._attached = self._attached, {}
        for attachers in attached.values():
            for attacher in attachers:
                if not attacher.deferred.called:
                    attacher.deferred.errback(
                        Unavailable(
                            "the task server stopped; the job stays in its"
                            " journal: attach again once it is back"
                        )
                    )
        self._running.clear()
        self._ending.clear()
        return self.journal.close()

    # -- the wire's job methods -------------------------------------------

    def submit(self, request: JobRequest) -> Deferred[dict[str, Any]]:
        """
        C{$/submit}: record the job; fire with C{{"job", "state"}} once it
        is committed.

        When a job slot is free and no other job is due, the job is recorded
        as running (its claim is its insert: one statement, no claim
        afterwards) and handed to the pool as soon as that is committed;
        otherwise it is recorded as waiting, and the pump claims it in turn.
        """
        if not self.running or self._stopping:
            return fail(Unavailable("the task server is stopping"))
        counts = self.journal.counts()
        if counts[QUEUED] + counts[SCHEDULED] >= self.maxPending:
            return fail(
                Overloaded("overloaded", {"retryAfter": 1.0, "limit": self.maxPending})
            )
        now = self.reactor.seconds()
        runAt = request.runAt(now)
        start = (
            runAt <= now
            and not self._maybeDue
            and not self._claiming
            and len(self._running) + self._reserved < self.maxRunning
        )
        job = NewJob(
            id=self._newId(),
            method=request.method,
            params=request.paramsJSON,
            key=request.key,
            maxAttempts=request.retries + 1,
            backoff=request.backoff,
            timeout=request.timeout,
            runAt=runAt,
            createdAt=now,
        )
        if start:
            self._reserved += 1
            d = self.journal.submit(job, running=True)
        else:
            d = self.journal.submit(job)

        def submitted(outcome: tuple[JobRecord, bool]) -> dict[str, Any]:
            record, new = outcome
            if start:
                self._reserved -= 1
            self._journalRecovered()
            if new:
                self.submitted += 1
                if record.state != RUNNING:
                    self._due(record.runAt)
                elif self._stopping:
                    # Recorded as we stopped: it never ran, so it waits.
                    self.journal.release(record.id).addErrback(self._logFailure)
                    return {"job": record.id, "state": "queued"}
                else:
                    self._start(record)
            reply: dict[str, Any] = {"job": record.id, "state": self._state(record)}
            if not new:
                reply["existing"] = True
            return reply

        def refused(failure: Failure) -> Failure:
            if start:
                self._reserved -= 1
            return self._refusedByJournal(failure)

        return _detached(d.addCallbacks(submitted, refused))

    def job(self, jobId: str) -> Deferred[dict[str, Any]]:
        """
        C{$/job}: the job as it is now.
        """
        return self._get(jobId).addCallback(self._describe, True)

    def jobs(
        self, state: str | None, method: str | None, limit: int
    ) -> Deferred[list[dict[str, Any]]]:
        """
        C{$/jobs}: the newest jobs, newest first (without params and
        results: C{$/job} has them).
        """
        return self.journal.list(state, method, limit).addCallbacks(
            lambda jobs: [self._describe(job, False) for job in jobs],
            self._refusedByJournal,
        )

    def attach(
        self,
        jobId: str,
        onProgress: ProgressCallback | None = None,
        owner: object = None,
    ) -> Deferred[Any]:
        """
        C{$/attach}: fire with the job's result, or fail with its error,
        once it ends (at once if it has); C{onProgress} hears its progress
        meanwhile, starting with the latest. Cancelling the Deferred
        detaches, and leaves the job running.
        """
        attacher = _Attacher(self, jobId, onProgress, owner)
        run = self._running.get(jobId) or self._ending.get(jobId)
        if run is not None:
            # Running here, or ended here and its end not yet committed
            # (which delivers it): no read of the journal.
            self._follow(jobId, attacher, run.progress)
            return attacher.deferred

        def found(job: JobRecord) -> None:
            if attacher.deferred.called:
                return
            current = self._running.get(jobId) or self._ending.get(jobId)
            if current is not None:
                self._follow(jobId, attacher, current.progress)
            elif job.final:
                _deliver(attacher, job)
            elif self._shared is not None:
                self._shared.follow(jobId, attacher, job)
            elif job.state == RUNNING and jobId not in self._unrecorded:
                # It ended between our read and now: read it again.
                self._get(jobId).addCallbacks(found, attacher.deferred.errback)
            else:
                self._follow(jobId, attacher, job.progress)

        self._get(jobId).addCallbacks(found, attacher.deferred.errback)
        return attacher.deferred

    def cancel(self, jobId: str) -> Deferred[dict[str, Any]]:
        """
        C{$/cancelJob}: cancel a waiting job at once, or stop a running one
        (as C{$/cancelRequest} stops a call); fire with the job's state
        after. A finished job is left as it is.
        """
        run = self._running.get(jobId)
        if run is not None:
            done: Deferred[dict[str, Any]] = Deferred()
            if run.cancelling is None:
                run.cancelling = []
            run.cancelling.append(done)
            if run.call is not None:
                run.call.cancel()
            return done
        now = self.reactor.seconds()

        def cancelled(job: JobRecord | None) -> Any:
            if job is None:
                raise JobNotFound("job not found", {"job": jobId})
            if job.state == CANCELLED:
                for attacher in self._attached.pop(jobId, []):
                    _deliver(attacher, job)
            elif job.state == RUNNING and self._shared is not None:
                # Running on another server, asked to stop it.
                return self._shared.cancelledElsewhere(job)
            return {"job": job.id, "state": self._state(job)}

        return _detached(
            self.journal.cancel(
                jobId, now, now + self.ttl, Cancelled().toWire()
            ).addCallbacks(cancelled, self._refusedByJournal)
        )

    def detachAll(self, owner: object) -> None:
        """
        Forget every attach of C{owner} (a connection that went away).
        """
        for jobId in list(self._attached):
            keep = [a for a in self._attached[jobId] if a.owner is not owner]
            if keep:
                self._attached[jobId] = keep
            else:
                del self._attached[jobId]

    @property
    def journalWorks(self) -> bool:
        """
        Whether the journal's last write went through.
        """
        return self._journalBroken is None

    def stats(self) -> dict[str, Any]:
        """
        Jobs by state, and the journal's size, for C{$/stats}.
        """
        stats: dict[str, Any] = dict(self.journal.counts())
        stats["submitted"] = self.submitted
        stats["journalBytes"] = self.journal.sizeBytes()
        stats["journal"] = "ok" if self._journalBroken is None else self._journalBroken
        if self._tickers:
            stats["ticks"] = self.ticks
            stats["schedules"] = self.scheduleStats()
        return stats
