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

The parts: this module (opening, closing, counts, and the operations of
the job path: submit, claim, finish, get, watch), L{taskservice._pglisten}
(the listening connection), L{taskservice._pgrecovery} (heartbeats and
sweeps), L{taskservice._pgsingle} (the other operations),
L{taskservice._pgops} and L{taskservice._pgbatch} (operations merged per
group), L{taskservice._pgwire} (the pipelined writer connection and the
notifications), L{taskservice._pgschema} (tables and migrations).
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
from twisted.logger import Logger

from taskservice._defaults import DEFAULT_SERVER_TIMEOUT
from taskservice._jobrecords import ProgressBuffer
from taskservice._journal import (
    FINAL_STATES,
    RUNNING,
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
from taskservice._pgbatch import Merger
from taskservice._pglisten import Listening
from taskservice._pgops import Busy, End, Operations
from taskservice._pgrecovery import Heartbeats
from taskservice._pgschema import JCOLUMNS, migrate
from taskservice._pgsingle import SingleOperations
from taskservice._pgwire import (
    Connection,
    JournalEvents,
    Later,
    Listener,
    describe,
    importPsycopg,
    isPostgreSQL,
    oneLine,
    serverChannel,
    settled,
)

__all__ = ["DEFAULT_SERVER_TIMEOUT", "PostgreSQLJournal", "describe", "isPostgreSQL"]

_CLAIM_AGAIN = 0.05
"""Seconds before claiming again due jobs another server's claim held."""
_WATCH_AGAIN = 0.005
"""Seconds before watching again a job another server had locked."""

T = TypeVar("T")


class PostgreSQLJournal(Listening, Heartbeats, SingleOperations):
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
        self._progress = ProgressBuffer(reactor, self._writeProgress)
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
        self._progress.flush()
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

        self._progress.flush()
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
        pending = self._progress.pop(jobId)
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
