"""
The job service's side of a journal shared by several task servers (the
PostgreSQL journal): it wakes the service when another server's submit makes
a job due, follows jobs running on other servers for C{$/attach}, and stops
jobs here that another server was asked to cancel.

A journal is shared when it has C{listen} and C{watch} (L{SharedJournal});
the SQLite journal has neither, and the job service then never builds this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._journal import JobRecord

if TYPE_CHECKING:
    from taskservice._pgwire import JournalEvents
    from taskservice.jobs import JobService, _Attacher


@runtime_checkable
class SharedJournal(Protocol):
    """
    What a journal shared between servers offers beyond
    L{taskservice._journal.IJournal}.
    """

    def listen(self, events: JournalEvents) -> None:
        """
        Start telling C{events} of due jobs, watched jobs and cancels.
        """

    def watch(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        Have the job's progress and end notified to this server; fire with
        the job as it is now.
        """

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        The job C{jobId}, or L{None}.
        """


class SharedJobs:
    """
    The events of a L{SharedJournal}, applied to a L{JobService}.
    """

    log = Logger()

    def __init__(self, jobs: JobService, journal: SharedJournal) -> None:
        self.jobs = jobs
        self.journal = journal
        self._watched: set[str] = set()
        self._lastProgress: dict[str, Mapping[str, Any]] = {}

    def start(self) -> None:
        self.journal.listen(self)

    # -- JournalEvents -----------------------------------------------------

    def due(self, runAt: float) -> None:
        if self.jobs.running and not self.jobs._stopping:
            self.jobs._due(runAt)

    def progressed(self, jobId: str, update: Mapping[str, Any]) -> None:
        if jobId in self.jobs._running or jobId not in self.jobs._attached:
            return
        if self._lastProgress.get(jobId) == update:
            # (The last update comes again with the end.)
            return
        self._lastProgress[jobId] = update
        for attacher in list(self.jobs._attached.get(jobId, ())):
            if attacher.onProgress is not None:
                attacher.onProgress(update)

    def ended(self, jobId: str) -> None:
        if jobId in self.jobs._running or jobId not in self.jobs._attached:
            self._lastProgress.pop(jobId, None)
            return
        self.journal.get(jobId).addCallbacks(
            lambda job: self._check(jobId, job), self._logFailure
        )

    def cancelRequested(self, jobId: str) -> None:
        # Read it first: the claim that made it ours may still be on its way
        # to the reactor; this read is answered after it.
        def read(job: JobRecord | None) -> None:
            if jobId in self.jobs._running:
                self.jobs.cancel(jobId).addErrback(self._logFailure)

        self.journal.get(jobId).addCallbacks(read, self._logFailure)

    def busy(self) -> bool:
        jobs = self.jobs
        return len(jobs._running) + jobs._reserved >= jobs.maxRunning

    def resync(self) -> None:
        self.due(self.jobs.reactor.seconds())
        for jobId in list(self.jobs._attached):
            self.ended(jobId)

    # -- the job service's hooks -------------------------------------------

    def follow(self, jobId: str, attacher: _Attacher, job: JobRecord) -> None:
        """
        C{attacher} waits for a job that is not running here (waiting, or
        running on another server): watch it.
        """
        self.jobs._follow(jobId, attacher, job.progress)
        if job.progress is not None:
            self._lastProgress[jobId] = job.progress
        self.journal.watch(jobId).addCallbacks(
            lambda now: self._check(jobId, now), self._logFailure
        )
        self._watched.add(jobId)

    def _check(self, jobId: str, job: JobRecord | None) -> None:
        from taskservice.jobs import _deliver

        if jobId in self.jobs._running:
            return
        if job is None or job.final:
            self._watched.discard(jobId)
            self._lastProgress.pop(jobId, None)
            for attacher in self.jobs._attached.pop(jobId, []):
                if attacher.deferred.called:
                    continue
                if job is None:
                    from taskservice.errors import JobNotFound

                    attacher.deferred.errback(
                        JobNotFound("job not found", {"job": jobId})
                    )
                else:
                    _deliver(attacher, job)

    def cancelledElsewhere(self, job: JobRecord) -> Deferred[dict[str, Any]]:
        """
        C{$/cancelJob} of a job running on another server, which was asked
        to stop it: fire with the job's state once it ended.
        """
        done: Deferred[dict[str, Any]] = Deferred()

        def ended(_: object) -> None:
            self.jobs.job(job.id).addCallbacks(
                lambda now: done.callback({"job": job.id, "state": now["state"]}),
                done.errback,
            )

        self.jobs.attach(job.id, owner=self).addBoth(ended)
        return done

    def _logFailure(self, failure: Failure) -> None:
        self.jobs._journalFailed(failure)
