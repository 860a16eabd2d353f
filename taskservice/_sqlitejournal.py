"""
The SQLite job journal: one file (WAL mode), written by one thread of the
task server's parent with group commits.

The file belongs to one task server at a time: the connection holds
SQLite's exclusive lock for as long as the server runs, so a second server
started on the same file fails at start with a clear message (several task
servers share jobs through PostgreSQL instead).

The schema is versioned (C{PRAGMA user_version}) and the file marked as
ours (C{PRAGMA application_id}); a file of another application, of a newer
schema, or not an SQLite database at all is a start-up error, never
overwritten.

The file's schema, its opening and the batched statements are in
L{taskservice._sqliteschema}.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from taskservice._jobrecords import ProgressBuffer
from taskservice._journal import (
    CANCELLED,
    FINAL_STATES,
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STATES,
    Batch,
    Claimed,
    GroupCommitWriter,
    JobRecord,
    NewJob,
    Recovered,
    columnText,
    recordFromRow,
)
from taskservice._sqliteschema import (
    _COLUMNS,
    _FINISHES,
    _INSERT,
    _INSERTS,
    APPLICATION_ID,
    MEMORY,
    SCHEMA_VERSION,
    connect,
    purgeJobs,
    recoverJobs,
)

__all__ = ["APPLICATION_ID", "MEMORY", "SCHEMA_VERSION", "SQLiteJournal"]


class SQLiteJournal:
    """
    L{taskservice._journal.IJournal} on an SQLite file (or C{":memory:"}).

    @param synchronous: SQLite's C{synchronous} setting: C{"FULL"} (the
        default) makes every commit survive a power cut; C{"NORMAL"}
        survives a crash of the process, not of the machine.
    @param threaded: run the writer in its own thread (L{False}: inline,
        for deterministic unit tests).
    """

    def __init__(
        self,
        reactor: Any,
        path: str,
        *,
        synchronous: str = "FULL",
        threaded: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"unknown synchronous setting {synchronous!r}")
        self.reactor = reactor
        self.path = path
        self.synchronous = synchronous
        self._counts: Counter[str] = Counter(dict.fromkeys(STATES, 0))
        self._progress = ProgressBuffer(reactor, self._writeProgress)
        self._writer = GroupCommitWriter(
            reactor,
            self._connect,
            threaded=threaded,
            onCommitted=self._committed,
            name=path,
        )

    def __repr__(self) -> str:
        return f"SQLiteJournal({self.path!r})"

    # -- opening -----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        connection, counts = connect(self.path, self.synchronous)
        self._counts.update(counts)
        return connection

    def open(self) -> None:
        self._writer.start()

    def check(self) -> None:
        """
        Open the file as L{open} does (creating or migrating it), and close
        it again: raise L{JournalError} if the server could not use it.
        """
        self._connect().close()

    def close(self) -> Deferred[None]:
        self._progress.flush()
        return self._writer.stop()

    # -- bookkeeping -------------------------------------------------------

    def _committed(self, batch: Batch) -> None:
        batch.applyTo(self._counts)

    def counts(self) -> dict[str, int]:
        # (Every state is a key from the start: a copy is all of them.)
        return dict(self._counts)

    def sizeBytes(self) -> int:
        if self.path == MEMORY:
            return 0
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(self.path + suffix).st_size
        return total

    # -- operations --------------------------------------------------------

    def submit(
        self, job: NewJob, *, running: bool = False
    ) -> Deferred[tuple[JobRecord, bool]]:
        if running:
            state, attempts, startedAt = RUNNING, 1, job.createdAt
        else:
            state = QUEUED if job.runAt <= job.createdAt else SCHEDULED
            attempts, startedAt = 0, None
        row = (
            job.id,
            job.method,
            job.params,
            job.key,
            state,
            attempts,
            job.maxAttempts,
            job.backoff,
            job.timeout,
            job.runAt,
            job.createdAt,
            startedAt,
        )

        record = JobRecord(*row, None, None, None, None)
        if job.key is None:
            # No key to look up first: one row of the group's executemany.
            return self._writer.runItem(_INSERTS, (row, record))

        def insert(db: sqlite3.Connection, batch: Batch) -> tuple[JobRecord, bool]:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE key = ?", (job.key,)
            ).fetchone()
            if found is not None:
                return recordFromRow(found), False
            db.execute(_INSERT, row)
            batch.moved(None, state)
            return record, True

        return self._writer.run(insert)

    def claim(self, limit: int, now: float) -> Deferred[Claimed]:
        def claim(db: sqlite3.Connection, batch: Batch) -> Claimed:
            rows = db.execute(
                "SELECT seq, state FROM jobs WHERE state IN ('queued', 'scheduled')"
                " AND run_at <= ? ORDER BY run_at, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            jobs: list[JobRecord] = []
            if rows:
                marks = ",".join("?" * len(rows))
                updated = db.execute(
                    f"UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                    f" started_at = ? WHERE seq IN ({marks}) RETURNING {_COLUMNS}, seq",
                    (now, *(seq for seq, _ in rows)),
                ).fetchall()
                updated.sort(key=lambda row: (row[9], row[-1]))
                jobs = [recordFromRow(row[:-1]) for row in updated]
                for _, state in rows:
                    batch.moved(state, RUNNING)
            nextRunAt = db.execute(
                "SELECT min(run_at) FROM jobs WHERE state IN ('queued', 'scheduled')"
            ).fetchone()[0]
            return Claimed(jobs, nextRunAt)

        self._progress.flush()
        return self._writer.run(claim)

    def progress(self, jobId: str, update: Mapping[str, Any]) -> None:
        self._progress.add(jobId, update)

    def _writeProgress(self, updates: dict[str, Mapping[str, Any]]) -> None:
        def write(db: sqlite3.Connection, batch: Batch) -> None:
            db.executemany(
                "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                [(columnText(u), jobId) for jobId, u in updates.items()],
            )

        self._writer.run(write).addErrback(lambda f: None)

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
        errorText = None if error is None else columnText(error)
        progressText = None if progress is None else columnText(progress)

        return self._writer.runItem(
            _FINISHES,
            (state, now, expiresAt, result, errorText, progressText, jobId),
        )

    def retryAt(
        self, jobId: str, runAt: float, error: Mapping[str, Any]
    ) -> Deferred[bool]:
        errorText = columnText(error)

        def retry(db: sqlite3.Connection, batch: Batch) -> bool:
            done = db.execute(
                "UPDATE jobs SET state = 'scheduled', run_at = ?, error = ?"
                " WHERE id = ? AND state = 'running'",
                (runAt, errorText, jobId),
            ).rowcount
            if done:
                batch.moved(RUNNING, SCHEDULED)
            return bool(done)

        return self._writer.run(retry)

    def release(self, jobId: str) -> Deferred[bool]:
        def release(db: sqlite3.Connection, batch: Batch) -> bool:
            done = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1"
                " WHERE id = ? AND state = 'running'",
                (jobId,),
            ).rowcount
            if done:
                batch.moved(RUNNING, QUEUED)
            return bool(done)

        return self._writer.run(release)

    def cancel(
        self, jobId: str, now: float, expiresAt: float, error: Mapping[str, Any]
    ) -> Deferred[JobRecord | None]:
        errorText = columnText(error)

        def cancel(db: sqlite3.Connection, batch: Batch) -> JobRecord | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (jobId,)
            ).fetchone()
            if row is None:
                return None
            job = recordFromRow(row)
            if job.state not in PENDING_STATES:
                return job
            row = db.execute(
                f"UPDATE jobs SET state = 'cancelled', finished_at = ?,"
                f" expires_at = ?, error = ? WHERE id = ? RETURNING {_COLUMNS}",
                (now, expiresAt, errorText, jobId),
            ).fetchone()
            batch.moved(job.state, CANCELLED)
            return recordFromRow(row)

        return self._writer.run(cancel)

    def recordTick(
        self, schedule: str, tick: float, job: NewJob
    ) -> Deferred[JobRecord | None]:
        state = QUEUED if job.runAt <= job.createdAt else SCHEDULED
        row = (
            job.id,
            job.method,
            job.params,
            job.key,
            state,
            0,
            job.maxAttempts,
            job.backoff,
            job.timeout,
            job.runAt,
            job.createdAt,
            None,
        )

        def record(db: sqlite3.Connection, batch: Batch) -> JobRecord | None:
            # The tick is ours only if no tick at or after it is recorded:
            # the upsert's update is conditional, and returns no row when
            # its condition fails.
            ours = db.execute(
                "INSERT INTO schedules (name, last_tick, job) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick,"
                " job = excluded.job WHERE excluded.last_tick > schedules.last_tick"
                " RETURNING name",
                (schedule, tick, job.id),
            ).fetchone()
            if ours is None:
                return None
            if job.key is not None:
                found = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE key = ?", (job.key,)
                ).fetchone()
                if found is not None:
                    return recordFromRow(found)
            db.execute(_INSERT, row)
            batch.moved(None, state)
            return JobRecord(*row, None, None, None, None)

        return self._writer.run(record)

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        def get(db: sqlite3.Connection, batch: Batch) -> JobRecord | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (jobId,)
            ).fetchone()
            return None if row is None else recordFromRow(row)

        return self._writer.run(get)

    def list(
        self, state: str | None, method: str | None, limit: int
    ) -> Deferred[list[JobRecord]]:
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if method is not None:
            where.append("method = ?")
            args.append(method)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def listJobs(db: sqlite3.Connection, batch: Batch) -> list[JobRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs {clause} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [recordFromRow(row) for row in rows]

        return self._writer.run(listJobs)

    def recover(
        self, now: float, expiresAt: float, rerun: Callable[[JobRecord], bool]
    ) -> Deferred[Recovered]:
        return self._writer.run(
            lambda db, batch: recoverJobs(db, batch, now, expiresAt, rerun)
        )

    def purge(self, now: float) -> Deferred[int]:
        return self._writer.run(lambda db, batch: purgeJobs(db, batch, now))
