"""
Schedules: cron expressions and their ticks, C{@task(schedule=...)}, the
journal's once-per-tick record on a real SQLite file (and its migration
from a real version-1 journal), and the job service's ticks on a fake
clock (L{FakeProcessReactor}: no processes, no real time).
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from taskservice import task
from taskservice._cron import CronError, isoTick, parseCron, tickKey
from taskservice._jobrequest import parseSubmit
from taskservice._journal import JobRecord, JournalError, NewJob
from taskservice._schedules import schedulesOf
from taskservice._sqlitejournal import SCHEMA_VERSION, SQLiteJournal
from taskservice._task import Registry, specOf
from taskservice.errors import InvalidParams
from taskservice.jobs import JobService
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor

_case = SynchronousTestCase()
result = _case.successResultOf

DATA = Path(__file__).parent / "data"


def at(text: str) -> float:
    """
    Epoch seconds of an ISO 8601 UTC time without its zone.
    """
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- cron expressions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("  0 6 * * MON-FRI ", "0 6 * * MON-FRI"),
        ("@daily", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
        ("0 0 1 jan *", "0 0 1 jan *"),
    ],
)
def test_cronAcceptsFiveFieldsAndNicknames(expression: str, fields: str) -> None:
    """
    Five fields (names, ranges, lists, steps) and the usual nicknames are
    accepted; a nickname stands for its five fields.
    """
    assert parseCron(expression).fields == fields


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", r"has 4 fields; it needs five: minute hour"),
        ("0 * * * * *", r"has 6 fields; it needs five: .*no seconds field"),
        ("", r"has 0 fields"),
        ("61 * * * *", r"'61 \* \* \* \*': Bad minute"),
        ("* 24 * * *", r"Bad hour"),
        ("0 0 30 2 *", r"Bad day-of-month"),
        ("0 0 * 13 *", r"Bad month"),
        ("0 0 * * 8", r"Bad day-of-week"),
        ("a b c d e", r"Bad minute"),
        ("@reboot", r"unknown cron nickname '@reboot' \(known: @yearly"),
    ],
)
def test_cronRefusesWhatIsNotAnExpression(expression: str, message: str) -> None:
    """
    A wrong expression is a L{CronError} (a L{ValueError}) saying what is
    wrong: the number of fields (no seconds field), the field at fault, an
    unknown nickname.
    """
    with pytest.raises(CronError, match=message):
        parseCron(expression)


def test_cronTicks() -> None:
    """
    C{next} is the first tick strictly after a time; C{latest} the last at
    or before it, a tick exactly at the time included; both in UTC.
    """
    cron = parseCron("*/5 * * * *")
    tick = at("2026-12-03T10:05:00")
    assert cron.next(tick) == at("2026-12-03T10:10:00")
    assert cron.next(tick - 0.5) == tick
    assert cron.latest(tick) == tick
    assert cron.latest(tick - 0.001) == at("2026-12-03T10:00:00")
    assert cron.latest(tick + 299.9) == tick
    weekdays = parseCron("30 6 * * MON-FRI")
    friday = at("2026-12-04T12:00:00")
    assert weekdays.next(friday) == at("2026-12-07T06:30:00")  # Monday
    assert weekdays.latest(at("2026-12-06T12:00:00")) == at("2026-12-04T06:30:00")
    assert isoTick(tick) == "2026-12-03T10:05:00Z"
    assert tickKey("report", tick) == "cron:report:2026-12-03T10:05:00Z"


# -- @task(schedule=...) ---------------------------------------------------------


def test_taskSchedule() -> None:
    """
    C{@task(schedule=...)} keeps the expression on the task's spec; a wrong
    expression, or a function a tick could not call without arguments, is
    a L{ValueError} at decoration.
    """

    @task(schedule="*/5 * * * *")
    def tick() -> None: ...

    spec = specOf(tick)
    assert spec is not None and spec.schedule == "*/5 * * * *"
    with pytest.raises(ValueError, match=r"'\*/5 \* \* \*' has 4 fields"):

        @task(schedule="*/5 * * *")
        def wrong() -> None: ...

    with pytest.raises(
        ValueError, match=r"task 'needs' cannot be scheduled: a tick calls it with no"
    ):

        @task(schedule="@hourly")
        def needs(value: int) -> None: ...


def test_schedulesOfARegistry() -> None:
    """
    The tasks' own schedules, with overrides that add a schedule or
    replace a task's; an override naming no task, a wrong expression or a
    task needing arguments is a L{ValueError} naming the task.
    """
    registry = Registry.fromModules(["tests.crontasks"])
    own = {s.name: s.cron.fields for s in schedulesOf(registry)}
    assert own == {"daily": "0 0 * * *", "everyFive": "*/5 * * * *"}
    changed = {
        s.name: s.cron.fields for s in schedulesOf(registry, {"daily": "0 6 * * *"})
    }
    assert changed == {"daily": "0 6 * * *", "everyFive": "*/5 * * * *"}
    with pytest.raises(ValueError, match=r"no task 'nope' to schedule \(tasks: daily"):
        schedulesOf(registry, {"nope": "@daily"})
    with pytest.raises(ValueError, match=r"schedule of 'daily': .*Bad hour"):
        schedulesOf(registry, {"daily": "0 25 * * *"})
    with pytest.raises(ValueError, match=r"'unscheduled' cannot be scheduled"):
        schedulesOf(registry, {"unscheduled": "@daily"})


def test_submitMayNotTakeATickKey() -> None:
    """
    The keys of ticks' jobs are the schedules': a C{$/submit} with a key
    starting with C{cron:} is refused (-32602), so no caller can take a
    tick's key and hold a tick back.
    """
    registry = Registry.fromModules(["tests.crontasks"])
    with pytest.raises(InvalidParams) as caught:
        parseSubmit(
            {"method": "everyFive", "key": "cron:everyFive:2026-12-03T10:05:00Z"},
            registry,
            60.0,
        )
    assert 'may not start with "cron:"' in str(caught.value.data)


# -- the journal -----------------------------------------------------------------


def value(d: Deferred[Any]) -> Any:
    return result(d)


def tickJob(jobId: str, name: str, tick: float, now: float) -> NewJob:
    return NewJob(jobId, name, "null", tickKey(name, tick), 1, 1.0, None, tick, now)


def inline(path: Path) -> SQLiteJournal:
    journal = SQLiteJournal(Clock(), str(path), threaded=False)
    journal.open()
    return journal


@pytest.fixture(params=["sqlite", "postgresql"])
def makeJournal(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """
    Opens a journal (a new one each call) on one store: an SQLite file, or
    a PostgreSQL database (both backends keep ticks alike).
    """
    if request.param == "sqlite":
        return lambda: inline(tmp_path / "jobs.sqlite3")
    from taskservice._pgjournal import PostgreSQLJournal

    dsn = request.getfixturevalue("pgDSN")

    def make() -> PostgreSQLJournal:
        journal = PostgreSQLJournal(Clock(), dsn, threaded=False)
        journal.open()
        return journal

    return make


def test_recordTickOncePerTick(makeJournal: Any) -> None:
    """
    A tick is recorded once with its job (queued); the same tick again, or
    an older one, records nothing; a later one does; after a restart on
    the same journal the ticks recorded stay recorded.
    """
    journal = makeJournal()
    tick = at("2026-12-03T10:05:00")
    record = value(
        journal.recordTick("report", tick, tickJob("a", "report", tick, tick))
    )
    assert isinstance(record, JobRecord)
    assert (record.id, record.state, record.key, record.params) == (
        "a",
        "queued",
        "cron:report:2026-12-03T10:05:00Z",
        "null",
    )
    again = journal.recordTick("report", tick, tickJob("b", "report", tick, tick + 1))
    assert value(again) is None
    older = tick - 300
    assert (
        value(journal.recordTick("report", older, tickJob("c", "report", older, tick)))
        is None
    )
    # Another schedule's ticks are its own.
    assert value(journal.recordTick("other", tick, tickJob("d", "other", tick, tick)))
    later = tick + 300
    assert value(
        journal.recordTick("report", later, tickJob("e", "report", later, later))
    )
    assert journal.counts()["queued"] == 3
    assert value(journal.get("b")) is None and value(journal.get("c")) is None
    value(journal.close())

    reopened = makeJournal()
    assert (
        value(
            reopened.recordTick("report", later, tickJob("f", "report", later, later))
        )
        is None
    )
    assert reopened.counts()["queued"] == 3
    value(reopened.close())


def test_recordTickWithAKeyHeld(makeJournal: Any) -> None:
    """
    A tick whose job's key a job already holds is recorded, and returns
    that job without inserting another.
    """
    journal = makeJournal()
    tick = at("2026-12-03T10:05:00")
    held, _ = value(journal.submit(tickJob("first", "report", tick, tick)))
    record = value(
        journal.recordTick("report", tick, tickJob("second", "report", tick, tick))
    )
    assert record.id == held.id == "first"
    assert value(journal.get("second")) is None
    assert (
        value(
            journal.recordTick("report", tick, tickJob("third", "report", tick, tick))
        )
        is None
    )
    value(journal.close())


def test_migratesARealVersion1Journal(tmp_path: Path) -> None:
    """
    A journal written by the previous release (schema 1: the file in
    tests/data, made by that code with a succeeded and a queued job) is
    migrated to schema 2 when opened: its jobs and counts are kept, ticks
    can be recorded, and it stays ours (application id) at version 2.
    """
    path = tmp_path / "jobs.sqlite3"
    shutil.copy(DATA / "journal-v1.sqlite3", path)
    old = sqlite3.connect(path)
    try:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 1
        assert not old.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'schedules'"
        ).fetchall()
    finally:
        old.close()
    journal = inline(path)
    assert SCHEMA_VERSION == 2
    assert journal.counts()["succeeded"] == 1 and journal.counts()["queued"] == 1
    done = value(journal.get("v1-queued"))
    assert (done.state, done.result, done.key) == ("succeeded", "1", "k-queued")
    tick = at("2026-12-03T10:05:00")
    assert value(journal.recordTick("report", tick, tickJob("t", "report", tick, tick)))
    claimed = value(journal.claim(10, tick))
    assert sorted(j.id for j in claimed.jobs) == ["t", "v1-done"]
    value(journal.close())
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        rows = connection.execute(
            "SELECT name, last_tick, job FROM schedules"
        ).fetchall()
        assert rows == [("report", tick, "t")]
    finally:
        connection.close()
    # Opening it again migrates nothing more.
    value(inline(path).close())


def test_refusesASchemaNewerThanTwo(tmp_path: Path) -> None:
    """
    A journal of schema 3 (a newer taskservice) is refused, untouched.
    """
    path = tmp_path / "jobs.sqlite3"
    value(inline(path).close())
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 3")
    connection.close()
    with pytest.raises(JournalError, match=r"schema 3, written by a newer"):
        inline(path)


# -- the job service on a fake clock ---------------------------------------------


class Rig:
    """
    A started pool of ready fake workers (L{tests.pooltasks}) and a job
    service over an inline SQLite journal, with C{schedules}, its clock at
    C{start}.
    """

    def __init__(
        self,
        path: Path,
        start: float,
        schedules: dict[str, str],
        journal: SQLiteJournal | None = None,
    ) -> None:
        self.reactor = FakeProcessReactor()
        self.reactor.advance(start)
        self.pool = ProcessPool(
            self.reactor, ["tests.pooltasks"], size=1, defaultTimeout=10.0
        )
        self.pool.startService()
        self.reactor.readyAll()
        self.journal = journal or SQLiteJournal(self.reactor, str(path), threaded=False)
        self.jobs = JobService(
            self.reactor, self.pool, self.journal, schedules=schedules
        )
        self.jobs.startService()

    def turn(self) -> None:
        self.reactor.advance(0)
        self.reactor.runAllCalls(self.pool.registry)
        self.reactor.advance(0)

    def advanceTo(self, when: float) -> None:
        self.reactor.advance(when - self.reactor.seconds())
        self.turn()

    def ticks(self) -> list[dict[str, Any]]:
        jobs = result(self.jobs.jobs(None, "pid", 100))
        return sorted(jobs, key=lambda job: job["key"])

    def stop(self) -> None:
        result(self.jobs.stopService())
        result(self.jobs.closeJournal())


def test_ticksRunOnceEachAtTheirTime(tmp_path: Path) -> None:
    """
    Started between ticks, a schedule runs its latest tick (not yet run)
    at once, then each tick at its time, each a durable job with the key
    C{cron:NAME:<ISO tick>} that ends succeeded; nothing runs in between.
    """
    rig = Rig(tmp_path / "j.sqlite3", at("2026-12-03T10:02:30"), {"pid": "*/5 * * * *"})
    rig.turn()
    assert [job["key"] for job in rig.ticks()] == ["cron:pid:2026-12-03T10:00:00Z"]
    rig.advanceTo(at("2026-12-03T10:04:59"))
    assert len(rig.ticks()) == 1
    rig.advanceTo(at("2026-12-03T10:05:00"))
    rig.advanceTo(at("2026-12-03T10:10:00"))
    ticks = rig.ticks()
    assert [job["key"] for job in ticks] == [
        "cron:pid:2026-12-03T10:00:00Z",
        "cron:pid:2026-12-03T10:05:00Z",
        "cron:pid:2026-12-03T10:10:00Z",
    ]
    assert [job["state"] for job in ticks] == ["succeeded"] * 3
    assert ticks[1]["runAt"] == at("2026-12-03T10:05:00")
    stats = rig.jobs.stats()
    assert stats["ticks"] == 3
    assert stats["schedules"] == {
        "pid": {"cron": "*/5 * * * *", "next": "2026-12-03T10:15:00Z"}
    }
    rig.stop()


def test_aRestartRunsNoTickAgainAndOnlyTheLatestMissed(tmp_path: Path) -> None:
    """
    A server started again within the same tick runs nothing; one started
    after 20 minutes down (four ticks missed) runs only the latest, once.
    """
    path = tmp_path / "j.sqlite3"
    first = Rig(path, at("2026-12-03T10:02:30"), {"pid": "*/5 * * * *"})
    first.turn()
    first.stop()
    again = Rig(path, at("2026-12-03T10:04:00"), {"pid": "*/5 * * * *"})
    again.turn()
    assert len(again.ticks()) == 1 and again.jobs.ticks == 0
    again.stop()
    later = Rig(path, at("2026-12-03T10:23:00"), {"pid": "*/5 * * * *"})
    later.turn()
    assert [job["key"] for job in later.ticks()] == [
        "cron:pid:2026-12-03T10:00:00Z",
        "cron:pid:2026-12-03T10:20:00Z",
    ]
    later.stop()


def test_aLateTimerRunsTheLatestTickOnce(tmp_path: Path) -> None:
    """
    A timer that fires an hour late (a suspended machine, a blocked
    reactor) runs the latest tick it passed, once, not the twelve.
    """
    rig = Rig(tmp_path / "j.sqlite3", at("2026-12-03T10:02:30"), {"pid": "*/5 * * * *"})
    rig.turn()
    rig.reactor.advance(3600)  # one jump: the 10:05 timer fires at 11:02:30
    rig.turn()
    assert [job["key"] for job in rig.ticks()] == [
        "cron:pid:2026-12-03T10:00:00Z",
        "cron:pid:2026-12-03T11:00:00Z",
    ]
    rig.advanceTo(at("2026-12-03T11:05:00"))
    assert len(rig.ticks()) == 3
    rig.stop()


def test_tickJobsFollowTheTaskPolicy(tmp_path: Path) -> None:
    """
    A tick's job takes the task's retries, backoff and timeout, and no
    params; stopping the service stops the timers.
    """
    reactor = FakeProcessReactor()
    reactor.advance(at("2026-12-03T10:02:30"))
    pool = ProcessPool(reactor, ["tests.crontasks"], size=1)
    journal = SQLiteJournal(reactor, str(tmp_path / "j.sqlite3"), threaded=False)
    jobs = JobService(reactor, pool, journal)
    assert [s.name for s in jobs.schedules] == ["daily", "everyFive"]
    jobs.startService()
    reactor.advance(0)
    (job,) = result(journal.list(None, "everyFive", 10))
    assert (job.maxAttempts, job.backoff, job.timeout, job.params) == (
        3,
        3.0,
        7.0,
        "null",
    )
    assert job.key == "cron:everyFive:2026-12-03T10:00:00Z"
    (daily,) = result(journal.list(None, "daily", 10))
    assert daily.key == "cron:daily:2026-12-03T00:00:00Z"
    result(jobs.stopService())
    reactor.advance(3600)
    assert len(result(journal.list(None, "everyFive", 10))) == 1
    result(jobs.closeJournal())


class FailingOnce(SQLiteJournal):
    """
    A journal whose first C{recordTick} fails (a full disk, say).
    """

    failed = False

    def recordTick(self, schedule: str, tick: float, job: NewJob) -> Deferred[Any]:
        if not self.failed:
            self.failed = True
            return fail(JournalError("disk full"))
        return super().recordTick(schedule, tick, job)


def test_aTickTheJournalRefusedIsTriedAgain(tmp_path: Path) -> None:
    """
    A tick the journal could not record is tried again a second later (and
    the trouble shown in C{$/stats}), then recorded once.
    """
    reactor = FakeProcessReactor()
    journal = FailingOnce(reactor, str(tmp_path / "j.sqlite3"), threaded=False)
    rig = Rig(tmp_path, at("2026-12-03T10:02:30"), {"pid": "*/5 * * * *"}, journal)
    rig.turn()
    assert rig.ticks() == [] and rig.jobs.stats()["journal"] == "disk full"
    rig.advanceTo(at("2026-12-03T10:02:31"))
    assert [job["key"] for job in rig.ticks()] == ["cron:pid:2026-12-03T10:00:00Z"]
    assert rig.jobs.stats()["journal"] == "ok"
    rig.stop()


def test_wrongSchedulesAreRefusedAtConstruction(tmp_path: Path) -> None:
    """
    The job service refuses a schedule naming no task, or a wrong
    expression, with a L{ValueError} naming it.
    """
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    journal = SQLiteJournal(reactor, ":memory:", threaded=False)
    with pytest.raises(ValueError, match="no task 'nope' to schedule"):
        JobService(reactor, pool, journal, schedules={"nope": "@daily"})
    with pytest.raises(ValueError, match=r"schedule of 'pid': .*has 6 fields"):
        JobService(reactor, pool, journal, schedules={"pid": "0 0 * * * *"})
