"""
What only the PostgreSQL journal does, on a real throwaway cluster: servers
starting together, the databases it refuses, several servers on one
database (claims, keys, heartbeats, sweeps, fencing), and the notifications
between them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from taskservice._journal import JournalError, NewJob
from taskservice._pgjournal import PostgreSQLJournal, describe
from taskservice._pgschema import SCHEMA_VERSION
from tests.test_journal_contract import NOW, newJob, value

pytestmark = pytest.mark.integration


def journalOn(dsn: str, **options: Any) -> PostgreSQLJournal:
    journal = PostgreSQLJournal(Clock(), dsn, threaded=False, **options)
    journal.open()
    return journal


def backdate(dsn: str, journal: PostgreSQLJournal, seconds: float = 3600) -> None:
    """
    Make C{journal}'s server look as if its last heartbeat was long ago.
    """
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "UPDATE taskservice_servers SET heartbeat_at = now()"
            " - make_interval(secs => %s) WHERE id = %s",
            (seconds, journal.serverId),
        )


def sweepNow(journal: PostgreSQLJournal) -> Any:
    """
    Heartbeat with a sweep, as a server alive for longer than the timeout.
    """
    journal._aliveSince = journal.reactor.seconds() - journal.serverTimeout
    return value(journal.beat())


@pytest.fixture
def two(pgDSN: str) -> Iterator[tuple[PostgreSQLJournal, PostgreSQLJournal]]:
    a, b = journalOn(pgDSN), journalOn(pgDSN)
    for journal in (a, b):
        value(journal.recover(NOW, NOW + 10, lambda job: job.method == "echo"))
    yield a, b
    for journal in (a, b):
        value(journal.close())


def test_serversStartingTogetherMigrateOnce(pgDSN: str) -> None:
    """
    Eight servers opening a new database at the same moment each wait for
    the migration lock: all start, the schema is created once, at the
    current version.
    """
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def start() -> None:
        journal = PostgreSQLJournal(None, pgDSN)
        barrier.wait()
        try:
            journal.check()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with psycopg.connect(pgDSN) as db:
        meta: dict[str, str] = dict(
            db.execute("SELECT name, value FROM taskservice_meta").fetchall()
        )
        servers = db.execute("SELECT count(*) FROM taskservice_servers").fetchone()
    assert meta == {"application": "taskservice job journal", "schema": "1"}
    assert servers == (0,)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("CREATE TABLE taskservice_jobs (x int)", "not a job journal's"),
        (
            "CREATE TABLE taskservice_meta (name text, value text);"
            " INSERT INTO taskservice_meta VALUES ('application', 'mine')",
            "of another application",
        ),
        (
            "CREATE TABLE taskservice_meta (name text, value text);"
            " INSERT INTO taskservice_meta VALUES"
            " ('application', 'taskservice job journal'),"
            f" ('schema', '{SCHEMA_VERSION + 1}')",
            "newer taskservice",
        ),
    ],
)
def test_refusesDatabasesNotOurs(pgDSN: str, setup: str, reason: str) -> None:
    """
    A database holding tables of the journal's names that are not a
    journal's, or a journal of a newer schema, is refused at open with a
    message naming the database, and left as it was.
    """
    with psycopg.connect(pgDSN, autocommit=True) as db:
        db.execute(setup)
        before = db.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
    with pytest.raises(JournalError, match=reason) as raised:
        PostgreSQLJournal(Clock(), pgDSN).open()
    assert describe(pgDSN) in str(raised.value)
    with psycopg.connect(pgDSN, autocommit=True) as db:
        after = db.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
    assert after == before


def test_unreachableDatabase(pgCluster: Any) -> None:
    """
    A database that cannot be reached is a JournalError naming it, without
    its password.
    """
    dsn = f"postgresql://someone:s3cret@127.0.0.1:{pgCluster.port}/nosuchdb"
    with pytest.raises(JournalError, match="cannot connect") as raised:
        PostgreSQLJournal(Clock(), dsn).open()
    assert "nosuchdb" in str(raised.value)
    assert "s3cret" not in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_claimsOfTwoServersNeverOverlap(pgDSN: str) -> None:
    """
    Two servers claiming from one queue at the same time, in small bites,
    between them take every job exactly once.
    """
    a = PostgreSQLJournal(reactor, pgDSN)
    b = PostgreSQLJournal(reactor, pgDSN)
    a.open()
    b.open()
    try:
        await gatherResults([a.submit(newJob(f"j{n}")) for n in range(400)])
        taken: dict[str, list[str]] = {"a": [], "b": []}
        while True:
            # (Later than a heartbeat's interval: b may take a's jobs.)
            later = NOW + 60
            claims = await gatherResults(
                [
                    a.claim(7, later),
                    b.claim(7, later),
                    a.claim(5, later),
                    b.claim(3, later),
                ]
            )
            if not any(c.jobs for c in claims):
                break
            for name, claimed in zip("abab", claims, strict=True):
                taken[name].extend(j.id for j in claimed.jobs)
        everything = taken["a"] + taken["b"]
        assert sorted(everything) == sorted(f"j{n}" for n in range(400))
        assert len(set(everything)) == 400
        assert taken["a"] and taken["b"]
    finally:
        await gatherResults([a.close(), b.close()])


@pytest_twisted.ensureDeferred
async def test_oneKeyOneJobAcrossServers(pgDSN: str) -> None:
    """
    Two servers submitting jobs with the same keys at the same time record
    one job per key, and both answer with it.
    """
    a = PostgreSQLJournal(reactor, pgDSN)
    b = PostgreSQLJournal(reactor, pgDSN)
    a.open()
    b.open()
    try:
        submits = []
        for n in range(100):
            submits.append(a.submit(newJob(f"a{n}", key=f"k{n}")))
            submits.append(b.submit(newJob(f"b{n}", key=f"k{n}")))
        outcomes = await gatherResults(submits)
        for n in range(100):
            (ra, newA), (rb, newB) = outcomes[2 * n], outcomes[2 * n + 1]
            assert ra.id == rb.id and newA != newB
        with psycopg.connect(pgDSN) as db:
            assert db.execute("SELECT count(*) FROM taskservice_jobs").fetchone() == (
                100,
            )
    finally:
        await gatherResults([a.close(), b.close()])


def test_sweepRecoversOnlyServersGoneAway(
    pgDSN: str, two: tuple[PostgreSQLJournal, PostgreSQLJournal]
) -> None:
    """
    A sweep leaves the jobs of servers that heartbeat alone; it takes those
    of a server whose heartbeat is older than the timeout (running again
    where the rule allows, cancelled where a cancel was asked, else
    interrupted) and forgets that server; then that server's late writes
    for those jobs are refused (fenced), and its next heartbeat says it
    was taken for gone.
    """
    a, b = two
    value(a.submit(NewJob("again", "echo", "[]", None, 1, 1.0, None, NOW, NOW)))
    value(a.submit(NewJob("once", "other", "[]", None, 1, 1.0, None, NOW, NOW)))
    value(a.submit(NewJob("stop", "other", "[]", None, 1, 1.0, None, NOW, NOW)))
    assert len(value(a.claim(3, NOW)).jobs) == 3
    assert sweepNow(b) == type(sweepNow(b))([], [])
    assert value(b.cancel("stop", NOW, NOW + 9, {"code": -32800})).state == "running"
    backdate(pgDSN, a)
    recovered = sweepNow(b)
    assert list(recovered.requeued) == ["again"]
    assert sorted(recovered.interrupted) == ["once", "stop"]
    states = {j: value(b.get(j)).state for j in ("again", "once", "stop")}
    assert states == {"again": "queued", "once": "interrupted", "stop": "cancelled"}
    assert value(b.get("stop")).error["code"] == -32800
    # The first server comes back: its writes for those jobs change nothing.
    assert not value(a.finish("once", "succeeded", NOW, NOW + 9, result="1"))
    assert not value(a.retryAt("again", NOW, {"code": -32000}))
    assert not value(a.release("again"))
    assert value(b.get("once")).state == "interrupted"
    assert value(b.get("again")).state == "queued"
    value(a.beat())
    [claimed] = value(b.claim(5, NOW)).jobs
    assert (claimed.id, claimed.attempts) == ("again", 2)
    assert value(b.finish("again", "succeeded", NOW, NOW + 9, result="1"))


def test_noSweepBeforeTheServerWasAliveForTheTimeout(
    pgDSN: str, two: tuple[PostgreSQLJournal, PostgreSQLJournal]
) -> None:
    """
    A server that only just (re)started, or whose last heartbeat failed,
    does not take anyone's jobs until it has been alive for the timeout
    itself: after an outage of the database, the servers coming back do not
    take each other's jobs.
    """
    a, b = two
    value(a.submit(newJob("x")))
    value(a.claim(1, NOW))
    backdate(pgDSN, a)
    b._aliveSince = b.reactor.seconds()
    assert value(b.beat()) is None
    # Its heartbeats (every timeout / 5) do not sweep before the timeout.
    for _ in range(4):
        b.reactor.advance(b.serverTimeout / 5)
    assert value(b.get("x")).state == "running" and b.swept == []
    b.reactor.advance(b.serverTimeout / 5)
    assert [list(r.requeued) for r in b.swept] == [["x"]]
    assert value(b.get("x")).state == "queued"


def test_aStoppedServersJobsAreRecoveredAtOnce(
    pgDSN: str, two: tuple[PostgreSQLJournal, PostgreSQLJournal]
) -> None:
    """
    A server that stops leaves the servers table: the jobs it left running
    (cut short by its stop) are recovered at the others' next sweep,
    without waiting for the timeout.
    """
    a, b = two
    value(a.submit(newJob("x")))
    value(a.claim(1, NOW))
    c = journalOn(pgDSN)
    value(c.recover(NOW, NOW + 10, lambda job: True))
    value(c.submit(newJob("y")))
    value(c.claim(1, NOW))
    value(c.close())
    recovered = sweepNow(b)
    assert list(recovered.requeued) == ["y"]
    assert value(b.get("x")).state == "running"


def test_countsAndSizeAreReadAtEachHeartbeat(
    two: tuple[PostgreSQLJournal, PostgreSQLJournal],
) -> None:
    """
    Each server's counts take in the other servers' changes at its next
    heartbeat, and its size is the jobs table's.
    """
    a, b = two
    for n in range(5):
        value(a.submit(newJob(f"j{n}")))
    assert b.counts()["queued"] == 0
    value(b.beat())
    assert b.counts()["queued"] == 5
    assert b.sizeBytes() > 0


class Events:
    """
    A L{taskservice._pgjournal.JournalEvents} that records, and fires a
    Deferred per awaited kind.
    """

    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []
        self._waiting: list[tuple[str, Deferred[Any]]] = []

    def wait(self, kind: str) -> Deferred[Any]:
        for heard in self.heard:
            if heard[0] == kind:
                self.heard.remove(heard)
                d: Deferred[Any] = Deferred()
                d.callback(heard[1])
                return d
        d = Deferred()
        self._waiting.append((kind, d))
        return d

    def _hear(self, kind: str, what: Any) -> None:
        for waiting in self._waiting:
            if waiting[0] == kind:
                self._waiting.remove(waiting)
                waiting[1].callback(what)
                return
        self.heard.append((kind, what))

    def due(self, runAt: float) -> None:
        self._hear("due", runAt)

    def progressed(self, jobId: str, update: Any) -> None:
        self._hear("progressed", (jobId, update))

    def ended(self, jobId: str) -> None:
        self._hear("ended", jobId)

    def cancelRequested(self, jobId: str) -> None:
        self._hear("cancel", jobId)

    def resync(self) -> None:
        self._hear("resync", None)

    def busy(self) -> bool:
        return self.full

    full = True


@pytest_twisted.ensureDeferred
async def test_notificationsBetweenServers(pgDSN: str) -> None:
    """
    A submit on one server wakes the other (with the job's time); a server
    watching a job running elsewhere hears its progress and its end; a
    cancel of a job running on a server asks that server, and only it.
    """
    a = PostgreSQLJournal(reactor, pgDSN)
    b = PostgreSQLJournal(reactor, pgDSN)
    a.open()
    b.open()
    heardA, heardB = Events(), Events()
    a.listen(heardA)
    b.listen(heardB)
    try:
        await a.submit(newJob("x"))
        assert await heardB.wait("due") == NOW
        await a.submit(newJob("later", runAt=NOW + 60))
        assert await heardB.wait("due") == NOW + 60
        [job] = (await a.claim(1, NOW)).jobs
        watched = await b.watch("x")
        assert watched is not None and watched.state == "running"
        a.progress("x", {"done": 1, "total": 2})
        assert await heardB.wait("progressed") == ("x", {"done": 1, "total": 2})
        await a.finish("x", "succeeded", NOW, NOW + 9, result="7")
        assert await heardB.wait("ended") == "x"
        await a.submit(newJob("y"))
        [job] = (await a.claim(1, NOW)).jobs
        running = await b.cancel("y", NOW, NOW + 9, {"code": -32800})
        assert running.state == "running"
        assert await heardA.wait("cancel") == "y"
        assert [k for k, _ in heardB.heard if k == "cancel"] == []
        assert await b.watch("nope") is None
    finally:
        await gatherResults([a.close(), b.close()])


def terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest_twisted.ensureDeferred
async def test_connectionsLostAreMadeAgain(pgDSN: str) -> None:
    """
    When the database drops the listening connection, the journal connects
    again by itself (off the reactor's thread), says notifications may have
    been missed (resync), and hears the others' submits again; when it
    drops the writer's connection, the operation under way fails with a
    JournalError and the next one works on a new connection.
    """
    a = PostgreSQLJournal(reactor, pgDSN)
    b = PostgreSQLJournal(reactor, pgDSN)
    a.open()
    b.open()
    heard = Events()
    a.listen(heard)
    try:
        assert a._listener is not None
        terminate(pgDSN, a._listener.connection.info.backend_pid)
        await heard.wait("resync")
        await b.submit(newJob("x"))
        assert await heard.wait("due") == NOW
        writer = await a._writer.run(lambda db, batch: db.raw.info.backend_pid)
        terminate(pgDSN, writer)
        with pytest.raises(JournalError, match=r"terminat|closed|lost"):
            await a.get("x")
        job = await a.get("x")
        assert job is not None and job.state == "queued"
    finally:
        await gatherResults([a.close(), b.close()])


@pytest_twisted.ensureDeferred
async def test_mergedOperationsFailAlone(pgDSN: str) -> None:
    """
    Submits, ends and reads made in one reactor pass are each done in one
    statement; one bad item among them (a key PostgreSQL cannot store)
    fails alone, with a JournalError, and the others are recorded; a read
    queued after writes sees them.
    """
    journal = PostgreSQLJournal(reactor, pgDSN)
    journal.open()
    try:
        submits = [journal.submit(newJob(f"j{n}", key=f"k{n}")) for n in range(50)]
        bad = journal.submit(newJob("bad", key="nul\x00key"))
        read = journal.get("j49")
        outcomes = await gatherResults(submits)
        assert all(new for _, new in outcomes)
        with pytest.raises(JournalError, match=r"NUL|0x00"):
            await bad
        job = await read
        assert job is not None and job.key == "k49"
        assert journal.counts()["queued"] == 50
        assert journal._writer.commits < 10, journal._writer.commits
        claimed = (await journal.claim(100, NOW)).jobs
        ends = [
            journal.finish(j.id, "succeeded", NOW, NOW + 9, result="1") for j in claimed
        ]
        assert await gatherResults(ends) == [True] * 50
        assert journal.counts()["succeeded"] == 50
        assert (await journal.get("j0")).state == "succeeded"
        assert await journal.get("bad") is None
    finally:
        await journal.close()


def test_aServerRunsItsOwnJobsUnlessAskedForHelp(
    two: tuple[PostgreSQLJournal, PostgreSQLJournal],
) -> None:
    """
    A job due now is claimed by the server it was submitted to; another
    server takes it only once it waited for a heartbeat's interval, or
    right away after that server asked for help (its notification); its
    claim then says when to look again, not "now" (no busy loop).
    """
    a, b = two
    grace = a.serverTimeout / 5
    value(a.submit(newJob("x")))
    value(a.submit(newJob("y")))
    claimed = value(b.claim(5, NOW))
    assert claimed.jobs == [] and claimed.nextRunAt == NOW + grace
    b._notified("taskservice_jobs", f"{NOW!r} {b.serverId}")
    assert value(b.claim(5, NOW)).jobs == []
    b.reactor.advance(NOW)
    b._notified("taskservice_jobs", f"{NOW!r} {a.serverId}")
    assert [j.id for j in value(b.claim(1, NOW)).jobs] == ["x"]
    assert value(b.claim(5, NOW)).jobs == []
    assert [j.id for j in value(b.claim(5, NOW + grace)).jobs] == ["y"]


def test_helpingLooksAgainSoonForALockedJob(
    pgDSN: str, two: tuple[PostgreSQLJournal, PostgreSQLJournal]
) -> None:
    """
    A server helping another finds the job it was told of locked by that
    server's transaction (its caller's watch, say): it looks again in 50
    ms, still helping, not after the grace.
    """
    a, b = two
    value(a.submit(newJob("x")))
    with psycopg.connect(pgDSN) as holder:
        holder.execute("SELECT 1 FROM taskservice_jobs WHERE id = 'x' FOR UPDATE")
        b.reactor.advance(NOW)
        b._notified("taskservice_jobs", f"{NOW!r} {a.serverId}")
        claimed = value(b.claim(5, NOW))
        assert claimed.jobs == [] and claimed.nextRunAt == NOW + 0.05
        holder.rollback()
    assert b._helping
    assert [j.id for j in value(b.claim(5, NOW + 0.05)).jobs] == ["x"]


@pytest_twisted.ensureDeferred
async def test_aWakeDuringAClaimIsNotLost(pgDSN: str) -> None:
    """
    A notification that jobs are due, arriving while a claim is under way
    (which may have read the queue before they were committed), makes that
    claim say "look again now" rather than leave them for the next
    heartbeat.
    """
    journal = PostgreSQLJournal(reactor, pgDSN)
    journal.open()
    try:
        idle = await journal.claim(5, NOW)
        assert idle.nextRunAt is None
        under = journal.claim(5, NOW)
        journal._notified("taskservice_jobs", f"{reactor.seconds()!r} other")
        claimed = await under
        assert claimed.jobs == []
        assert claimed.nextRunAt is not None
        assert claimed.nextRunAt <= reactor.seconds()
        assert (await journal.claim(5, NOW)).nextRunAt is None
    finally:
        await journal.close()


@pytest_twisted.ensureDeferred
async def test_aTickOfThreeServersRunsOnce(pgDSN: str) -> None:
    """
    Three servers recording the same schedule's tick at the same moment:
    one of them records it with its job; the others get nothing, and no
    other job is written.
    """
    servers = [PostgreSQLJournal(reactor, pgDSN) for _ in range(3)]
    for journal in servers:
        journal.open()
    try:
        tick = NOW + 300
        outcomes = await gatherResults(
            [
                journal.recordTick(
                    "report",
                    tick,
                    NewJob(
                        f"t{n}",
                        "echo",
                        "null",
                        "cron:report:x",
                        1,
                        1.0,
                        None,
                        tick,
                        NOW,
                    ),
                )
                for n, journal in enumerate(servers)
            ]
        )
        assert sum(o is not None for o in outcomes) == 1, outcomes
        with psycopg.connect(pgDSN) as db:
            assert db.execute("SELECT count(*) FROM taskservice_jobs").fetchone() == (
                1,
            )
    finally:
        await gatherResults([journal.close() for journal in servers])


@pytest_twisted.ensureDeferred
async def test_aGroupIsOneRoundTrip(pgDSN: str) -> None:
    """
    Submits (run here, and waiting), a claim and a read queued in one
    reactor pass go to the server in one round trip, the commit's: the
    writer's connection pipelines BEGIN, the statements, the wake-up
    notification and COMMIT, and reads their results after.
    """
    journal = PostgreSQLJournal(reactor, pgDSN)
    journal.open()
    try:
        trips = lambda db, batch: db.roundTrips  # noqa: E731
        before = await journal._writer.run(trips)
        submits = [journal.submit(newJob(f"r{n}"), running=True) for n in range(20)]
        submits += [journal.submit(newJob(f"q{n}")) for n in range(5)]
        claimed = journal.claim(3, NOW)
        read = journal.get("r0")
        outcomes = await gatherResults(submits)
        assert [new for _, new in outcomes] == [True] * 25
        assert len((await claimed).jobs) == 3
        job = await read
        assert job is not None and job.state == "running"
        assert await journal._writer.run(trips) - before == 1
        ends = [
            journal.finish(f"r{n}", "succeeded", NOW, NOW + 9, result="1")
            for n in range(20)
        ]
        assert await gatherResults(ends) == [True] * 20
        assert await journal._writer.run(trips) - before == 2
        assert journal.counts()["succeeded"] == 20
    finally:
        await journal.close()


@pytest_twisted.ensureDeferred
async def test_anItemRefusedByTheServerFailsAlone(pgDSN: str) -> None:
    """
    An item the server refuses (a job id already taken: found only when the
    pipelined group reaches the server, at its commit) fails alone, with a
    JournalError; the other items of its group are recorded.
    """
    journal = PostgreSQLJournal(reactor, pgDSN)
    journal.open()
    try:
        await journal.submit(newJob("taken"))
        submits = [journal.submit(newJob(f"j{n}")) for n in range(10)]
        again = journal.submit(newJob("taken"))
        ends = [journal.finish("nope", "succeeded", NOW, NOW + 9, result="1")]
        assert all(new for _, new in await gatherResults(submits))
        with pytest.raises(JournalError, match=r"duplicate key|unique"):
            await again
        assert await gatherResults(ends) == [False]
        assert journal.counts()["queued"] == 11
        assert (await journal.get("j9")).state == "queued"
    finally:
        await journal.close()


@pytest_twisted.ensureDeferred
async def test_anEndTellsWatchersItsLastProgress(pgDSN: str) -> None:
    """
    The end of a job watched from another server reaches it with the job's
    last progress (made by the ending statement itself, in the pipeline),
    or without it when it would not fit in a notification; the server that
    ended it is not told.
    """
    a = PostgreSQLJournal(reactor, pgDSN)
    b = PostgreSQLJournal(reactor, pgDSN)
    a.open()
    b.open()
    heardA, heardB = Events(), Events()
    a.listen(heardA)
    b.listen(heardB)
    try:
        for jobId in ("x", "big"):
            await a.submit(newJob(jobId))
        assert len((await a.claim(2, NOW)).jobs) == 2
        assert (await b.watch("x")) is not None
        assert (await a.watch("x")) is not None
        assert (await b.watch("big")) is not None
        await a.finish("x", "succeeded", NOW, NOW + 9, result="7", progress={"done": 2})
        assert await heardB.wait("progressed") == ("x", {"done": 2})
        assert await heardB.wait("ended") == "x"
        await a.finish(
            "big", "succeeded", NOW, NOW + 9, result="7", progress={"s": "x" * 8000}
        )
        assert await heardB.wait("ended") == "big"
        assert [k for k, _ in heardB.heard].count("progressed") == 0
        assert [k for k, _ in heardA.heard if k in ("ended", "progressed")] == []
    finally:
        await gatherResults([a.close(), b.close()])
