"""
The SQLite job journal on real files: what it keeps across a reopen, and
the files it refuses to open. What every journal does is in
tests/test_journal_contract.py, run against this backend too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from taskservice._journal import JournalError, NewJob
from taskservice._sqlitejournal import APPLICATION_ID, SCHEMA_VERSION, SQLiteJournal

NOW = 1_000_000.0


def newJob(jobId: str, *, key: str | None = None, runAt: float = NOW) -> NewJob:
    return NewJob(jobId, "echo", "[1]", key, 2, 1.0, None, runAt, NOW)


def value(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired (inline journal).
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the operation did not complete inline"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SQLiteJournal]:
    journal = SQLiteJournal(Clock(), str(tmp_path / "jobs.sqlite3"), threaded=False)
    journal.open()
    yield journal
    value(journal.close())


def test_reopenKeepsJobsAndCounts(tmp_path: Path) -> None:
    """
    What was committed is there after the journal is closed and opened
    again, with the counts read back from the file.
    """
    path = str(tmp_path / "jobs.sqlite3")
    first = SQLiteJournal(Clock(), path, threaded=False)
    first.open()
    value(first.submit(newJob("a")))
    value(first.submit(newJob("b", runAt=NOW + 5)))
    value(first.close())
    second = SQLiteJournal(Clock(), path, threaded=False)
    second.open()
    try:
        assert second.counts()["queued"] == 1
        assert second.counts()["scheduled"] == 1
        assert value(second.get("a")).method == "echo"
    finally:
        value(second.close())


def test_refusesFilesThatAreNotJournals(tmp_path: Path) -> None:
    """
    A file that is not SQLite, another application's SQLite database, a
    journal of a newer schema and a journal another server holds are each
    refused at open with a message naming the file, and left unchanged.
    """
    garbage = tmp_path / "notes.txt"
    garbage.write_bytes(b"my precious notes\n")
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("CREATE TABLE jobs (x)")
    cases = [
        (garbage, "is not an SQLite database"),
        (foreign, "of another application"),
        (newer, "newer taskservice"),
    ]
    for path, reason in cases:
        before = path.read_bytes()
        with pytest.raises(JournalError, match=reason) as raised:
            SQLiteJournal(Clock(), str(path)).open()
        assert str(path) in str(raised.value)
        assert path.read_bytes() == before
    held = SQLiteJournal(Clock(), str(tmp_path / "jobs.sqlite3"), threaded=False)
    held.open()
    try:
        with pytest.raises(JournalError, match="in use by another task server"):
            SQLiteJournal(Clock(), str(tmp_path / "jobs.sqlite3")).open()
    finally:
        value(held.close())


def test_memoryJournal() -> None:
    """
    ":memory:" is a working journal of size 0 that keeps nothing on disk.
    """
    journal = SQLiteJournal(Clock(), ":memory:", threaded=False)
    journal.open()
    value(journal.submit(newJob("a")))
    assert journal.sizeBytes() == 0
    assert value(journal.get("a")).id == "a"
    value(journal.close())
