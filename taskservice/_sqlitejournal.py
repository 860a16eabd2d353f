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
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred

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

APPLICATION_ID = 0x54534A42  # "TSJB"
SCHEMA_VERSION = 2
MEMORY = ":memory:"

_SCHEMA_V1 = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff REAL NOT NULL,
    timeout REAL,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    progress TEXT,
    result TEXT,
    error TEXT
);
CREATE UNIQUE INDEX jobs_key ON jobs (key) WHERE key IS NOT NULL;
CREATE INDEX jobs_due ON jobs (run_at, seq) WHERE state IN ('queued', 'scheduled');
CREATE INDEX jobs_running ON jobs (state) WHERE state = 'running';
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state, seq);
"""

_SCHEMA_V2 = """
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    last_tick REAL NOT NULL,
    job TEXT NOT NULL
);
"""
"""Version 2: the last tick each schedule ran (see L{SQLiteJournal.recordTick})."""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
"""The script that brings a journal from version N-1 to N."""

_COLUMNS = (
    "id, method, params, key, state, attempts, max_attempts, backoff, timeout,"
    " run_at, created_at, started_at, finished_at, progress, result, error"
)

_INSERT = (
    "INSERT INTO jobs (id, method, params, key, state, attempts, max_attempts,"
    " backoff, timeout, run_at, created_at, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_FINISH = (
    "UPDATE jobs SET state = ?, finished_at = ?, expires_at = ?,"
    " result = ?, error = ?, progress = coalesce(?, progress)"
    " WHERE id = ? AND state = 'running'"
)

_SQLITE_HEADER = b"SQLite format 3\x00"

_Row = tuple[Any, ...]


class _Inserts:
    """
    Submits without a key, as one C{executemany} for a run of them: an item
    is the job's row and its record.
    """

    def runMany(
        self,
        db: sqlite3.Connection,
        batch: Batch,
        items: Sequence[tuple[_Row, JobRecord]],
    ) -> list[tuple[JobRecord, bool]]:
        db.executemany(_INSERT, [row for row, _ in items])
        moved = batch.moved
        for _, record in items:
            moved(None, record.state)
        return [(record, True) for _, record in items]


class _Finishes:
    """
    Ends of running jobs, as one C{executemany} for a run of them: an item
    is the parameters of L{_FINISH}. Each fires with whether its job was
    running: when the rows changed are fewer than the items, some job was
    not, and each item runs again alone to tell which.
    """

    def runMany(
        self, db: sqlite3.Connection, batch: Batch, items: Sequence[_Row]
    ) -> list[bool]:
        changed = db.executemany(_FINISH, items).rowcount
        if len(items) == 1:
            if changed:
                batch.moved(RUNNING, items[0][0])
            return [bool(changed)]
        if changed != len(items):
            raise _NotAllRunning(
                f"{changed} of {len(items)} finished jobs were running"
            )
        moved = batch.moved
        for item in items:
            moved(RUNNING, item[0])
        return [True] * len(items)


class _NotAllRunning(Exception):
    """
    A run of finishes changed fewer rows than it has items (it is rolled
    back, and each item runs alone).
    """


_INSERTS = _Inserts()
_FINISHES = _Finishes()


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
        self._progress: dict[str, Mapping[str, Any]] = {}
        self._progressQueued = False
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
        path = self.path
        if path != MEMORY and os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    header = f.read(len(_SQLITE_HEADER))
            except OSError as e:
                raise JournalError(f"cannot read the job journal {path}: {e}") from e
            if header and header != _SQLITE_HEADER:
                raise JournalError(
                    f"{path} is not an SQLite database, so not a job journal:"
                    " refusing to touch it (give --jobs-db another path)"
                )
        try:
            connection = sqlite3.connect(path, check_same_thread=False)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the job journal {path}: {e}") from e
        try:
            self._prepare(connection)
        except sqlite3.DatabaseError as e:
            connection.close()
            raise JournalError(_describe(path, e)) from e
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        execute = connection.execute
        # Held for as long as we run: one task server per file.
        execute("PRAGMA locking_mode = EXCLUSIVE")
        execute("PRAGMA busy_timeout = 2000")
        applicationId = execute("PRAGMA application_id").fetchone()[0]
        version = execute("PRAGMA user_version").fetchone()[0]
        tables = execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()[0]
        if applicationId == 0 and not tables:
            execute("PRAGMA auto_vacuum = INCREMENTAL")
        elif applicationId != APPLICATION_ID:
            raise JournalError(
                f"{self.path} is an SQLite database of another application, not"
                " a taskservice job journal: refusing to touch it (give"
                " --jobs-db another path)"
            )
        elif version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} is a job journal of schema {version}, written by a"
                f" newer taskservice (this one knows up to {SCHEMA_VERSION})"
            )
        if self.path != MEMORY:
            mode = execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"{self.path}: cannot use WAL mode ({mode})")
        execute(f"PRAGMA synchronous = {self.synchronous}")
        # Keep the WAL file small after each checkpoint.
        execute("PRAGMA journal_size_limit = 67108864")
        # Take the lock now: a second server on this file fails here.
        execute("BEGIN IMMEDIATE")
        try:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        execute(statement)
            execute(f"PRAGMA application_id = {APPLICATION_ID}")
            execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            counts = execute("SELECT state, count(*) FROM jobs GROUP BY state")
            found = dict(counts.fetchall())
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        self._counts.update(found)

    def open(self) -> None:
        self._writer.start()

    def check(self) -> None:
        """
        Open the file as L{open} does (creating or migrating it), and close
        it again: raise L{JournalError} if the server could not use it.
        """
        self._connect().close()

    def close(self) -> Deferred[None]:
        self._flushProgress()
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

        self._flushProgress()
        return self._writer.run(claim)

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
        pending = self._progress.pop(jobId, None)
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
        def recover(db: sqlite3.Connection, batch: Batch) -> Recovered:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running'"
            ).fetchall()
            requeued: list[str] = []
            interrupted: list[str] = []
            for job in map(recordFromRow, rows):
                if rerun(job):
                    db.execute(
                        "UPDATE jobs SET state = 'queued', run_at = ? WHERE id = ?",
                        (now, job.id),
                    )
                    requeued.append(job.id)
                    batch.moved(RUNNING, QUEUED)
                else:
                    error = {
                        "code": -32008,
                        "message": "interrupted",
                        "data": {
                            "job": job.id,
                            "attempts": job.attempts,
                            "reason": "the task server stopped while it ran, and"
                            " its task is not safe to run again"
                            # (Only a job that may run again, refused past
                            # its restart allowance, is beyond maxAttempts.)
                            if job.attempts <= job.maxAttempts
                            else "the task server stopped while it ran, and it"
                            " has run as many times as it may",
                        },
                    }
                    db.execute(
                        "UPDATE jobs SET state = 'interrupted', finished_at = ?,"
                        " expires_at = ?, error = ? WHERE id = ?",
                        (now, expiresAt, columnText(error), job.id),
                    )
                    interrupted.append(job.id)
                    batch.moved(RUNNING, INTERRUPTED)
            return Recovered(requeued, interrupted)

        return self._writer.run(recover)

    def purge(self, now: float) -> Deferred[int]:
        def purge(db: sqlite3.Connection, batch: Batch) -> int:
            states = db.execute(
                "DELETE FROM jobs WHERE expires_at <= ? RETURNING state", (now,)
            ).fetchall()
            for (state,) in states:
                batch.moved(state, None)
            if states:
                # Each step of this pragma frees one page, and sqlite3 steps
                # a statement that has no columns once: one execute a page.
                free = db.execute("PRAGMA freelist_count").fetchone()[0]
                for _ in range(free):
                    db.execute("PRAGMA incremental_vacuum")
            return len(states)

        return self._writer.run(purge)


def _describe(path: str, error: sqlite3.DatabaseError) -> str:
    text = str(error)
    if "locked" in text:
        return (
            f"the job journal {path} is in use by another task server (an SQLite"
            " journal serves one server; several share jobs through PostgreSQL)"
        )
    if "not a database" in text or "malformed" in text:
        return f"{path} is damaged or not a job journal ({text}): refusing to touch it"
    return f"cannot open the job journal {path}: {text}"
