"""
Unit tests of the job service's logic: a pool on the in-memory
FakeProcessReactor (no processes, no real time) and a journal run inline:
the tests using the C{rig} fixture run on both journals (an SQLite file,
and a new database of the session's throwaway PostgreSQL cluster, see
L{tests.test_jobs.Store}); those using an SQLite journal made to hold,
fail or count its operations stay on SQLite (the service's handling is
the same for either).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from taskservice._jobrequest import parseSubmit
from taskservice._journal import JobRecord, NewJob
from taskservice._sqlitejournal import SQLiteJournal
from taskservice.errors import JobNotFound, TaskFailed
from taskservice.jobs import JobService
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor
from tests.test_jobs import SERVER_TIMEOUT, Store, store

__all__ = ["store"]  # the fixture, shared with tests.test_jobs

_case = SynchronousTestCase()
result = _case.successResultOf
noResult = _case.assertNoResult


def failure(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    return _case.failureResultOf(d, *types).value


class Rig:
    """
    A started pool of ready fake workers and a job service over an inline
    SQLite journal, with a deterministic jitter.
    """

    def __init__(
        self,
        tmp_path: Path,
        journal: SQLiteJournal | None = None,
        store: Store | None = None,
    ) -> None:
        self.reactor = FakeProcessReactor()
        self.reactor.advance(1_000_000)
        self.pool = ProcessPool(
            self.reactor, ["tests.pooltasks"], size=1, defaultTimeout=10.0
        )
        self.pool.startService()
        self.reactor.readyAll()
        self.journal: Any = journal
        if journal is None:
            self.journal = (
                SQLiteJournal(
                    self.reactor, str(tmp_path / "jobs.sqlite3"), threaded=False
                )
                if store is None
                else store.journal(self.reactor)
            )
        self.jobs = JobService(
            self.reactor, self.pool, self.journal, jitter=lambda: 0.5
        )
        self.jobs.startService()

    def submit(self, **params: Any) -> Deferred[dict[str, Any]]:
        return self.jobs.submit(
            parseSubmit(params, self.pool.registry, self.pool.maxTimeout)
        )

    def turn(self) -> None:
        """
        One reactor pass (the pump runs), then every worker runs its calls.
        """
        self.reactor.advance(0)
        self.reactor.runAllCalls(self.pool.registry)
        self.reactor.advance(0)

    def state(self, jobId: str) -> dict[str, Any]:
        return result(self.jobs.job(jobId))


@pytest.fixture
def rig(tmp_path: Path, store: Store) -> Rig:
    return Rig(tmp_path, store=store)


def test_submitRunAttach(rig: Rig) -> None:
    """
    A submitted job is answered queued, runs in the pool with its job
    context, ends succeeded with its result, and an attach after the end
    gets the result at once.
    """
    submitted = result(rig.submit(method="jobInfo"))
    assert submitted["state"] == "queued"
    attached = rig.jobs.attach(submitted["job"])
    noResult(attached)
    rig.turn()
    context = result(attached)
    assert context == {"id": submitted["job"], "attempt": 1, "progress": None}
    state = rig.state(submitted["job"])
    assert (state["state"], state["attempts"], state["result"]) == (
        "succeeded",
        1,
        context,
    )
    assert result(rig.jobs.attach(submitted["job"])) == context


def test_retriesWithBackoffThenFails(rig: Rig) -> None:
    """
    A job whose task raises is retried after backoff, 2 x backoff (jitter
    0.5 gives a factor of 1), ... and fails with the task's error once its
    retries are used; an attached caller hears only the final error.
    """
    jobId = result(rig.submit(method="boom", retries=2, backoff=1.0))["job"]
    attached = rig.jobs.attach(jobId)
    rig.turn()
    assert rig.state(jobId)["state"] == "scheduled"
    assert rig.state(jobId)["error"]["code"] == -32000
    rig.reactor.advance(0.99)
    rig.turn()
    assert rig.state(jobId)["attempts"] == 1
    rig.reactor.advance(0.01)
    rig.turn()
    assert rig.state(jobId)["attempts"] == 2
    rig.reactor.advance(1.99)
    rig.turn()
    assert rig.state(jobId)["attempts"] == 2
    noResult(attached)
    rig.reactor.advance(0.01)
    rig.turn()
    final = rig.state(jobId)
    assert (final["state"], final["attempts"]) == ("failed", 3)
    assert isinstance(failure(attached, TaskFailed), TaskFailed)


class HeldJournal(SQLiteJournal):
    """
    A journal whose submits are answered only when the test says so (as a
    commit that takes a while).
    """

    held: list[tuple[Deferred[Any], Deferred[Any]]]

    def submit(
        self, job: NewJob, *, running: bool = False
    ) -> Deferred[tuple[JobRecord, bool]]:
        inner = super().submit(job, running=running)
        outer: Deferred[tuple[JobRecord, bool]] = Deferred()
        self.held.append((inner, outer))
        return outer

    def commit(self) -> None:
        held, self.held = self.held, []
        for inner, outer in held:
            inner.chainDeferred(outer)


def test_aCallerGivingUpOnSubmitLeavesTheJob(tmp_path: Path) -> None:
    """
    A caller that cancels its $/submit before the commit (a browser that
    went away) gets CancelledError, and the job, once committed, still runs.
    """
    journal = HeldJournal(
        FakeProcessReactor(), str(tmp_path / "jobs.sqlite3"), threaded=False
    )
    journal.held = []
    rig = Rig(tmp_path, journal)
    rig.turn()  # the first look at the journal: nothing to run
    submitted = rig.submit(method="add", params=[1, 2])
    submitted.cancel()
    failure(submitted, CancelledError)
    journal.commit()
    rig.turn()
    [job] = result(rig.jobs.jobs(None, None, 10))
    assert job["state"] == "succeeded"


def test_cancelWaitingAndRunning(rig: Rig) -> None:
    """
    $/cancelJob ends a scheduled job at once (an attached caller hears
    -32800) and stops a running one; an unknown id is "not found".
    """
    later = result(rig.submit(method="add", params=[1, 2], delay=60))["job"]
    attached = rig.jobs.attach(later)
    assert result(rig.jobs.cancel(later)) == {"job": later, "state": "cancelled"}
    assert failure(attached).__class__.__name__ == "Cancelled"
    running = result(rig.submit(method="hang", params=[30]))["job"]
    rig.reactor.advance(0)
    assert rig.state(running)["state"] == "running"
    stopped = rig.jobs.cancel(running)
    rig.reactor.reapAll()
    rig.reactor.advance(0)
    assert result(stopped) == {"job": running, "state": "cancelled"}
    assert isinstance(failure(rig.jobs.cancel("nope"), JobNotFound), JobNotFound)
    assert isinstance(failure(rig.jobs.job("nope"), JobNotFound), JobNotFound)


def test_jobMetricsAndStats(rig: Rig) -> None:
    """
    A task server with jobs exports them by state, the submits counted, the
    journal's size and whether it works, in /metrics and in $/stats.
    """
    from prometheus_client import generate_latest

    from taskservice.metrics import makeRegistry
    from taskservice.server import TaskServerFactory

    factory = TaskServerFactory(rig.pool, jobs=rig.jobs)
    result(rig.submit(method="add", params=[1, 2]))
    rig.turn()
    # A heartbeat's time: the PostgreSQL journal reads its size with each.
    rig.reactor.advance(SERVER_TIMEOUT)
    text = generate_latest(makeRegistry(server=factory, processMetrics=False)).decode()
    assert 'taskservice_jobs{state="succeeded"} 1.0' in text
    assert 'taskservice_jobs{state="queued"} 0.0' in text
    assert "taskservice_jobs_submitted_total 1.0" in text
    assert "taskservice_journal_up 1.0" in text
    size = rig.journal.sizeBytes()
    assert size > 0 and f"taskservice_journal_bytes {float(size)}" in text
    stats = factory.stats()["jobs"]
    assert (stats["succeeded"], stats["submitted"], stats["journal"]) == (1, 1, "ok")


class FlakyJournal(SQLiteJournal):
    """
    A journal whose next C{finish} fails, as on a full disk.
    """

    failNext = 0

    def finish(self, jobId: str, state: str, *args: Any, **kw: Any) -> Deferred[bool]:
        if self.failNext:
            self.failNext -= 1
            from twisted.internet.defer import fail

            from taskservice._journal import JournalError

            return fail(JournalError("disk full"))
        return super().finish(jobId, state, *args, **kw)


def test_anEndTheJournalCouldNotTakeIsWrittenAgain(tmp_path: Path) -> None:
    """
    When the journal cannot record a job's end, the outcome is kept and
    written again a second later: the job ends succeeded with its result
    (not left running for the next start to re-run or interrupt), and a
    caller attached meanwhile gets the result once it is recorded.
    """
    journal = FlakyJournal(
        FakeProcessReactor(), str(tmp_path / "jobs.sqlite3"), threaded=False
    )
    journal.failNext = 2
    rig = Rig(tmp_path, journal)
    jobId = result(rig.submit(method="add", params=[2, 3]))["job"]
    attached = rig.jobs.attach(jobId)
    rig.turn()
    assert rig.state(jobId)["state"] == "running"
    assert rig.jobs.stats()["journal"] == "disk full"
    late = rig.jobs.attach(jobId)
    noResult(attached)
    noResult(late)
    rig.reactor.advance(1.0)
    assert rig.state(jobId)["state"] == "running"
    rig.reactor.advance(1.0)
    state = rig.state(jobId)
    assert (state["state"], state["result"]) == ("succeeded", 5)
    assert result(attached) == result(late) == 5
    assert rig.jobs.stats()["journal"] == "ok"


class CountingJournal(SQLiteJournal):
    """
    A journal counting its reads of one job and its claims.
    """

    gets = 0
    claims = 0

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        self.gets += 1
        return super().get(jobId)

    def claim(self, limit: int, now: float) -> Deferred[Any]:
        self.claims += 1
        return super().claim(limit, now)


def test_submitWithAFreeSlotIsRecordedRunning(tmp_path: Path) -> None:
    """
    Once nothing waits in the journal, a job submitted with a slot free is
    recorded as running (attempt 1) by its insert and handed to the pool on
    commit, with no claim; an attach to it reads nothing from the journal
    while it runs, nor after it ended until its end is committed; the job
    ends as any other.
    """
    journal = CountingJournal(
        FakeProcessReactor(), str(tmp_path / "jobs.sqlite3"), threaded=False
    )
    rig = Rig(tmp_path, journal)
    rig.turn()  # the first look at the journal: nothing to run
    claims = journal.claims
    submitted = result(rig.submit(method="jobInfo"))
    assert submitted["state"] == "running"
    record = result(journal.get(submitted["job"]))
    assert record is not None
    assert (record.state, record.attempts, record.startedAt) == (
        "running",
        1,
        record.createdAt,
    )
    gets = journal.gets
    attached = rig.jobs.attach(submitted["job"])
    rig.reactor.runAllCalls(rig.pool.registry)
    rig.reactor.advance(0)
    assert result(attached) == {"id": submitted["job"], "attempt": 1, "progress": None}
    assert (journal.gets, journal.claims) == (gets, claims)
    assert rig.state(submitted["job"])["state"] == "succeeded"


def test_submitWaitsBehindJobsDue(rig: Rig) -> None:
    """
    With every slot taken, a submit is recorded queued; and while jobs wait
    in the journal, a new submit waits behind them (oldest first) even once
    a slot is free.
    """
    rig.jobs.maxRunning = 1
    rig.turn()
    first = result(rig.submit(method="hang", params=[30]))
    assert first["state"] == "running"
    second = result(rig.submit(method="add", params=[1, 2]))
    assert second["state"] == "queued"
    rig.jobs.maxRunning = 2
    third = result(rig.submit(method="add", params=[3, 4]))
    assert third["state"] == "queued"


def test_jobIds() -> None:
    """
    Job ids are 16 url-safe characters, all different; a process's ids
    share a random prefix, which is drawn again once its counter is spent.
    """
    from taskservice.jobs import JobIds

    ids = JobIds()
    many = [ids() for _ in range(10_000)]
    assert len(set(many)) == len(many)
    assert all(
        len(i) == 16 and i.replace("-", "").replace("_", "").isalnum() for i in many
    )
    assert len({i[:8] for i in many}) == 1
    assert JobIds()()[:8] != many[0][:8]  # (equal 1 time in 2**48)
    ids._next = (1 << 48) - 1
    last = ids()
    assert last[:8] == many[0][:8] and last[8:] == "________"
    assert ids()[:8] != last[:8]
