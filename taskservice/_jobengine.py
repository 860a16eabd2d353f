"""
The job service's engine: claiming due jobs from the journal, running them
in the pool, retrying them, recording their ends (again, while the journal
refuses), and purging finished jobs past their time to be kept.

L{taskservice.jobs.JobService} is the front (the wire's job methods and the
service's lifecycle) over this.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._defaults import DEFAULT_MAX_RUNNING, DEFAULT_TTL
from taskservice._jobparts import JobIds, _Attacher, _journalError, _Run
from taskservice._journal import (
    CANCELLED,
    FAILED,
    PENDING_STATES,
    SUCCEEDED,
    Claimed,
    IJournal,
    JobRecord,
    JournalError,
    columnText,
    fromColumnText,
)
from taskservice.errors import (
    Cancelled,
    InternalError,
    JobNotFound,
    Overloaded,
    TaskFailed,
    TaskServiceError,
    TimedOut,
    Unavailable,
    WorkerLost,
    toWireError,
)
from taskservice.pool import ProcessPool

_RETRIED = (TaskFailed, TimedOut, WorkerLost)
_PURGE_EVERY = 60.0
_RELEASE_DELAY = 0.1
_REWRITE_DELAY = 1.0
"""Seconds before a job's end the journal could not take is written again."""


class JobEngine:
    """
    Runs the jobs of C{journal} in C{pool}: at most C{maxRunning} at once.
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
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.journal = journal
        self.ttl = ttl
        self.maxRunning = maxRunning
        self._jitter = jitter
        self._running: dict[str, _Run] = {}
        self._ending: dict[str, _Run] = {}
        """Jobs that ended here, until their end is committed."""
        self._reserved = 0
        """Slots held for submits recorded as running, not yet committed."""
        self._newId = JobIds()
        self._attached: dict[str, list[_Attacher]] = {}
        self._maybeDue = True
        self._claiming = False
        self._stopping = False
        self._pumpCall: IDelayedCall | None = None
        self._wake: IDelayedCall | None = None
        self._purgeCall: IDelayedCall | None = None
        self._journalBroken: str | None = None
        self._unrecorded: dict[str, IDelayedCall] = {}
        self._closed = False
        self.submitted = 0

    # -- running jobs ------------------------------------------------------

    def _due(self, runAt: float) -> None:
        if runAt <= self.reactor.seconds():
            self._maybeDue = True
            self._schedulePump()
        else:
            self._wakeAt(runAt)

    def _wakeAt(self, runAt: float) -> None:
        wake = self._wake
        if wake is not None and wake.active():
            if wake.getTime() <= runAt:
                return
            wake.cancel()
        delay = max(0.0, runAt - self.reactor.seconds())
        self._wake = self.reactor.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._maybeDue = True
        self._pump()

    def _schedulePump(self) -> None:
        if self._pumpCall is None and not self._stopping:
            self._pumpCall = self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._pumpCall = None
        if self._stopping or self._claiming or not self._maybeDue:
            return
        free = self.maxRunning - len(self._running) - self._reserved
        if free <= 0:
            return
        self._claiming = True
        self.journal.claim(free, self.reactor.seconds()).addCallbacks(
            self._claimed, self._claimFailed, callbackArgs=(free,)
        )

    def _claimed(self, claimed: Claimed, asked: int) -> None:
        self._claiming = False
        if self._stopping:
            # Claimed as we stopped: they never ran, so they wait again.
            for job in claimed.jobs:
                self.journal.release(job.id).addErrback(self._logFailure)
            return
        if len(claimed.jobs) < asked:
            self._maybeDue = False
        if claimed.nextRunAt is not None:
            self._wakeAt(claimed.nextRunAt)
        for job in claimed.jobs:
            self._start(job)
        if self._maybeDue:
            self._schedulePump()

    def _claimFailed(self, failure: Failure) -> None:
        self._claiming = False
        self._journalFailed(failure)
        # Try again a little later, not in a loop.
        self._wakeAt(self.reactor.seconds() + 1.0)

    def _start(self, job: JobRecord) -> None:
        run = _Run(job)
        self._running[job.id] = run
        params = fromColumnText(job.params)
        args, kwargs = (
            ((), params) if isinstance(params, dict) else (params or (), None)
        )
        context: dict[str, Any] = {"id": job.id, "attempt": job.attempts}
        if job.progress is not None:
            context["progress"] = job.progress

        def progressed(update: Mapping[str, Any]) -> None:
            run.progress = update
            self.journal.progress(job.id, update)
            for attacher in self._attached.get(job.id, ()):
                if attacher.onProgress is not None:
                    attacher.onProgress(update)

        call = self.pool.submit(
            job.method,
            args,
            kwargs,
            timeout=job.timeout,
            onProgress=progressed,
            owner=self,
            job=context,
        )
        run.call = call
        call.addBoth(self._ran, run)

    def _ran(self, outcome: Any, run: _Run) -> None:
        job = run.job
        self._running.pop(job.id, None)
        if self._maybeDue:
            self._schedulePump()
        now = self.reactor.seconds()
        if not isinstance(outcome, Failure):
            try:
                result = columnText(outcome)
            except (TypeError, ValueError):
                result = "null"
            self._end(run, SUCCEEDED, now, result=result, value=outcome)
            return
        assert outcome.value is not None
        error = toWireError(outcome.value)
        if isinstance(error, InternalError) and error is not outcome.value:
            self.log.failure("job {job} failed unexpectedly", outcome, job=job.id)
        if self._stopping and (
            isinstance(error, WorkerLost | Unavailable)
            or (isinstance(error, Cancelled) and run.cancelling is None)
        ):
            # Cut short by our own stop: the journal keeps it running, and
            # the next start recovers it.
            return
        if isinstance(error, Cancelled):
            self._end(run, CANCELLED, now, error=error)
        elif isinstance(error, Overloaded | Unavailable):
            # The pool did not run it: it waits again, the attempt uncounted.
            self.journal.release(job.id).addCallbacks(
                lambda _: self._due(now + _RELEASE_DELAY), self._journalFailed
            )
        elif isinstance(error, _RETRIED) and job.attempts < job.maxAttempts:
            delay = job.backoff * 2.0 ** (job.attempts - 1) * (0.5 + self._jitter())
            self.log.info(
                "job {job} ({method}) attempt {attempt} failed ({error});"
                " retrying in {delay:.2f}s",
                job=job.id,
                method=job.method,
                attempt=job.attempts,
                error=error.message,
                delay=delay,
            )
            self.journal.retryAt(job.id, now + delay, error.toWire()).addCallbacks(
                lambda _: self._due(now + delay), self._journalFailed
            )
        else:
            self._end(run, FAILED, now, error=error)

    def _end(
        self,
        run: _Run,
        state: str,
        now: float,
        *,
        result: str | None = None,
        value: Any = None,
        error: TaskServiceError | None = None,
    ) -> None:
        job = run.job
        self._ending[job.id] = run
        wire = None if error is None else error.toWire()
        d = self.journal.finish(
            job.id,
            state,
            now,
            now + self.ttl,
            result=result,
            error=wire,
            progress=run.progress,
        )

        def recorded(_: object) -> None:
            self._ending.pop(job.id, None)
            self._journalRecovered()
            for attacher in self._attached.pop(job.id, []):
                if error is None:
                    attacher.deferred.callback(value)
                else:
                    attacher.deferred.errback(Failure(error))
            for waiter in run.cancelling or ():
                waiter.callback({"job": job.id, "state": state})

        def notRecorded(failure: Failure) -> None:
            # The journal still says running. Keep the outcome and write it
            # again a little later: the job did end, and its attached
            # callers wait for that to be on disk.
            self._journalFailed(failure)
            if self._closed:
                self._ending.pop(job.id, None)
                for attacher in self._attached.pop(job.id, []):
                    attacher.deferred.errback(_journalError(failure))
                for waiter in run.cancelling or ():
                    waiter.errback(_journalError(failure))
                return
            retry = self.reactor.callLater(
                _REWRITE_DELAY,
                self._rewrite,
                job.id,
                lambda: self._end(
                    run, state, now, result=result, value=value, error=error
                ),
            )
            self._unrecorded[job.id] = retry

        d.addCallbacks(recorded, notRecorded)

    def _rewrite(self, jobId: str, end: Callable[[], None]) -> None:
        self._unrecorded.pop(jobId, None)
        end()

    def _purge(self) -> None:
        self._purgeCall = self.reactor.callLater(
            min(_PURGE_EVERY, self.ttl), self._purge
        )
        self.journal.purge(self.reactor.seconds()).addErrback(self._journalFailed)

    # -- attaching ---------------------------------------------------------

    def _follow(
        self, jobId: str, attacher: _Attacher, latest: Mapping[str, Any] | None
    ) -> None:
        self._attached.setdefault(jobId, []).append(attacher)
        if latest is not None and attacher.onProgress is not None:
            attacher.onProgress(latest)

    def _detach(self, jobId: str, attacher: _Attacher) -> None:
        attachers = self._attached.get(jobId)
        if attachers is not None and attacher in attachers:
            attachers.remove(attacher)
            if not attachers:
                del self._attached[jobId]

    # -- reading -----------------------------------------------------------

    def _get(self, jobId: str) -> Deferred[JobRecord]:
        def found(job: JobRecord | None) -> JobRecord:
            if job is None:
                raise JobNotFound("job not found", {"job": jobId})
            return job

        return self.journal.get(jobId).addCallbacks(found, self._refusedByJournal)

    def _state(self, job: JobRecord) -> str:
        if job.state in PENDING_STATES and job.runAt <= self.reactor.seconds():
            return "queued"
        return job.state

    def _describe(self, job: JobRecord, full: bool) -> dict[str, Any]:
        run = self._running.get(job.id)
        progress = run.progress if run is not None else job.progress
        described: dict[str, Any] = {
            "job": job.id,
            "method": job.method,
            "state": self._state(job),
            "attempts": job.attempts,
            "maxAttempts": job.maxAttempts,
            "key": job.key,
            "createdAt": job.createdAt,
            "runAt": job.runAt,
            "startedAt": job.startedAt,
            "finishedAt": job.finishedAt,
            "progress": progress,
            "error": job.error,
        }
        if full:
            described["params"] = fromColumnText(job.params)
            described["result"] = fromColumnText(job.result)
        return described

    # -- journal trouble ---------------------------------------------------

    def _refusedByJournal(self, failure: Failure) -> Failure:
        if failure.check(JournalError):
            self._journalFailed(failure)
            return Failure(_journalError(failure))
        return failure

    def _journalFailed(self, failure: Failure) -> None:
        reason = failure.getErrorMessage()
        if self._journalBroken != reason:
            self._journalBroken = reason
            self.log.error("the job journal failed: {reason}", reason=reason)

    def _journalRecovered(self) -> None:
        if self._journalBroken is not None:
            self.log.info("the job journal works again")
            self._journalBroken = None

    def _logFailure(self, failure: Failure) -> None:
        self._journalFailed(failure)
