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
    JournalError,
    NewJob,
    columnText,
    recordFromRow,
)
from taskservice._pgbatch import ItemError
from taskservice._pgschema import COLUMNS, JCOLUMNS
from taskservice._pgwire import NOTIFY_LIMIT, Connection, Later


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
    items in one statement.
    """

    def __init__(self, serverId: str, othersNeeded: Callable[[], bool]) -> None:
        self.serverId = serverId
        self.othersNeeded = othersNeeded

    # -- submits -----------------------------------------------------------

    def submitAll(
        self, db: Connection, batch: Batch, items: Sequence[tuple[NewJob, bool]]
    ) -> Later[list[tuple[JobRecord, bool] | ItemError]]:
        jobs = [job for job, _ in items]
        states = [
            RUNNING if running else QUEUED if job.runAt <= job.createdAt else SCHEDULED
            for job, running in items
        ]
        inserting = db.send(
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
        )
        keys = [j.key for j in jobs if j.key is not None]
        # The jobs holding these keys, as they are once the INSERT is done
        # (a key taken by another server's job committed meanwhile too): in
        # the same round trip, unused unless a key was taken.
        holders = (
            db.send(
                f"SELECT {COLUMNS} FROM taskservice_jobs WHERE key = ANY(%s)", (keys,)
            )
            if keys
            else None
        )
        for job, state in zip(jobs, states, strict=True):
            # Decided before the results (a key taken: a wake for nothing).
            if state == SCHEDULED or (state == QUEUED and self.othersNeeded()):
                db.wake(job.runAt)

        def results() -> list[tuple[JobRecord, bool] | ItemError]:
            inserted = {row[0] for row in inserting.fetchall()}
            existing: dict[str, JobRecord] = {}
            if holders is not None and len(inserted) < len(jobs):
                for row in holders.fetchall():
                    if row[0] not in inserted:
                        existing[row[3]] = recordFromRow(row)
            out: list[tuple[JobRecord, bool] | ItemError] = []
            for job, state in zip(jobs, states, strict=True):
                if job.id in inserted:
                    batch.moved(None, state)
                    out.append((newRecord(job, state), True))
                elif job.key is not None and job.key in existing:
                    out.append((existing[job.key], False))
                else:
                    out.append(
                        ItemError(
                            JournalError(
                                f"job {job.id} was not recorded: its key"
                                f" {job.key!r} is taken by a job that is gone"
                            )
                        )
                    )
            return out

        return db.later(results)

    # -- ends --------------------------------------------------------------

    def endAll(
        self, db: Connection, batch: Batch, ends: Sequence[End]
    ) -> Later[list[bool | ItemError]]:
        # The watchers of each job ended (servers following it from
        # elsewhere) are notified by the statement itself, so that nothing
        # waits for its result before the commit.
        ending = db.send(
            "WITH ended AS (UPDATE taskservice_jobs j SET state = u.state,"
            " finished_at = u.f, expires_at = u.e, result = u.r, error = u.err,"
            " progress = coalesce(u.p, j.progress), server = NULL"
            " FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[],"
            " %s::text[], %s::text[], %s::text[]) AS u(id, state, f, e, r, err, p)"
            " WHERE j.id = u.id AND j.state = 'running' AND j.server = %s"
            " RETURNING j.id, j.watchers, u.p)"
            " SELECT id, (SELECT count(pg_notify('taskservice_s_' || w,"
            " '{\"end\":' || to_json(id)::text || CASE WHEN p IS NOT NULL AND"
            " octet_length(p) + octet_length(id) + 20 <= %s"
            " THEN ',\"update\":' || p ELSE '' END || '}'))"
            " FROM unnest(watchers) AS w WHERE w <> %s) FROM ended",
            (
                [e.jobId for e in ends],
                [e.state for e in ends],
                [e.now for e in ends],
                [e.expiresAt for e in ends],
                [e.result for e in ends],
                [e.error for e in ends],
                [None if e.progress is None else columnText(e.progress) for e in ends],
                self.serverId,
                NOTIFY_LIMIT,
                self.serverId,
            ),
        )

        def results() -> list[bool | ItemError]:
            done = {row[0] for row in ending.fetchall()}
            out: list[bool | ItemError] = []
            for end in ends:
                if end.jobId in done:
                    batch.moved(RUNNING, end.state)
                    out.append(True)
                else:
                    out.append(False)
            return out

        return db.later(results)

    # -- reads -------------------------------------------------------------

    def getAll(
        self, db: Connection, batch: Batch, jobIds: Sequence[str]
    ) -> Later[list[JobRecord | ItemError | None]]:
        # Read in the transaction (it sees the writes queued before it),
        # the result taken after the commit.
        reading = db.send(
            f"SELECT {COLUMNS} FROM taskservice_jobs WHERE id = ANY(%s)",
            (list(jobIds),),
        )

        def results() -> list[JobRecord | ItemError | None]:
            found = {row[0]: recordFromRow(row) for row in reading.fetchall()}
            return [found.get(jobId) for jobId in jobIds]

        return db.later(results)

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
