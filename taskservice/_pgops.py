"""
The PostgreSQL journal's operations done for many items in one statement
each (see L{taskservice._pgbatch}): submits, ends, reads and watches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from taskservice._journal import (
    QUEUED,
    RUNNING,
    SCHEDULED,
    Batch,
    JobRecord,
    NewJob,
    columnText,
    recordFromRow,
)
from taskservice._pgschema import COLUMNS, JCOLUMNS
from taskservice._pgwire import Connection, notifyEnd


class Busy:
    """
    A job another transaction holds: watch it again in a moment.
    """


BUSY = Busy()


class End(NamedTuple):
    """
    A job's end, as L{PostgreSQLJournal.finish} records it.
    """

    jobId: str
    state: str
    now: float
    expiresAt: float
    result: str | None
    error: str | None
    progress: Mapping[str, Any] | None


class Operations:
    """
    The merged operations (L{taskservice._pgbatch}): each kind done for many
    items in one statement (C{...All}), or for one (C{...One}).
    """

    def __init__(self, serverId: str, othersNeeded: Callable[[], bool]) -> None:
        self.serverId = serverId
        self.othersNeeded = othersNeeded

    # -- submits -----------------------------------------------------------

    def submitAll(
        self, db: Connection, batch: Batch, items: Sequence[tuple[NewJob, bool]]
    ) -> list[tuple[JobRecord, bool]]:
        jobs = [job for job, _ in items]
        states = [
            RUNNING if running else QUEUED if job.runAt <= job.createdAt else SCHEDULED
            for job, running in items
        ]
        inserted = {
            row[0]
            for row in db.execute(
                "INSERT INTO taskservice_jobs (id, method, params, key, state,"
                " attempts, max_attempts, backoff, timeout, run_at, created_at,"
                " started_at, server, origin)"
                " SELECT *, %s FROM unnest(%s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::int[], %s::int[], %s::float8[],"
                " %s::float8[], %s::float8[], %s::float8[], %s::float8[],"
                " %s::text[])"
                " ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING RETURNING id",
                (
                    self.serverId,
                    [j.id for j in jobs],
                    [j.method for j in jobs],
                    [j.params for j in jobs],
                    [j.key for j in jobs],
                    states,
                    [1 if running else 0 for _, running in items],
                    [j.maxAttempts for j in jobs],
                    [j.backoff for j in jobs],
                    [j.timeout for j in jobs],
                    [j.runAt for j in jobs],
                    [j.createdAt for j in jobs],
                    [j.createdAt if running else None for j, running in items],
                    [self.serverId if running else None for _, running in items],
                ),
            ).fetchall()
        }
        existing: dict[str, JobRecord] = {}
        taken = [j.key for j in jobs if j.id not in inserted]
        if taken:
            for row in db.execute(
                f"SELECT {COLUMNS} FROM taskservice_jobs WHERE key = ANY(%s)",
                (taken,),
            ).fetchall():
                existing[row[3]] = recordFromRow(row)
        out: list[tuple[JobRecord, bool]] = []
        for job, state in zip(jobs, states, strict=True):
            if job.id in inserted:
                batch.moved(None, state)
                if state == SCHEDULED or (state == QUEUED and self.othersNeeded()):
                    db.wake(job.runAt)
                out.append((newRecord(job, state), True))
            else:
                assert job.key is not None
                out.append((existing[job.key], False))
        return out

    def submitOne(
        self, db: Connection, batch: Batch, item: tuple[NewJob, bool]
    ) -> tuple[JobRecord, bool]:
        return self.submitAll(db, batch, [item])[0]

    # -- ends --------------------------------------------------------------

    def endAll(self, db: Connection, batch: Batch, ends: Sequence[End]) -> list[bool]:
        rows = db.execute(
            "UPDATE taskservice_jobs j SET state = u.state, finished_at = u.f,"
            " expires_at = u.e, result = u.r, error = u.err,"
            " progress = coalesce(u.p, j.progress), server = NULL"
            " FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[],"
            " %s::text[], %s::text[], %s::text[]) AS u(id, state, f, e, r, err, p)"
            " WHERE j.id = u.id AND j.state = 'running' AND j.server = %s"
            " RETURNING j.id, j.watchers",
            (
                [e.jobId for e in ends],
                [e.state for e in ends],
                [e.now for e in ends],
                [e.expiresAt for e in ends],
                [e.result for e in ends],
                [e.error for e in ends],
                [None if e.progress is None else columnText(e.progress) for e in ends],
                self.serverId,
            ),
        ).fetchall()
        watchers = dict(rows)
        done = []
        for end in ends:
            if end.jobId in watchers:
                notifyEnd(
                    db, end.jobId, watchers.pop(end.jobId), end.progress, self.serverId
                )
                batch.moved(RUNNING, end.state)
                done.append(True)
            else:
                done.append(False)
        return done

    def endOne(self, db: Connection, batch: Batch, end: End) -> bool:
        return self.endAll(db, batch, [end])[0]

    # -- reads -------------------------------------------------------------

    def getAll(
        self, db: Connection, batch: Batch, jobIds: Sequence[str]
    ) -> list[JobRecord | None]:
        rows = db.execute(
            f"SELECT {COLUMNS} FROM taskservice_jobs WHERE id = ANY(%s)",
            (list(jobIds),),
        ).fetchall()
        found = {row[0]: recordFromRow(row) for row in rows}
        return [found.get(jobId) for jobId in jobIds]

    def getOne(self, db: Connection, batch: Batch, jobId: str) -> JobRecord | None:
        return self.getAll(db, batch, [jobId])[0]

    def watchAll(
        self, db: Connection, batch: Batch, jobIds: Sequence[str]
    ) -> list[JobRecord | Busy | None]:
        # Never wait for another server's lock on a job (its claim or its
        # end, in a transaction that may in turn wait for ours: a
        # deadlock): a job locked now is watched again in a moment.
        rows = db.execute(
            "UPDATE taskservice_jobs j SET watchers = CASE WHEN %s = ANY(j.watchers)"
            " THEN j.watchers ELSE array_append(coalesce(j.watchers, '{}'), %s) END"
            " FROM (SELECT seq FROM taskservice_jobs WHERE id = ANY(%s)"
            " FOR UPDATE SKIP LOCKED) AS free WHERE j.seq = free.seq"
            f" RETURNING {JCOLUMNS}",
            (self.serverId, self.serverId, list(jobIds)),
        ).fetchall()
        found: dict[str, JobRecord | Busy] = {
            row[0]: recordFromRow(row) for row in rows
        }
        if len(found) < len(jobIds):
            for (jobId,) in db.execute(
                "SELECT id FROM taskservice_jobs WHERE id = ANY(%s)",
                ([i for i in jobIds if i not in found],),
            ).fetchall():
                found[jobId] = BUSY
        return [found.get(jobId) for jobId in jobIds]

    def watchOne(
        self, db: Connection, batch: Batch, jobId: str
    ) -> JobRecord | Busy | None:
        return self.watchAll(db, batch, [jobId])[0]


def newRecord(job: NewJob, state: str) -> JobRecord:
    running = state == RUNNING
    return JobRecord(
        job.id,
        job.method,
        job.params,
        job.key,
        state,
        1 if running else 0,
        job.maxAttempts,
        job.backoff,
        job.timeout,
        job.runAt,
        job.createdAt,
        job.createdAt if running else None,
        None,
        None,
        None,
        None,
    )
