"""
The PostgreSQL journal's operations of one statement or a few, each its
own writer operation (part of L{taskservice._pgjournal.PostgreSQLJournal}):
progress, retries, releases, cancels, cron ticks, listing and purging.
(Submits, ends, reads and watches, merged per group, are in
L{taskservice._pgops}.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from taskservice._jobrecords import ProgressBuffer
from taskservice._journal import (
    CANCELLED,
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SCHEDULED,
    Batch,
    JobRecord,
    NewJob,
    columnText,
    recordFromRow,
)
from taskservice._pgbatch import ItemError
from taskservice._pgops import Operations
from taskservice._pgschema import COLUMNS
from taskservice._pgwire import (
    NOTIFY_LIMIT,
    Connection,
    Later,
    notifyEnd,
    serverChannel,
    settled,
)

T = TypeVar("T")


class SingleOperations:
    """
    The L{PostgreSQLJournal} operations that are not merged.
    """

    reactor: Any
    name: str
    serverId: str
    serverName: str
    serverTimeout: float
    channel: str
    log: Logger
    _progress: ProgressBuffer
    _ops: Operations

    def enqueue(self, operation: Callable[[Any, Batch], T]) -> Deferred[T]:
        raise NotImplementedError

    def progress(self, jobId: str, update: Mapping[str, Any]) -> None:
        self._progress.add(jobId, update)

    def _writeProgress(self, updates: dict[str, Mapping[str, Any]]) -> None:
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
