"""
Unit tests of the durable jobs' logic on faults, without processes or real
time: a L{JobService} over a L{ProcessPool} of fake workers
(L{FakeProcessReactor}) and a journal run inline (C{threaded=False}), so
every journal write is done when the call returns. The backend-neutral
tests run on both journals (the C{store} fixture): an L{SQLiteJournal} on a
real file, and a L{PostgreSQLJournal} on a new database of the session's
throwaway cluster.

A "crash" of the parent is the journal closed with jobs running in it, and
a new service on a new fake reactor started on the same file or database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from taskservice._jobrequest import JobRequest, parseSubmit
from taskservice._journal import IJournal, JobRecord, JournalError, NewJob
from taskservice._sqlitejournal import APPLICATION_ID, SCHEMA_VERSION, SQLiteJournal
from taskservice.errors import (
    JobNotFound,
    JournalUnavailable,
    Unavailable,
    WorkerLost,
)
from taskservice.jobs import RESTART_ALLOWANCE, JobService
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor, FakeWorker

_case = SynchronousTestCase()
result = _case.successResultOf
noResult = _case.assertNoResult


def failure(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    return _case.failureResultOf(d, *types).value


class Store:
    """
    Where the journal of the servers of a test lives: an SQLite file, or a
    PostgreSQL database.

    On PostgreSQL a new server recovers the jobs a dead one left running
    at its first heartbeat after being alive for the server timeout (the
    same restart rule, later), and takes the jobs left waiting by another
    server after a fifth of it: L{recoveryDelay} is the time a new server
    lets pass before the test goes on (none for SQLite, which recovers at
    start). Each server started on a store starts its clock L{RESTART_GAP}
    seconds after the one before (a restart comes after the crash).
    """

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where
        self.epoch = EPOCH - RESTART_GAP
        self.opened: list[Any] = []
        self.recoveryDelay = 0.0 if kind == "sqlite" else SERVER_TIMEOUT * 1.2

    def nextEpoch(self) -> float:
        self.epoch += RESTART_GAP
        return self.epoch

    def journal(self, reactor: Any) -> IJournal:
        journal: Any
        if self.kind == "sqlite":
            journal = SQLiteJournal(reactor, self.where, threaded=False)
        else:
            from taskservice._pgjournal import PostgreSQLJournal

            journal = PostgreSQLJournal(
                reactor, self.where, threaded=False, serverTimeout=SERVER_TIMEOUT
            )
        self.opened.append(journal)
        return journal

    def closeAll(self) -> None:
        """
        Close the journals a test left open (its last server's).
        """
        for journal in self.opened:
            journal.close()


SERVER_TIMEOUT = 10.0
EPOCH = 1_000_000.0
"""A realistic epoch, as the real reactor's."""
RESTART_GAP = 20.0


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """
    Each backend-neutral test runs on both journals.
    """
    if request.param == "sqlite":
        store = Store("sqlite", str(tmp_path / "jobs.sqlite3"))
    else:
        store = Store("postgresql", request.getfixturevalue("pgDSN"))
    yield store
    store.closeAll()


class Server:
    """
    One "process" of a task server: a fake reactor, a pool of two fake
    workers, and a job service on the journal in C{store}.
    """

    def __init__(self, store: Store | None, journal: Any = None, size: int = 2) -> None:
        self.reactor = FakeProcessReactor()
        self.reactor.advance(EPOCH if store is None else store.nextEpoch())
        self.pool = ProcessPool(
            self.reactor, ["tests.jobtasks"], size=size, defaultTimeout=600.0
        )
        self.pool.startService()
        self.reactor.readyAll()
        if journal is None:
            assert store is not None
            journal = store.journal(self.reactor)
        self.journal = journal
        self.jobs = JobService(self.reactor, self.pool, journal, jitter=lambda: 0.5)
        self.jobs.startService()
        self.settle(0.0 if store is None else store.recoveryDelay)

    def settle(self, seconds: float = 0.0) -> None:
        """
        Let C{seconds} pass, then run what is due now (replacement workers
        say they are ready).
        """
        self.reactor.advance(seconds)
        self.reactor.readyAll()
        self.reactor.advance(0)

    def request(self, method: str, params: Any, **options: Any) -> JobRequest:
        return parseSubmit(
            {"method": method, "params": params, **options},
            self.pool.registry,
            self.pool.maxTimeout,
        )

    def submit(self, method: str, params: Any, **options: Any) -> str:
        jobId: str = result(self.jobs.submit(self.request(method, params, **options)))[
            "job"
        ]
        self.settle()
        return jobId

    def job(self, jobId: str) -> dict[str, Any]:
        return result(self.jobs.job(jobId))

    def runningOn(self, jobId: str) -> tuple[FakeWorker, dict[str, Any]]:
        """
        The fake worker running job C{jobId}, and its call.
        """
        for worker in self.reactor.alive:
            for call in worker.calls:
                if call.get("job", {}).get("id") == jobId:
                    return worker, call
        raise AssertionError(f"job {jobId} is not running on any worker")

    def running(self) -> list[str]:
        return [
            call["job"]["id"]
            for worker in self.reactor.alive
            for call in worker.calls
            if "job" in call
        ]

    def crash(self) -> None:
        """
        The parent dies: nothing more is written (the jobs running stay
        running in the journal) and the file is let go.
        """
        result(self.journal.close())


def test_workerLostRetriedWithBackoffThenFailed(store: Store) -> None:
    """
    A job whose worker dies is scheduled again after backoff * 2**(n-1)
    (times 0.5 + jitter, here 1), not earlier, as the next attempt, until
    its attempts are spent: then it is failed with -32002 worker lost, and
    runs no more.
    """
    server = Server(store)
    jobId = server.submit("killsWorker", ["/nowhere", "x"], retries=2, backoff=10.0)
    for attempt, wait in ((1, 10.0), (2, 20.0)):
        worker, call = server.runningOn(jobId)
        assert call["job"]["attempt"] == attempt
        lostAt = server.reactor.seconds()
        worker.exit(signal=9)
        server.settle()
        job = server.job(jobId)
        assert job["state"] == "scheduled", job
        assert job["attempts"] == attempt
        assert job["runAt"] == lostAt + wait
        assert job["error"]["code"] == -32002, job
        server.settle(wait - 0.5)
        assert server.running() == []
        server.settle(0.5)
        assert server.running() == [jobId]
    worker, call = server.runningOn(jobId)
    assert call["job"]["attempt"] == 3
    worker.exit(signal=9)
    server.settle()
    job = server.job(jobId)
    assert (job["state"], job["attempts"], job["maxAttempts"]) == ("failed", 3, 3)
    assert job["error"]["code"] == -32002
    assert job["error"]["message"] == "worker lost"
    error = failure(server.jobs.attach(jobId), WorkerLost)
    assert isinstance(error, WorkerLost)
    server.settle(3600.0)
    assert server.running() == []


def test_taskRetryPolicyIsTheDefault(store: Store) -> None:
    """
    A submit without retries/backoff takes its task's @task(retries=,
    backoff=): alwaysKillsWorker's jobs have 3 attempts, the first retry
    0.2 s after the loss.
    """
    server = Server(store)
    jobId = server.submit("alwaysKillsWorker", ["/nowhere", "x"])
    assert server.job(jobId)["maxAttempts"] == 3
    worker, _ = server.runningOn(jobId)
    lostAt = server.reactor.seconds()
    worker.exit(signal=9)
    server.settle()
    assert server.job(jobId)["runAt"] == pytest.approx(lostAt + 0.2)


def test_restartRecoversRunningJobs(store: Store) -> None:
    """
    After a crash, on the same file or database: queued and scheduled jobs wait as they
    were; a running job of an idempotent task runs again as attempt 2; one
    of a resumable task too, with its last progress in the job context; a
    running job of a non-idempotent task (even one with no retries left)
    is interrupted, -32008 saying its task is not safe to run again, and
    is not run.
    """
    path = store
    first = Server(path, size=3)
    first.jobs.maxRunning = 3
    again = first.submit("again", ["/nowhere", "a"])
    once = first.submit("once", ["/nowhere", "o"])
    resume = first.submit("resume", ["/nowhere", "r"])
    worker, call = first.runningOn(resume)
    worker.progress({"done": 2, "total": 4}, cid=call["cid"])
    first.settle()
    queued = first.submit("quick", ["/nowhere", "q"])
    scheduled = first.submit("quick", ["/nowhere", "s"], delay=60.0)
    assert sorted(first.running()) == sorted([again, once, resume])
    runAt = first.job(scheduled)["runAt"]
    first.crash()

    second = Server(path, size=3)
    assert second.job(once)["state"] == "interrupted"
    error = second.job(once)["error"]
    assert error["code"] == -32008
    assert error["data"]["job"] == once
    assert error["data"]["attempts"] == 1
    assert "not safe to run again" in error["data"]["reason"], error
    assert sorted(second.running()) == sorted([again, resume, queued])
    assert second.runningOn(again)[1]["job"]["attempt"] == 2
    resumed = second.runningOn(resume)[1]["job"]
    assert resumed["attempt"] == 2
    assert resumed["progress"] == {"done": 2, "total": 4}
    assert second.job(scheduled)["state"] == "scheduled"
    assert second.job(scheduled)["runAt"] == runAt


def test_jobThatKeepsTakingItsServerDownStops(store: Store) -> None:
    """
    An idempotent job running each time its server dies runs again at
    each restart only up to its attempts + RESTART_ALLOWANCE: then it is
    interrupted, saying it has run as many times as it may.
    """
    path = store
    server = Server(path)
    jobId = server.submit("again", ["/nowhere", "a"])
    for attempt in range(1, 1 + 1 + RESTART_ALLOWANCE):
        assert server.runningOn(jobId)[1]["job"]["attempt"] == attempt
        server.crash()
        server = Server(path)
    job = server.job(jobId)
    assert job["state"] == "interrupted", job
    assert job["attempts"] == 1 + RESTART_ALLOWANCE
    assert "as many times as it may" in job["error"]["data"]["reason"]
    assert server.running() == []


def test_stopRecordsWhatEndsAndLeavesTheRest(store: Store) -> None:
    """
    Stopping: a job that ends during the pool's drain is recorded; one the
    pool's shutdown timeout cuts short (its worker killed) stays running in
    the journal, for the next start to recover; no job starts meanwhile.
    """
    path = store
    server = Server(path)
    ends = server.submit("once", ["/nowhere", "e"])
    cut = server.submit("again", ["/nowhere", "c"])
    server.jobs.stopService()
    stopped = server.pool.stopService()
    refused = server.jobs.submit(server.request("quick", ["/nowhere", "q"]))
    assert isinstance(failure(refused, Unavailable), Unavailable)
    worker, call = server.runningOn(ends)
    worker.reply(1, cid=call["cid"])
    server.settle(server.pool.shutdownTimeout)
    server.reactor.reapAll()
    server.settle(10.0)
    server.reactor.reapAll()
    result(stopped)
    result(server.jobs.closeJournal())

    after = Server(path)
    assert after.job(ends)["state"] == "succeeded"
    assert after.job(ends)["result"] == 1
    assert after.runningOn(cut)[1]["job"]["attempt"] == 2


class _FullJournal(SQLiteJournal):
    """
    An SQLite journal whose writes fail while C{full} is set, as a full
    disk makes them.
    """

    full = False

    def submit(
        self, job: NewJob, *, running: bool = False
    ) -> Deferred[tuple[JobRecord, bool]]:
        if self.full:
            return fail(JournalError("OperationalError: database or disk is full"))
        return super().submit(job, running=running)


def test_journalUnavailable(tmp_path: Path) -> None:
    """
    A submit the journal cannot record fails with -32009 giving the reason,
    which $/stats shows until a submit is recorded again. (SQLite only: the
    failing journal is an SQLite one made to fail; the service's handling
    is the same for either.)
    """
    reactor = FakeProcessReactor()
    journal = _FullJournal(reactor, str(tmp_path / "jobs.sqlite3"), threaded=False)
    server = Server(None, journal)
    journal.full = True
    request = server.request("quick", ["/nowhere", "x"])
    error = failure(server.jobs.submit(request), JournalUnavailable)
    assert isinstance(error, JournalUnavailable)
    wire: Mapping[str, Any] = error.toWire()
    assert wire["code"] == -32009
    assert wire["data"] == {"reason": "OperationalError: database or disk is full"}
    assert server.jobs.stats()["journal"] == wire["data"]["reason"]
    journal.full = False
    server.submit("quick", ["/nowhere", "x"])
    assert server.jobs.stats()["journal"] == "ok"


def test_unknownJobIds(store: Store) -> None:
    """
    $/job, $/attach and $/cancelJob of an unknown id fail with -32007
    naming it.
    """
    server = Server(store)
    for d in (
        server.jobs.job("nope"),
        server.jobs.attach("nope"),
        server.jobs.cancel("nope"),
    ):
        error = failure(d, JobNotFound)
        assert isinstance(error, JobNotFound)
        assert error.toWire()["code"] == -32007
        assert error.toWire()["data"] == {"job": "nope"}


def _refused(path: Path, *expected: str) -> None:
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    journal = SQLiteJournal(None, str(path), threaded=False)
    with pytest.raises(JournalError) as raised:
        journal.open()
    assert str(path) in str(raised.value)
    for text in expected:
        assert text in str(raised.value)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


def test_filesThatAreNotOurJournalAreRefused(tmp_path: Path) -> None:
    """
    Opening a journal on a file that is not SQLite, an SQLite database of
    another application, or a journal of a newer schema raises
    JournalError naming the file, and changes nothing on disk. (SQLite's
    files; PostgreSQL's databases not ours: test_pgjournal.)
    """
    text = tmp_path / "text" / "notes.txt"
    text.parent.mkdir()
    text.write_bytes(b"hello\n" * 1000)
    _refused(text, "is not an SQLite database")

    foreign = tmp_path / "foreign" / "app.sqlite3"
    foreign.parent.mkdir()
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    db.close()
    _refused(foreign, "another application")

    newer = tmp_path / "newer" / "jobs.sqlite3"
    newer.parent.mkdir()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("CREATE TABLE jobs (id TEXT)")
    db.close()
    _refused(newer, f"schema {SCHEMA_VERSION + 1}")


def test_keyWithNULRefused() -> None:
    """
    A key holding a NUL character is refused with -32602 (PostgreSQL's text
    cannot hold it, and a key must mean the same in both journals).
    """
    from taskservice._task import Registry
    from taskservice.errors import InvalidParams

    registry = Registry.fromModules(["tests.jobtasks"])
    with pytest.raises(InvalidParams) as raised:
        parseSubmit({"method": "echo", "params": [1], "key": "a\x00b"}, registry, 60)
    assert "without NUL" in str(raised.value.data)
    assert (
        parseSubmit({"method": "echo", "params": [1], "key": "ab"}, registry, 60).key
        == "ab"
    )
