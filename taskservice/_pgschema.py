"""
The PostgreSQL journal's schema: its tables, their version, the migrations
applied at start (under a transaction-level advisory lock, so servers
starting together wait for each other instead of racing), and the rows as
job records.

The tables are prefixed (C{taskservice_jobs}, C{taskservice_servers},
C{taskservice_meta}, C{taskservice_schedules}), so the database may hold
other things; a database
with tables of these names that are not a journal's, or a journal of a
newer schema, is refused untouched.
"""

from __future__ import annotations

from typing import Any

from taskservice._journal import JournalError

APPLICATION = "taskservice job journal"
SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x54534A42  # "TSJB", as the SQLite journal's application_id

_SCHEMA_V1 = """
CREATE TABLE taskservice_meta (
    name text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE taskservice_servers (
    id text PRIMARY KEY,
    name text NOT NULL,
    started_at double precision NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
CREATE TABLE taskservice_jobs (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    method text NOT NULL,
    params text NOT NULL,
    key text,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    backoff double precision NOT NULL,
    timeout double precision,
    run_at double precision NOT NULL,
    created_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    expires_at double precision,
    progress text,
    result text,
    error text,
    server text,
    origin text,
    cancel_requested boolean NOT NULL DEFAULT false,
    watchers text[]
);
CREATE UNIQUE INDEX taskservice_jobs_key ON taskservice_jobs (key)
    WHERE key IS NOT NULL;
CREATE INDEX taskservice_jobs_due ON taskservice_jobs (run_at, seq)
    WHERE state IN ('queued', 'scheduled');
CREATE INDEX taskservice_jobs_running ON taskservice_jobs (server)
    WHERE state = 'running';
CREATE INDEX taskservice_jobs_expiry ON taskservice_jobs (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX taskservice_jobs_state ON taskservice_jobs (state, seq);
CREATE TABLE taskservice_schedules (
    name text PRIMARY KEY,
    last_tick double precision NOT NULL,
    job text NOT NULL
)
"""

MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}
"""The script that brings a journal from version N-1 to N."""

COLUMNS = (
    "id, method, params, key, state, attempts, max_attempts, backoff, timeout,"
    " run_at, created_at, started_at, finished_at, progress, result, error"
)
"""The columns of a L{JobRecord}, in its order."""
JCOLUMNS = ", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))
"""L{COLUMNS} of the table aliased C{j}."""


def migrate(db: Any, name: str) -> None:
    """
    In C{db}'s current transaction: take the migration lock (held until it
    ends), check the database is a journal of ours or has none, and bring
    it to L{SCHEMA_VERSION}; raise L{JournalError} naming C{name} if it is
    not ours or newer.
    """
    db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    version = _version(db, name)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[target].split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute(
        "INSERT INTO taskservice_meta (name, value) VALUES"
        " ('application', %s), ('schema', %s) ON CONFLICT (name)"
        " DO UPDATE SET value = excluded.value",
        (APPLICATION, str(SCHEMA_VERSION)),
    )


def _version(db: Any, name: str) -> int:
    meta, jobs = db.execute(
        "SELECT to_regclass('taskservice_meta'), to_regclass('taskservice_jobs')"
    ).fetchone()
    if meta is None:
        if jobs is not None:
            raise JournalError(
                f"{name} has a taskservice_jobs table that is not a job"
                " journal's: refusing to touch it (give --jobs-db another"
                " database)"
            )
        return 0
    rows = dict(db.execute("SELECT name, value FROM taskservice_meta").fetchall())
    if rows.get("application") != APPLICATION:
        raise JournalError(
            f"{name} has a taskservice_meta table of another"
            " application: refusing to touch it (give --jobs-db another"
            " database)"
        )
    version = int(rows.get("schema", "0"))
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{name} is a job journal of schema {version}, written by a"
            f" newer taskservice (this one knows up to {SCHEMA_VERSION})"
        )
    return version
