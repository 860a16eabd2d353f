"""
One contract, two backends: every test here runs against the SQLite journal
(a real file) and the PostgreSQL journal (a real throwaway cluster), and
says what any journal must do. Backend-specific behaviour is tested in
tests/test_journal.py (SQLite) and tests/test_pgjournal.py (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from taskservice._journal import JobRecord, NewJob, Recovered
from taskservice._pgjournal import PostgreSQLJournal
from taskservice._sqlitejournal import SQLiteJournal

NOW = 1_000_000.0
BACKENDS = ["sqlite", "postgresql"]


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


class Backend:
    """
    Makes journals of one kind on one store, and makes the server that
    held one go away, as that backend notices it.
    """

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where

    def make(self, theReactor: Any = None, *, threaded: bool = False) -> Any:
        clock = Clock() if theReactor is None else theReactor
        if self.kind == "sqlite":
            return SQLiteJournal(clock, self.where, threaded=threaded)
        return PostgreSQLJournal(clock, self.where, threaded=threaded)

    def goneAway(
        self, journal: Any, rerun: Callable[[JobRecord], bool]
    ) -> tuple[Any, Recovered]:
        """
        The server holding C{journal} went away with jobs running: fire
        with the journal of the server that recovers them (for SQLite, the
        same server started again; for PostgreSQL, another server, once the
        first one's heartbeat is older than the timeout), and what it did.
        """
        if self.kind == "sqlite":
            value(journal.close())
            again = self.make()
            again.open()
            return again, value(again.recover(NOW, NOW + 10, rerun))
        other = self.make()
        other.open()
        assert value(other.recover(NOW, NOW + 10, rerun)) == Recovered([], [])
        # The first server's last heartbeat is long past (it is not closed:
        # its row stays, as after a SIGKILL); the other server has been
        # alive long enough to sweep.
        value(
            journal._writer.run(
                lambda db, batch: db.execute(
                    "UPDATE taskservice_servers SET heartbeat_at = now()"
                    " - interval '1 hour' WHERE id = %s",
                    (journal.serverId,),
                )
            )
        )
        other._aliveSince = other.reactor.seconds() - other.serverTimeout
        recovered = value(other.beat())
        value(journal.close())
        return other, recovered


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "jobs.sqlite3"))
    return Backend("postgresql", request.getfixturevalue("pgDSN"))


@pytest.fixture
def journal(backend: Backend) -> Iterator[Any]:
    journal = backend.make()
    journal.open()
    yield journal
    value(journal.close())


def test_submitClaimFinish(journal: Any) -> None:
    """
    A job goes queued -> running (an attempt counted) -> succeeded, with its
    result and last progress kept; the counts follow every transition.
    """
    record, new = value(journal.submit(newJob("a")))
    assert new and record.state == "queued" and record.attempts == 0
    assert journal.counts()["queued"] == 1
    claimed = value(journal.claim(10, NOW))
    assert [j.id for j in claimed.jobs] == ["a"]
    assert claimed.jobs[0].state == "running" and claimed.jobs[0].attempts == 1
    assert claimed.nextRunAt is None
    journal.progress("a", {"done": 1})
    assert value(
        journal.finish("a", "succeeded", NOW + 1, NOW + 100, result="1", progress=None)
    )
    job: JobRecord = value(journal.get("a"))
    assert (job.state, job.result, job.progress, job.finishedAt) == (
        "succeeded",
        "1",
        {"done": 1},
        NOW + 1,
    )
    assert journal.counts() == {
        "queued": 0,
        "scheduled": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "interrupted": 0,
    }
    # Finishing twice changes nothing.
    assert not value(journal.finish("a", "failed", NOW + 2, NOW + 100))


def test_submitRunning(journal: Any) -> None:
    """
    A job submitted as running is recorded claimed: running, its first
    attempt counted, started at its creation; no claim takes it again, and
    it ends as a claimed one does. With a key another job holds, that job
    is returned, unchanged.
    """
    record, new = value(journal.submit(newJob("a", key="k"), running=True))
    assert new and (record.state, record.attempts, record.startedAt) == (
        "running",
        1,
        NOW,
    )
    assert journal.counts()["running"] == 1
    stored = value(journal.get("a"))
    assert (stored.state, stored.attempts, stored.startedAt) == ("running", 1, NOW)
    assert value(journal.claim(5, NOW + 60)).jobs == []
    again, new = value(journal.submit(newJob("b", key="k"), running=True))
    assert not new and again.id == "a"
    assert journal.counts()["running"] == 1
    assert value(journal.finish("a", "succeeded", NOW, NOW + 9, result="1"))
    assert journal.counts() == {**dict.fromkeys(journal.counts(), 0), "succeeded": 1}


def test_keyReturnsTheSameJob(journal: Any) -> None:
    """
    A second submit with a key an unpurged job holds returns that job, new
    or finished, and records nothing; once purged, the key is free.
    """
    first, _ = value(journal.submit(newJob("a", key="k")))
    again, new = value(journal.submit(newJob("b", key="k")))
    assert not new and again.id == first.id
    value(journal.claim(1, NOW))
    value(journal.finish("a", "succeeded", NOW, NOW + 10, result="1"))
    again, new = value(journal.submit(newJob("c", key="k")))
    assert not new and again.id == "a" and again.state == "succeeded"
    assert value(journal.purge(NOW + 10)) == 1
    fresh, new = value(journal.submit(newJob("d", key="k")))
    assert new and fresh.id == "d"
    assert value(journal.get("b")) is None and value(journal.get("c")) is None


def test_claimOrderAndSchedule(journal: Any) -> None:
    """
    Claims take due jobs oldest first, up to the limit, and say when the
    next waiting one is due; a scheduled job is claimed once its time came.
    """
    value(journal.submit(newJob("late", runAt=NOW + 50)))
    for name in ("a", "b", "c"):
        value(journal.submit(newJob(name)))
    claimed = value(journal.claim(2, NOW))
    assert [j.id for j in claimed.jobs] == ["a", "b"]
    assert claimed.nextRunAt == NOW
    claimed = value(journal.claim(5, NOW))
    assert [j.id for j in claimed.jobs] == ["c"]
    assert claimed.nextRunAt == NOW + 50
    assert value(journal.claim(5, NOW + 49)).jobs == []
    assert [j.id for j in value(journal.claim(5, NOW + 50)).jobs] == ["late"]


def test_retryReleaseCancel(journal: Any) -> None:
    """
    A failed run waits for its retry with its error; a released job waits
    again with its attempt uncounted; cancel ends a waiting job, leaves a
    running or finished one, and says None for an unknown id.
    """
    value(journal.submit(newJob("a")))
    value(journal.submit(newJob("b")))
    value(journal.claim(2, NOW))
    error = {"code": -32000, "message": "ValueError: x"}
    assert value(journal.retryAt("a", NOW + 5, error))
    assert value(journal.release("b"))
    a, b = value(journal.get("a")), value(journal.get("b"))
    assert (a.state, a.runAt, a.error, a.attempts) == ("scheduled", NOW + 5, error, 1)
    assert (b.state, b.attempts) == ("queued", 0)
    cancelled = value(journal.cancel("a", NOW, NOW + 9, {"code": -32800}))
    assert cancelled.state == "cancelled" and cancelled.finishedAt == NOW
    value(journal.claim(1, NOW))
    assert value(journal.cancel("b", NOW, NOW + 9, {"code": -32800})).state == (
        "running"
    )
    assert value(journal.cancel("nope", NOW, NOW + 9, {})) is None
    assert journal.counts()["cancelled"] == 1


def test_list(journal: Any) -> None:
    """
    Listing goes newest first, filtered by state or method.
    """
    for name in ("a", "b", "c"):
        value(journal.submit(newJob(name)))
    value(journal.claim(1, NOW))
    assert [j.id for j in value(journal.list(None, None, 10))] == ["c", "b", "a"]
    assert [j.id for j in value(journal.list(None, None, 2))] == ["c", "b"]
    assert [j.id for j in value(journal.list("queued", None, 10))] == ["c", "b"]
    assert [j.id for j in value(journal.list(None, "echo", 10))] == ["c", "b", "a"]
    assert value(journal.list(None, "other", 10)) == []


def test_jobsOfAServerThatWentAway(backend: Backend) -> None:
    """
    Jobs running when their server went away are queued again where the
    rule allows (running again, counted as an attempt), and interrupted
    with -32008 otherwise; waiting jobs are left waiting; nothing else is
    touched.
    """
    journal = backend.make()
    journal.open()
    value(journal.recover(NOW, NOW + 10, lambda job: False))
    value(journal.submit(newJob("done")))
    value(journal.claim(1, NOW))
    value(journal.finish("done", "succeeded", NOW, NOW + 10, result="2"))
    for name in ("keep", "drop", "waiting"):
        value(journal.submit(newJob(name)))
    value(journal.claim(2, NOW))
    survivor, recovered = backend.goneAway(journal, lambda job: job.id == "keep")
    try:
        assert (list(recovered.requeued), list(recovered.interrupted)) == (
            ["keep"],
            ["drop"],
        )
        drop = value(survivor.get("drop"))
        assert drop.state == "interrupted" and drop.error["code"] == -32008
        assert drop.error["data"]["job"] == "drop"
        assert value(survivor.get("done")).state == "succeeded"
        assert value(survivor.get("waiting")).state == "queued"
        assert survivor.counts()["interrupted"] == 1
        assert survivor.counts()["running"] == 0
        claimed = value(survivor.claim(5, NOW + 60))
        assert sorted((j.id, j.attempts) for j in claimed.jobs) == [
            ("keep", 2),
            ("waiting", 1),
        ]
    finally:
        value(survivor.close())


@pytest_twisted.ensureDeferred
async def test_groupCommit(backend: Backend) -> None:
    """
    With the writer thread, hundreds of submits made in one reactor pass
    share a few transactions, and each Deferred fires after the commit.
    """
    journal = backend.make(reactor, threaded=True)
    journal.open()
    try:
        submits = [journal.submit(newJob(f"j{n}")) for n in range(500)]
        results = await gatherResults(submits)
        assert all(new for _, new in results)
        assert journal.counts()["queued"] == 500
        assert journal._writer.commits < 50, journal._writer.commits
        listed = await journal.list("queued", None, 1000)
        assert len(listed) == 500
    finally:
        await journal.close()
