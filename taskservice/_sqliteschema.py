"""
The SQLite job journal's file: its schema and migrations, opening it (the
checks that refuse a file not ours), the statements the journal runs in
batches (one C{executemany} for a run of submits, or of job ends), and its
upkeep at start (recovery) and over time (purge).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from taskservice._jobrecords import (
    INTERRUPTED,
    QUEUED,
    RUNNING,
    Batch,
    JobRecord,
    JournalError,
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


def connect(path: str, synchronous: str) -> tuple[sqlite3.Connection, dict[str, int]]:
    """
    Open the journal at C{path} (creating or migrating it) with its
    settings, holding its lock: the connection, and its jobs by state;
    raise L{JournalError} for a file the server cannot use.
    """
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
        counts = _prepare(connection, path, synchronous)
    except sqlite3.DatabaseError as e:
        connection.close()
        raise JournalError(_describe(path, e)) from e
    except BaseException:
        connection.close()
        raise
    return connection, counts


def _prepare(
    connection: sqlite3.Connection, path: str, synchronous: str
) -> dict[str, int]:
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
            f"{path} is an SQLite database of another application, not"
            " a taskservice job journal: refusing to touch it (give"
            " --jobs-db another path)"
        )
    elif version > SCHEMA_VERSION:
        raise JournalError(
            f"{path} is a job journal of schema {version}, written by a"
            f" newer taskservice (this one knows up to {SCHEMA_VERSION})"
        )
    if path != MEMORY:
        mode = execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"{path}: cannot use WAL mode ({mode})")
    execute(f"PRAGMA synchronous = {synchronous}")
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
    return found


def recoverJobs(
    db: sqlite3.Connection,
    batch: Batch,
    now: float,
    expiresAt: float,
    rerun: Callable[[JobRecord], bool],
) -> Recovered:
    """
    Queue again each job left running where C{rerun(job)} allows, else
    interrupt it (see L{taskservice._journal.IJournal.recover}).
    """
    rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running'").fetchall()
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


def purgeJobs(db: sqlite3.Connection, batch: Batch, now: float) -> int:
    """
    Delete the finished jobs expired by C{now}, and free their pages.
    """
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
