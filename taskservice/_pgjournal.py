"""
The PostgreSQL job journal: the jobs of several task servers in one
database, claimed once, recovered when a server dies.

Threads, not psycopg's async API: Twisted's default reactor is not asyncio's,
and the SQLite journal already runs on one L{GroupCommitWriter} thread; this
backend reuses it (one writer connection, every operation queued in one
reactor pass committed in one transaction), so both backends keep one shape
and the same group commits. A second connection only listens (C{LISTEN});
the reactor reads its socket like any other, without a thread.

Between servers:

 - claims take due jobs with C{SELECT ... FOR UPDATE SKIP LOCKED}, so two
   servers never claim the same job, and neither waits for the other;
 - a transaction that makes jobs due sends C{NOTIFY taskservice_jobs} (once,
   at commit): every server's listener wakes its job service, which claims;
   a slow poll with each heartbeat is only a safety net;
 - each server has a row in C{taskservice_servers} and heartbeats it every
   C{serverTimeout / 5} seconds (the database's clock, so the machines'
   clocks do not matter); the running jobs of a server whose heartbeat is
   older than C{serverTimeout}, or that stopped, are recovered by the
   others with the restart rule (run again if the task is safe to run
   again and attempts are left, else C{interrupted}; C{cancelled} if a
   cancel was asked for it);
 - a server that follows a job running elsewhere (C{$/attach}, a
   C{$/cancelJob} waiting for the end) adds itself to the job's
   C{watchers}; the server running it notifies each watcher's channel of
   its progress and its end; a cancel of a job running elsewhere asks its
   server, through its channel, to stop it.

The schema is versioned in C{taskservice_meta} and migrated on start under
a transaction-level advisory lock, so servers starting together do not race.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json
from taskservice._defaults import DEFAULT_SERVER_TIMEOUT
from taskservice._journal import (
    CANCELLED,
    FINAL_STATES,
    INTERRUPTED,
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STATES,
    Batch,
    Claimed,
    GroupCommitWriter,
    JobRecord,
    JournalError,
    NewJob,
    Recovered,
    columnText,
    recordFromRow,
)
from taskservice._pgbatch import ItemError, Merger
from taskservice._pgops import Busy, End, Operations
from taskservice._pgschema import COLUMNS, JCOLUMNS, migrate
from taskservice._pgwire import (
    JOBS_CHANNEL,
    NOTIFY_LIMIT,
    Connection,
    JournalEvents,
    Later,
    Listener,
    describe,
    importPsycopg,
    isPostgreSQL,
    notifyEnd,
    oneLine,
    serverChannel,
    settled,
)

__all__ = ["DEFAULT_SERVER_TIMEOUT", "PostgreSQLJournal", "describe", "isPostgreSQL"]

"""Seconds without a heartbeat after which a server's jobs are recovered."""
_CLAIM_AGAIN = 0.05
"""Seconds before claiming again due jobs another server's claim held."""
_WATCH_AGAIN = 0.005
"""Seconds before watching again a job another server had locked."""

T = TypeVar("T")


class PostgreSQLJournal:
    """
    L{taskservice._journal.IJournal} on a PostgreSQL database shared by
    several task servers (see the module's docstring).

    @param dsn: a libpq connection string or C{postgresql://} URL.
    @param serverTimeout: seconds without a heartbeat after which this
        server's running jobs are recovered by the others; it heartbeats
        five times as often.
    @param threaded: run the writer in its own thread (L{False}: inline).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        *,
        serverTimeout: float = DEFAULT_SERVER_TIMEOUT,
        threaded: bool = True,
    ) -> None:
        if serverTimeout <= 0:
            raise ValueError("serverTimeout must be positive")
        self.reactor = reactor
        self.dsn = dsn
        self.name = describe(dsn)
        self.serverTimeout = serverTimeout
        self.serverId = secrets.token_hex(8)
        self.serverName = f"{socket.gethostname()}:{os.getpid()}"
        self.channel = serverChannel(self.serverId)
        self._counts: Counter[str] = Counter(dict.fromkeys(STATES, 0))
        self._size = 0
        self._progress: dict[str, Mapping[str, Any]] = {}
        self._progressQueued = False
        self._events: JournalEvents | None = None
        self._listener: Listener | None = None
        self._reconnect: IDelayedCall | None = None
        self._heartbeat: IDelayedCall | None = None
        self._beating = False
        self._aliveSince: float | None = None
        self._rerun: Callable[[JobRecord], bool] | None = None
        self._ttl = 0.0
        self._closing = False
        self._helping = False
        self._claiming = 0
        self._wokenWhileClaiming = False
        self.swept: list[Recovered] = []
        """What each sweep recovered from servers that went away."""
        self._writer = GroupCommitWriter(
            reactor,
            self._connect,
            threaded=threaded,
            onCommitted=self._committed,
            name=self.name,
        )
        self.queued = 0
        """Operations queued to the writer so far."""
        ops = self._ops = Operations(self.serverId, self._othersNeeded)
        self._submits: Merger[tuple[NewJob, bool], tuple[JobRecord, bool]] = Merger(
            self, ops.submitAll, self.name
        )
        self._ends: Merger[End, bool] = Merger(self, ops.endAll, self.name)
        self._gets: Merger[str, JobRecord | None] = Merger(self, ops.getAll, self.name)
        self._watches: Merger[str, JobRecord | Busy | None] = Merger(
            self, ops.watchAll, self.name
        )

    def enqueue(self, operation: Callable[[Any, Batch], T]) -> Deferred[T]:
        """
        Queue C{operation} to the writer (see L{GroupCommitWriter.run}).
        """
        self.queued += 1
        return self._writer.run(operation)

    def __repr__(self) -> str:
        return f"PostgreSQLJournal({self.name!r})"

    # -- opening -----------------------------------------------------------

    def _rawConnect(self, **options: Any) -> Any:
        psycopg = importPsycopg()
        try:
            return psycopg.connect(
                self.dsn,
                application_name="taskservice",
                connect_timeout=10,
                **options,
            )
        except psycopg.Error as e:
            raise JournalError(
                f"cannot connect to the job journal {self.name}: {oneLine(e)}"
            ) from e

    def _connect(self, register: bool = True) -> Connection:
        connection = Connection(self._rawConnect, self.serverId)
        try:
            self._prepare(connection.raw, register)
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, db: Any, register: bool) -> None:
        """
        Check the database is ours (or empty), migrate it under the
        advisory lock, register this server and read the counts.
        """
        psycopg = importPsycopg()
        try:
            migrate(db, self.name)
            if register:
                db.execute(
                    "INSERT INTO taskservice_servers (id, name, started_at,"
                    " heartbeat_at) VALUES (%s, %s, %s, now()) ON CONFLICT (id)"
                    " DO UPDATE SET heartbeat_at = now()",
                    (self.serverId, self.serverName, self.reactor.seconds()),
                )
            found = dict(
                db.execute(
                    "SELECT state, count(*) FROM taskservice_jobs GROUP BY state"
                ).fetchall()
            )
            db.commit()
        except psycopg.Error as e:
            db.rollback()
            raise JournalError(
                f"cannot open the job journal {self.name}: {oneLine(e)}"
            ) from e
        except BaseException:
            db.rollback()
            raise
        self._counts = Counter(dict.fromkeys(STATES, 0))
        self._counts.update(found)

    def open(self) -> None:
        self._closing = False
        self._writer.start()

    def check(self) -> None:
        """
        Connect and check the database as L{open} does (creating or
        migrating the schema), then disconnect: raise L{JournalError} if the
        server could not use it.
        """
        self._connect(register=False).close()

    def _othersNeeded(self) -> bool:
        """
        Whether a job due now should wake the other servers: only if this
        one is too busy to claim it (or has no job service listening), so
        that a server runs the jobs submitted to it while it can, without
        the round trips of a job followed from another server. (Read in
        the writer's thread: a hint, not a promise.)
        """
        events = self._events
        return events is None or events.busy()

    def listen(self, events: JournalEvents) -> None:
        """
        Start listening: C{events} hears of due jobs, of the jobs this
        server watches, and of cancels asked of it.
        """
        self._events = events
        self._startListening()

    def _startListening(self) -> None:
        self._listenOn(self._listeningConnection())

    def _listeningConnection(self) -> Any:
        psycopg = importPsycopg()
        connection = self._rawConnect(autocommit=True)
        try:
            connection.execute(f"LISTEN {JOBS_CHANNEL}")
            connection.execute(f'LISTEN "{self.channel}"')
        except psycopg.Error as e:
            connection.close()
            raise JournalError(
                f"cannot listen to the job journal {self.name}: {oneLine(e)}"
            ) from e
        connection.pgconn.nonblocking = 1
        return connection

    def _listenOn(self, connection: Any) -> None:
        self._listener = Listener(self, connection)
        self.reactor.addReader(self._listener)

    def _listenerLost(self, listener: Listener, reason: Failure) -> None:
        if listener is not self._listener:
            return
        self.reactor.removeReader(listener)
        self._listener = None
        listener.close()
        if self._closing:
            return
        self.log.warn(
            "lost the job journal's listening connection ({reason}); reconnecting",
            reason=reason.getErrorMessage(),
        )
        self._reconnect = self.reactor.callLater(1.0, self._relisten)

    def _relisten(self) -> None:
        # Connecting blocks: not in the reactor's thread.
        self._reconnect = None
        d = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._listeningConnection
        )
        d.addCallbacks(self._relistened, self._notRelistened)

    def _relistened(self, connection: Any) -> None:
        if self._closing:
            connection.close()
            return
        self._listenOn(connection)
        self.log.info("listening to the job journal again")
        if self._events is not None:
            self._events.resync()

    def _notRelistened(self, failure: Failure) -> None:
        if self._closing:
            return
        self.log.warn("{error}; trying again", error=failure.getErrorMessage())
        self._reconnect = self.reactor.callLater(1.0, self._relisten)

    def _notified(self, channel: str, payload: str) -> None:
        events = self._events
        if channel == JOBS_CHANNEL:
            when, _, origin = payload.partition(" ")
            try:
                runAt = float(when)
            except ValueError:
                runAt = self.reactor.seconds()
            if runAt <= self.reactor.seconds():
                if origin != self.serverId:
                    # Another server asks for help with jobs due now.
                    self._helping = True
                if self._claiming:
                    # The claim under way may have missed them.
                    self._wokenWhileClaiming = True
            if events is not None:
                events.due(runAt)
            return
        if events is None:
            return
        try:
            note = _json.loads(payload.encode())
        except ValueError:
            return
        if not isinstance(note, dict):
            return
        if "end" in note:
            update = note.get("update")
            if isinstance(update, dict):
                # The last progress, saved with the end.
                events.progressed(str(note["end"]), update)
            events.ended(str(note["end"]))
        elif "progress" in note:
            update = note.get("update")
            if isinstance(update, dict):
                events.progressed(str(note["progress"]), update)
            else:
                events.ended(str(note["progress"]))
        elif "cancel" in note:
            events.cancelRequested(str(note["cancel"]))

    def close(self) -> Deferred[None]:
        self._closing = True
        for call in (self._heartbeat, self._reconnect):
            if call is not None and call.active():
                call.cancel()
        self._heartbeat = self._reconnect = None
        listener, self._listener = self._listener, None
        if listener is not None:
            self.reactor.removeReader(listener)
            listener.close()
        self._flushProgress()
        serverId = self.serverId

        def leave(db: Connection, batch: Batch) -> None:
            # Jobs still running here (cut short by the stop) are recovered
            # by the other servers at their next heartbeat.
            db.execute("DELETE FROM taskservice_servers WHERE id = %s", (serverId,))

        self.enqueue(leave).addErrback(lambda f: None)
        return self._writer.stop()

    # -- bookkeeping -------------------------------------------------------

    def _committed(self, batch: Batch) -> None:
        batch.applyTo(self._counts)

    def counts(self) -> dict[str, int]:
        """
        Jobs by state: as read at the last heartbeat, plus this server's
        own changes since.
        """
        return {state: max(0, self._counts[state]) for state in STATES}

    def sizeBytes(self) -> int:
        """
        The jobs table's size with its indexes, as read at the last
        heartbeat.
        """
        return self._size

    # -- heartbeats and recovery ------------------------------------------

    def recover(
        self, now: float, expiresAt: float, rerun: Callable[[JobRecord], bool]
    ) -> Deferred[Recovered]:
        """
        Start heartbeating. Jobs left running by servers that went away
        (this server's earlier process among them) are recovered by the
        heartbeats' sweeps, once this server has itself heartbeaten for
        C{serverTimeout} (so that after an outage of the database, servers
        coming back do not take each other's jobs); nothing is recovered
        here and now.
        """
        self._rerun = rerun
        self._ttl = max(0.0, expiresAt - now)
        self._aliveSince = now
        self._scheduleHeartbeat()
        d: Deferred[Recovered] = Deferred()
        d.callback(Recovered([], []))
        return d

    def _scheduleHeartbeat(self) -> None:
        if not self._closing:
            self._heartbeat = self.reactor.callLater(self.serverTimeout / 5, self.beat)

    def beat(self) -> Deferred[Recovered | None]:
        """
        Heartbeat now (and sweep, if this server has been alive long
        enough); fire with what the sweep recovered.
        """
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        now = self.reactor.seconds()
        sweep = (
            self._aliveSince is not None
            and now - self._aliveSince >= self.serverTimeout
        )
        rerun = self._rerun or (lambda job: False)
        d: Deferred[Any] = self.enqueue(
            lambda db, batch: self._beat(db, batch, now, sweep, rerun)
        )
        d.addCallbacks(self._beaten, self._notBeaten, callbackArgs=(now,))
        return d

    def _beaten(
        self, outcome: tuple[Recovered | None, bool, dict[str, int], int], now: float
    ) -> Recovered | None:
        recovered, lost, counts, size = outcome
        if lost:
            self.log.error(
                "this server's heartbeat was missing from the job journal: the"
                " other servers took it for gone and recovered its running jobs"
            )
        if self._aliveSince is None:
            self._aliveSince = now
        self._counts = Counter(dict.fromkeys(STATES, 0))
        self._counts.update(counts)
        self._size = size
        if recovered is not None and (recovered.requeued or recovered.interrupted):
            self.swept.append(recovered)
            self.log.info(
                "jobs left running by task servers that went away: {requeued}"
                " queued to run again, {interrupted} ended",
                requeued=len(recovered.requeued),
                interrupted=len(recovered.interrupted),
            )
        self._scheduleHeartbeat()
        if self._events is not None:
            # The safety net: claim whatever a lost notification left due.
            self._events.due(now)
        return recovered

    def _notBeaten(self, failure: Failure) -> None:
        self._aliveSince = None
        self.log.warn(
            "heartbeat to the job journal failed: {reason}",
            reason=failure.getErrorMessage(),
        )
        self._scheduleHeartbeat()

    def _beat(
        self,
        db: Connection,
        batch: Batch,
        now: float,
        sweep: bool,
        rerun: Callable[[JobRecord], bool],
    ) -> tuple[Recovered | None, bool, dict[str, int], int]:
        lost = not db.execute(
            "UPDATE taskservice_servers SET heartbeat_at = now() WHERE id = %s",
            (self.serverId,),
        ).rowcount
        if lost:
            db.execute(
                "INSERT INTO taskservice_servers (id, name, started_at, heartbeat_at)"
                " VALUES (%s, %s, %s, now())",
                (self.serverId, self.serverName, now),
            )
        recovered = self._sweep(db, batch, now, rerun) if sweep else None
        counts = dict(
            db.execute(
                "SELECT state, count(*) FROM taskservice_jobs GROUP BY state"
            ).fetchall()
        )
        size = db.execute(
            "SELECT pg_total_relation_size('taskservice_jobs')"
        ).fetchone()[0]
        return recovered, lost, counts, int(size)

    def _sweep(
        self,
        db: Connection,
        batch: Batch,
        now: float,
        rerun: Callable[[JobRecord], bool],
    ) -> Recovered:
        timeout = self.serverTimeout
        rows = db.execute(
            f"SELECT {JCOLUMNS}, j.cancel_requested, j.watchers"
            " FROM taskservice_jobs j WHERE j.state = 'running' AND NOT EXISTS"
            " (SELECT 1 FROM taskservice_servers s WHERE s.id = j.server"
            "  AND s.heartbeat_at >= now() - make_interval(secs => %s))"
            " FOR UPDATE OF j SKIP LOCKED",
            (timeout,),
        ).fetchall()
        requeued: list[str] = []
        ended: list[str] = []
        expiresAt = now + self._ttl
        for row in rows:
            job = recordFromRow(row[:16])
            cancelRequested, watchers = row[16], row[17]
            if cancelRequested:
                error = {"code": -32800, "message": "cancelled"}
                state = CANCELLED
            elif rerun(job):
                db.execute(
                    "UPDATE taskservice_jobs SET state = 'queued', run_at = %s,"
                    " server = NULL, origin = %s WHERE id = %s",
                    (now, self.serverId, job.id),
                )
                db.wake(now)
                requeued.append(job.id)
                batch.moved(RUNNING, QUEUED)
                continue
            else:
                state = INTERRUPTED
                error = {
                    "code": -32008,
                    "message": "interrupted",
                    "data": {
                        "job": job.id,
                        "attempts": job.attempts,
                        "reason": "its task server went away while it ran, and"
                        " its task is not safe to run again"
                        if job.attempts <= job.maxAttempts
                        else "its task server went away while it ran, and it"
                        " has run as many times as it may",
                    },
                }
            db.execute(
                "UPDATE taskservice_jobs SET state = %s, finished_at = %s,"
                " expires_at = %s, error = %s, server = NULL WHERE id = %s",
                (state, now, expiresAt, columnText(error), job.id),
            )
            notifyEnd(db, job.id, watchers)
            ended.append(job.id)
            batch.moved(RUNNING, state)
        db.execute(
            "DELETE FROM taskservice_servers WHERE id <> %s AND heartbeat_at <"
            " now() - make_interval(secs => %s)",
            (self.serverId, timeout),
        )
        return Recovered(requeued, ended)

    # -- operations --------------------------------------------------------

    def submit(
        self, job: NewJob, *, running: bool = False
    ) -> Deferred[tuple[JobRecord, bool]]:
        """
        Record C{job} (see L{taskservice._journal.IJournal.submit}); with
        C{running}, claimed by this server at once.
        """
        return self._submits.add((job, running))

    def claim(self, limit: int, now: float) -> Deferred[Claimed]:
        """
        Claim due jobs: those submitted (or retried, or recovered) here, and
        those of other servers once they asked for help (a notification) or
        have waited for a heartbeat's interval (so a server runs its own
        jobs while it can, and nobody's wait for long).
        """
        serverId = self.serverId
        helping, self._helping = self._helping, False
        grace = self.serverTimeout / 5

        def claim(db: Connection, batch: Batch) -> Later[tuple[Claimed, bool]]:
            # One statement: the claim, and the next time a job waiting
            # (other than those claimed) is due, from the same snapshot; sent
            # with the commit (its result is needed only after it).
            claiming = db.send(
                "WITH due AS (SELECT seq, state FROM taskservice_jobs"
                " WHERE state IN ('queued', 'scheduled') AND run_at <= %s"
                " AND (%s OR origin = %s OR origin IS NULL OR run_at <= %s)"
                " ORDER BY run_at, seq LIMIT %s FOR UPDATE SKIP LOCKED),"
                " claimed AS (UPDATE taskservice_jobs j SET state = 'running',"
                " attempts = j.attempts + 1, started_at = %s, server = %s"
                f" FROM due WHERE j.seq = due.seq RETURNING {JCOLUMNS},"
                " j.seq, due.state)"
                " SELECT *, NULL FROM claimed UNION ALL SELECT "
                + ", ".join(["NULL"] * 18)
                + ", (SELECT min(run_at) FROM taskservice_jobs WHERE state IN"
                " ('queued', 'scheduled') AND seq NOT IN (SELECT seq FROM due))",
                (now, helping, serverId, now - grace, limit, now, serverId),
            )
            return db.later(lambda: claimed(claiming.fetchall(), batch))

        def claimed(rows: list[Any], batch: Batch) -> tuple[Claimed, bool]:
            [nextRunAt] = [row[18] for row in rows if row[0] is None]
            rows = [row for row in rows if row[0] is not None]
            rows.sort(key=lambda row: (row[9], row[16]))
            for row in rows:
                batch.moved(row[17], RUNNING)
            left = nextRunAt is not None and nextRunAt <= now and len(rows) < limit
            if left:
                # Left: another server's (claimable here after the grace,
                # unless it asked for help), or locked by another server's
                # transaction (a claim, a watch: gone in a moment).
                again = now + _CLAIM_AGAIN
                nextRunAt = again if helping else max(nextRunAt + grace, again)
            return Claimed([recordFromRow(row[:16]) for row in rows], nextRunAt), left

        self._flushProgress()
        self._claiming += 1
        return self.enqueue(claim).addCallback(settled).addBoth(self._claimed, helping)

    def _claimed(self, outcome: Any, helping: bool) -> Any:
        self._claiming -= 1
        if isinstance(outcome, tuple):
            outcome, left = outcome
            if helping and left:
                # Still helping when we look again for what was locked.
                self._helping = True
        if self._wokenWhileClaiming and not self._claiming:
            self._wokenWhileClaiming = False
            if isinstance(outcome, Claimed):
                # Jobs made due while this claim ran: look again now.
                now = self.reactor.seconds()
                nextRunAt = outcome.nextRunAt
                if nextRunAt is None or nextRunAt > now:
                    outcome = Claimed(outcome.jobs, now)
        return outcome

    def progress(self, jobId: str, update: Mapping[str, Any]) -> None:
        self._progress[jobId] = update
        if not self._progressQueued:
            self._progressQueued = True
            self.reactor.callLater(0, self._flushProgress)

    def _flushProgress(self) -> None:
        self._progressQueued = False
        if not self._progress:
            return
        updates, self._progress = self._progress, {}
        texts = {jobId: columnText(u) for jobId, u in updates.items()}
        serverId = self.serverId

        def write(db: Connection, batch: Batch) -> None:
            watched = db.execute(
                "UPDATE taskservice_jobs j SET progress = u.p FROM"
                " unnest(%s::text[], %s::text[]) AS u(id, p) WHERE j.id = u.id"
                " AND j.state = 'running' AND j.server = %s"
                " AND j.watchers IS NOT NULL RETURNING j.id, j.watchers",
                (list(texts), list(texts.values()), serverId),
            ).fetchall()
            if len(watched) < len(texts):
                seen = {jobId for jobId, _ in watched}
                db.execute(
                    "UPDATE taskservice_jobs j SET progress = u.p FROM"
                    " unnest(%s::text[], %s::text[]) AS u(id, p) WHERE j.id = u.id"
                    " AND j.state = 'running' AND j.server = %s",
                    (
                        [i for i in texts if i not in seen],
                        [p for i, p in texts.items() if i not in seen],
                        serverId,
                    ),
                )
            for jobId, watchers in watched:
                note = columnText({"progress": jobId, "update": updates[jobId]})
                if len(note) > NOTIFY_LIMIT:
                    note = columnText({"progress": jobId})
                for watcher in watchers:
                    if watcher != serverId:
                        db.notify(serverChannel(watcher), note)

        self.enqueue(write).addErrback(lambda f: None)

    def finish(
        self,
        jobId: str,
        state: str,
        now: float,
        expiresAt: float,
        *,
        result: str | None = None,
        error: Mapping[str, Any] | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> Deferred[bool]:
        assert state in FINAL_STATES
        pending = self._progress.pop(jobId, None)
        if progress is None:
            progress = pending
        end = End(
            jobId,
            state,
            now,
            expiresAt,
            result,
            None if error is None else columnText(error),
            progress,
        )
        return self._ends.add(end).addCallback(self._fenced, jobId)

    def _fenced(self, done: bool, jobId: str) -> bool:
        if not done:
            self.log.warn(
                "job {job} is no longer running on this server (recovered by"
                " another after a missed heartbeat?): its outcome here is not"
                " recorded",
                job=jobId,
            )
        return done

    def retryAt(
        self, jobId: str, runAt: float, error: Mapping[str, Any]
    ) -> Deferred[bool]:
        errorText = columnText(error)
        serverId = self.serverId

        def retry(db: Connection, batch: Batch) -> bool:
            done = db.execute(
                "UPDATE taskservice_jobs SET state = 'scheduled', run_at = %s,"
                " error = %s, server = NULL, origin = server WHERE id = %s"
                " AND state = 'running' AND server = %s",
                (runAt, errorText, jobId, serverId),
            ).rowcount
            if done:
                batch.moved(RUNNING, SCHEDULED)
                db.wake(runAt)
            return bool(done)

        return self.enqueue(retry)

    def release(self, jobId: str) -> Deferred[bool]:
        serverId = self.serverId

        def release(db: Connection, batch: Batch) -> bool:
            done = db.execute(
                "UPDATE taskservice_jobs SET state = 'queued', attempts = attempts - 1,"
                " server = NULL, origin = server WHERE id = %s AND state = 'running'"
                " AND server = %s",
                (jobId, serverId),
            ).rowcount
            if done:
                batch.moved(RUNNING, QUEUED)
            return bool(done)

        return self.enqueue(release)

    def cancel(
        self, jobId: str, now: float, expiresAt: float, error: Mapping[str, Any]
    ) -> Deferred[JobRecord | None]:
        """
        Cancel a waiting job; for a job running on a server, ask that server
        (through its channel) to stop it, and return it as it is (running).
        """
        errorText = columnText(error)

        def cancel(db: Connection, batch: Batch) -> JobRecord | None:
            row = db.execute(
                f"SELECT {COLUMNS}, server, watchers FROM taskservice_jobs"
                " WHERE id = %s FOR UPDATE",
                (jobId,),
            ).fetchone()
            if row is None:
                return None
            job = recordFromRow(row[:16])
            server, watchers = row[16], row[17]
            if job.state == RUNNING and server is not None:
                db.execute(
                    "UPDATE taskservice_jobs SET cancel_requested = true WHERE id = %s",
                    (jobId,),
                )
                db.notify(serverChannel(server), columnText({"cancel": jobId}))
                return job
            if job.state not in PENDING_STATES:
                return job
            row = db.execute(
                "UPDATE taskservice_jobs SET state = 'cancelled', finished_at = %s,"
                f" expires_at = %s, error = %s WHERE id = %s RETURNING {COLUMNS}",
                (now, expiresAt, errorText, jobId),
            ).fetchone()
            notifyEnd(db, jobId, watchers, exclude=self.serverId)
            batch.moved(job.state, CANCELLED)
            return recordFromRow(row)

        return self.enqueue(cancel)

    def recordTick(
        self, schedule: str, tick: float, job: NewJob
    ) -> Deferred[JobRecord | None]:
        """
        See L{taskservice._journal.IJournal.recordTick}. Servers recording
        the same tick at once: the second one's upsert waits for the
        first's row, then finds its tick recorded, and writes nothing.
        """
        submitAll = self._ops.submitAll

        def record(db: Connection, batch: Batch) -> Later[JobRecord] | None:
            ours = db.execute(
                "INSERT INTO taskservice_schedules (name, last_tick, job)"
                " VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
                " last_tick = excluded.last_tick, job = excluded.job"
                " WHERE excluded.last_tick > taskservice_schedules.last_tick"
                " RETURNING name",
                (schedule, tick, job.id),
            ).fetchone()
            if ours is None:
                return None
            submitted = submitAll(db, batch, [(job, False)])
            return db.later(lambda: recordedJob(submitted))

        def recordedJob(submitted: Later[list[Any]]) -> JobRecord:
            (outcome,) = submitted.get()
            if isinstance(outcome, ItemError):
                raise outcome.error
            recorded: JobRecord = outcome[0]
            return recorded

        return self.enqueue(record).addCallback(settled)

    def watch(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        Add this server to the job's watchers (its progress and end are
        then notified here, wherever it runs); fire with the job as it is
        now, or L{None} if there is none.
        """
        return self._watches.add(jobId).addCallback(self._watched, jobId)

    def _watched(
        self, job: JobRecord | Busy | None, jobId: str
    ) -> Deferred[JobRecord | None] | JobRecord | None:
        if isinstance(job, Busy):
            again: Deferred[Any] = deferLater(self.reactor, _WATCH_AGAIN)
            return again.addCallback(lambda _: self.watch(jobId))
        return job

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        return self._gets.add(jobId)

    def list(
        self, state: str | None, method: str | None, limit: int
    ) -> Deferred[list[JobRecord]]:
        where, args = [], []
        if state is not None:
            where.append("state = %s")
            args.append(state)
        if method is not None:
            where.append("method = %s")
            args.append(method)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def listJobs(db: Connection, batch: Batch) -> list[JobRecord]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM taskservice_jobs {clause}"
                " ORDER BY seq DESC LIMIT %s",
                (*args, limit),
            ).fetchall()
            return [recordFromRow(row) for row in rows]

        return self.enqueue(listJobs)

    def purge(self, now: float) -> Deferred[int]:
        def purge(db: Connection, batch: Batch) -> int:
            states = db.execute(
                "DELETE FROM taskservice_jobs WHERE expires_at <= %s RETURNING state",
                (now,),
            ).fetchall()
            for (state,) in states:
                batch.moved(state, None)
            return len(states)

        return self.enqueue(purge)
