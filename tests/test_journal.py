"""
The SQLite job journal on real files: what it keeps across a reopen, and
the files it refuses to open, and the group-commit writer's batched runs.
What every journal does is in tests/test_journal_contract.py, run against
this backend too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from taskservice._journal import (
    Batch,
    GroupCommitWriter,
    JournalError,
    NewJob,
)
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


async def outcome(d: Deferred[Any]) -> Any:
    """
    What C{d} fires with: its result, or the exception it fails with.
    """
    try:
        return await d
    except Exception as e:
        return e


class _Recording:
    """
    A batched kind that records each run of items it is handed, and fails a
    run holding the item C{"bad"}.
    """

    def __init__(self) -> None:
        self.runs: list[list[str]] = []

    def runMany(self, connection: Any, batch: Batch, items: Sequence[str]) -> list[str]:
        self.runs.append(list(items))
        if "bad" in items:
            raise ValueError("a bad item")
        connection.executemany(
            "INSERT INTO t (v) VALUES (?)", [(item,) for item in items]
        )
        return [item.upper() for item in items]


@pytest_twisted.ensureDeferred
async def test_batchedItemsShareOneRunAndOneBadItemFailsAlone() -> None:
    """
    Consecutive items of one batched kind queued in one group are handed to
    it in one run, in their order (a function queued between them splits
    the run); when a run raises, the group is rolled back and every
    operation runs again alone, so only the bad item fails (with a
    L{JournalError} naming it) and every other one is committed.
    """

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute("CREATE TABLE t (v TEXT)")
        return db

    writer = GroupCommitWriter(reactor, connect)
    writer.start()
    kind = _Recording()
    try:
        # (Queued in one reactor pass: one group.)
        first = [writer.runItem(kind, item) for item in ("a", "b")]
        between = writer.run(
            lambda db, batch: db.execute("INSERT INTO t (v) VALUES ('f')").rowcount
        )
        second = [writer.runItem(kind, item) for item in ("c", "d")]
        assert await gatherResults([*first, between, *second]) == [
            "A",
            "B",
            1,
            "C",
            "D",
        ]
        assert kind.runs == [["a", "b"], ["c", "d"]]
        commits = writer.commits
        assert commits == 1

        kind.runs.clear()
        items = [writer.runItem(kind, item) for item in ("e", "bad", "g")]
        outcomes = [await outcome(d) for d in items]
        assert outcomes[0] == "E" and outcomes[2] == "G"
        assert isinstance(outcomes[1], JournalError)
        assert "a bad item" in str(outcomes[1])
        # The run of three (rolled back), then each alone: e and g in a
        # commit each.
        assert kind.runs == [["e", "bad", "g"], ["e"], ["bad"], ["g"]]
        assert writer.commits == commits + 2
        values = await writer.run(
            lambda db, batch: [v for (v,) in db.execute("SELECT v FROM t ORDER BY v")]
        )
        assert values == ["a", "b", "c", "d", "e", "f", "g"]
    finally:
        await writer.stop()


@pytest_twisted.ensureDeferred
async def test_batchedSubmitsAndFinishesOneBadFailsAlone(tmp_path: Path) -> None:
    """
    Submits (without a key) and finishes queued in one group are one
    executemany each; a submit whose id is taken fails alone with
    L{JournalError} (the others are recorded), and a finish of a job that is
    not running fires L{False} alone (the others fire L{True} and are
    recorded); the counts follow exactly what was committed.
    """
    journal = SQLiteJournal(reactor, str(tmp_path / "jobs.sqlite3"))
    journal.open()
    try:
        await journal.submit(newJob("taken"))
        submits = [
            journal.submit(newJob(jobId), running=True) for jobId in ("r1", "r2", "r3")
        ]
        clash = journal.submit(newJob("taken"), running=True)
        more = journal.submit(newJob("r4"), running=True)
        assert [r.id for r, new in await gatherResults(submits)] == ["r1", "r2", "r3"]
        failure = await outcome(clash)
        assert isinstance(failure, JournalError)
        assert "UNIQUE" in str(failure)
        assert (await more)[0].state == "running"
        assert journal.counts()["running"] == 4
        assert journal.counts()["queued"] == 1

        finishes = [
            journal.finish(jobId, "succeeded", NOW, NOW + 60, result="1")
            for jobId in ("r1", "taken", "r2", "nosuch", "r3")
        ]
        assert await gatherResults(finishes) == [True, False, True, False, True]
        counts = journal.counts()
        assert counts["succeeded"] == 3 and counts["running"] == 1
        assert counts["queued"] == 1
        assert (await journal.get("r2")).state == "succeeded"
        assert (await journal.get("taken")).state == "queued"
        assert (await journal.get("r4")).state == "running"
    finally:
        await journal.close()
