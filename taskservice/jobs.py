"""
Durable jobs: a service in front of a L{ProcessPool} that records every job
in a journal before it is accepted, runs it in the pool, and records its
end, so a job survives a closed browser tab, a restart or a crash.

The pool stays journal-free: this service calls its public C{submit} like
any caller. See docs/jobs for the states and the guarantees.
"""

from __future__ import annotations

import base64
import functools
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._cron import isoTick, tickKey
from taskservice._defaults import DEFAULT_MAX_RUNNING, DEFAULT_TTL
from taskservice._jobrequest import JobRequest
from taskservice._journal import (
    CANCELLED,
    FAILED,
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    Claimed,
    IJournal,
    JobRecord,
    JournalError,
    NewJob,
    Recovered,
    columnText,
    fromColumnText,
)
from taskservice._schedules import Schedule, Ticker, schedulesOf
from taskservice._sharedjobs import SharedJobs, SharedJournal
from taskservice.errors import (
    Cancelled,
    InternalError,
    JobNotFound,
    JournalUnavailable,
    Overloaded,
    TaskFailed,
    TaskServiceError,
    TimedOut,
    Unavailable,
    WorkerLost,
    fromWireError,
    toWireError,
)
from taskservice.pool import ProcessPool

DEFAULT_MAX_PENDING = 1_000_000
"""Jobs that may wait; past it, C{$/submit} answers -32003."""
RESTART_ALLOWANCE = 3
"""Runs cut short by a stopped server that an idempotent job may have
beyond its own attempts (so a job that takes its server down each time it
runs stops being run)."""
_RETRIED = (TaskFailed, TimedOut, WorkerLost)
_PURGE_EVERY = 60.0
_RELEASE_DELAY = 0.1
_REWRITE_DELAY = 1.0
"""Seconds before a job's end the journal could not take is written again."""

ProgressCallback = Callable[[Mapping[str, Any]], None]


class JobIds:
    """
    Job ids: 16 url-safe characters, a random prefix drawn once per process
    (48 bits from L{secrets}) and a counter (48 bits), so a new id costs a
    counter step rather than a read of the system's random source.

    Ids are names, not secrets: anyone allowed to call the server (the
    token, see docs/security) may list every job with C{$/jobs}. They are
    unique: the prefix differs from process to process (a clash of two
    processes' prefixes, about 1 in 2**48 for any two, would make the
    journal refuse the clashing submit with -32009, never mix two jobs up).
    """

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._next = 1 << 48

    def __call__(self) -> str:
        n = self._next
        if n >= 1 << 48:
            self._prefix = secrets.token_urlsafe(6)
            n = 0
        self._next = n + 1
        return self._prefix + base64.urlsafe_b64encode(n.to_bytes(6, "big")).decode()


class _Attacher:
    """
    One caller waiting for a job's end (C{$/attach}), with its progress
    callback.
    """

    __slots__ = ("deferred", "onProgress", "owner")

    def __init__(
        self,
        jobs: JobService,
        jobId: str,
        onProgress: ProgressCallback | None,
        owner: object,
    ) -> None:
        self.onProgress = onProgress
        self.owner = owner
        self.deferred: Deferred[Any] = Deferred(lambda d: jobs._detach(jobId, self))


class _Run:
    """
    A job running here: its pool call, latest progress, and who waits.
    """

    __slots__ = ("call", "cancelling", "job", "progress")

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        self.progress: Mapping[str, Any] | None = job.progress
        self.call: Deferred[Any] | None = None
        self.cancelling: list[Deferred[dict[str, Any]]] | None = None


class JobService(Service):
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
        self.reactor = reactor
        self.pool = pool
        self.journal = journal
        self.ttl = ttl
        self.maxRunning = maxRunning
        self.maxPending = maxPending
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
        self.recovered: Recovered | None = None
        self.schedules: list[Schedule] = schedulesOf(pool.registry, schedules)
        self._tickers = [
            Ticker(reactor, schedule, functools.partial(self._tick, schedule))
            for schedule in self.schedules
        ]
        self.ticks = 0
        """Ticks this server recorded (each a job) since it started."""
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

    # -- schedules ---------------------------------------------------------

    def _tick(self, schedule: Schedule, tick: float) -> None:
        """
        Record C{schedule}'s tick at C{tick} and its job, unless this tick
        (or a later one) is recorded already, here or by another server.
        """
        if self._stopping:
            return
        spec = self.pool.registry[schedule.name]
        now = self.reactor.seconds()
        job = NewJob(
            id=self._newId(),
            method=schedule.name,
            params="null",
            key=tickKey(schedule.name, tick),
            maxAttempts=spec.retries + 1,
            backoff=spec.backoff,
            timeout=spec.timeout,
            runAt=min(tick, now),
            createdAt=now,
        )

        def recorded(record: JobRecord | None) -> None:
            self._journalRecovered()
            if record is None:
                self.log.debug(
                    "schedule {name}: tick {tick} already recorded",
                    name=schedule.name,
                    tick=isoTick(tick),
                )
                return
            self.ticks += 1
            self.submitted += 1
            self.log.info(
                "schedule {name}: tick {tick} is job {job}",
                name=schedule.name,
                tick=isoTick(tick),
                job=record.id,
            )
            if not record.final:
                self._due(record.runAt)

        def failed(failure: Failure) -> None:
            self._journalFailed(failure)
            # Try this tick again a little later, until the next is due.
            nextTick = schedule.cron.next(tick)
            later = self.reactor.seconds() + _REWRITE_DELAY
            if not self._stopping and (nextTick is None or later < nextTick):
                self.reactor.callLater(_REWRITE_DELAY, self._tick, schedule, tick)

        self.journal.recordTick(schedule.name, tick, job).addCallbacks(recorded, failed)

    def scheduleStats(self) -> dict[str, Any]:
        """
        Each schedule's expression and next tick (ISO 8601 UTC), by task.
        """
        return {
            ticker.schedule.name: {
                "cron": ticker.schedule.cron.expression,
                "next": None if ticker.nextTick is None else isoTick(ticker.nextTick),
            }
            for ticker in self._tickers
        }

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


def _detached(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred firing as C{d} does, whose cancelling (a caller giving up)
    leaves C{d}, and the bookkeeping its callbacks do, alone.
    """
    out: Deferred[Any] = Deferred()
    d.chainDeferred(out)
    return out


def _deliver(attacher: _Attacher, job: JobRecord) -> None:
    if job.state == SUCCEEDED:
        value = fromColumnText(job.result)
        attacher.deferred.callback(value)
    else:
        attacher.deferred.errback(Failure(fromWireError(job.error or {})))


def _journalError(failure: Failure) -> JournalUnavailable:
    return JournalUnavailable(
        "the job journal is unavailable", {"reason": failure.getErrorMessage()}
    )
