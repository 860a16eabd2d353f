"""
The process pool with real worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from taskservice.errors import TaskFailed, TimedOut, TooLarge, WorkerLost
from taskservice.pool import ProcessPool
from tests import pooltasks

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


async def _until(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(
        reactor, ["tests.pooltasks", "taskservice.examples"], size=2, env={"MARK": "x"}
    )
    pool.startService()
    await pool.whenReady()
    yield pool
    await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_roundTrips(pool: ProcessPool) -> None:
    """
    Real workers run plain, renamed, coroutine and CPU-bound tasks, see the
    explicit environment, and run calls in parallel.
    """
    results = await gatherResults(
        [
            pool.submit("add", [2, 3]),
            pool.deferToProcess("renamed.task"),
            pool.deferToProcess(pooltasks.coroutine, 21),
            pool.submit("fib", [20]),
            pool.submit("getenv", ["MARK"]),
        ]
    )
    assert results == [5, "renamed", 42, 6765, "x"]
    pids = await gatherResults([pool.submit("pid") for _ in range(20)])
    assert set(pids) <= {w.pid for w in pool.workers}


@pytest_twisted.ensureDeferred
async def test_errorsAsData(pool: ProcessPool) -> None:
    """
    Exceptions and unserialisable results come back as TaskFailed with the
    type and message; the worker stays in service.
    """
    before = {w.pid for w in pool.workers}
    with pytest.raises(TaskFailed) as raised:
        await pool.submit("fail", ["no luck"])
    assert raised.value.data == {"type": "ValueError", "message": "no luck"}
    with pytest.raises(TaskFailed) as raised:
        await pool.submit("unserialisable")
    assert raised.value.remoteType == "TypeError"
    assert "cannot be sent as JSON" in raised.value.remoteMessage
    assert {w.pid for w in pool.workers} == before


@pytest_twisted.ensureDeferred
async def test_progress(pool: ProcessPool) -> None:
    """
    Progress reported by blocking code in a real worker reaches the caller
    in order, before the result.
    """
    updates: list[dict[str, Any]] = []
    assert await pool.submit("count", [50], onProgress=updates.append) == 50
    assert updates == [{"done": i, "total": 50} for i in range(1, 51)]


@pytest_twisted.ensureDeferred
async def test_crashIsReportedAndReplaced(pool: ProcessPool) -> None:
    """
    A worker that exits mid-task answers WorkerLost with its exit code, is
    replaced, and the pool keeps serving.
    """
    with pytest.raises(WorkerLost) as raised:
        await pool.submit("crash", [7])
    assert raised.value.data == {"exitCode": 7}
    await pool.whenReady()
    assert len(pool.workers) == 2
    assert await pool.submit("add", [1, 1]) == 2


@pytest_twisted.ensureDeferred
async def test_deadlineKillsTheWorker(pool: ProcessPool) -> None:
    """
    A task past its deadline is SIGKILLed: the caller gets TimedOut and the
    process is really gone.
    """
    started = time.monotonic()
    d = pool.submit("hang")  # timeout=0.5
    await _until(lambda: any(w.calls for w in pool.workers))
    victim = next(w.pid for w in pool.workers if w.calls)
    with pytest.raises(TimedOut):
        await d
    assert 0.5 <= time.monotonic() - started < 3
    assert victim is not None
    await _until(lambda: not _alive(victim))
    await pool.whenReady()
    assert await pool.submit("add", [2, 2]) == 4


@pytest_twisted.ensureDeferred
async def test_cancelKillsTheWorker(pool: ProcessPool) -> None:
    """
    Cancelling a running call kills its worker process.
    """
    d = pool.submit("sleep", [30])
    await _until(lambda: any(w.calls for w in pool.workers))
    victim = next(w.pid for w in pool.workers if w.calls)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    assert victim is not None
    await _until(lambda: not _alive(victim))


@pytest_twisted.ensureDeferred
async def test_outputLoggedWithWorkerID(pool: ProcessPool) -> None:
    """
    What a task prints is logged by the parent with the worker's id.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert await pool.submit("chatty", ["ping"]) == "ping"
        await _until(lambda: sum("line" in e for e in events) >= 2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = {(e["log_level"].name, e["line"]) for e in events if "line" in e}
    assert lines == {("info", "out: ping"), ("warn", "err: ping")}
    assert all("workerID" in e for e in events if "line" in e)


def test_childrenExitWhenTheParentDies(tmp_path: Any) -> None:
    """
    If the parent process dies without stopping the pool, its workers exit
    on their own, even in the middle of a task.
    """
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from twisted.internet import reactor
            from taskservice.pool import ProcessPool

            pool = ProcessPool(reactor, ["tests.pooltasks"], size=2)

            def ready(_):
                pool.submit("hang", [60], timeout=60)
                reactor.callLater(0.2, lambda: (
                    print(" ".join(str(w.pid) for w in pool.workers), flush=True),
                    os._exit(0),
                ))

            pool.startService()
            pool.whenReady().addCallback(ready)
            reactor.run()
            """
        )
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        check=True,
    ).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids)


@pytest_twisted.ensureDeferred
async def test_coroutinesRunConcurrently(pool: ProcessPool) -> None:
    """
    Coroutine calls run many at a time in one real worker: naps that started
    while others were still in flight prove it (no timing is asserted).
    """
    seen = await gatherResults([pool.submit("nap", [0.2]) for _ in range(200)])
    assert max(seen) > 10


@pytest_twisted.ensureDeferred
async def test_coroutineTimeoutSparesTheWorker(pool: ProcessPool) -> None:
    """
    A coroutine call past its deadline is cancelled inside the worker, which
    stays alive and keeps its other calls.
    """
    pids = {w.pid for w in pool.workers}
    slow = pool.submit("nap", [30], timeout=0.3)
    others = [pool.submit("nap", [0.5]) for _ in range(3)]
    with pytest.raises(TimedOut):
        await slow
    assert all(isinstance(n, int) for n in await gatherResults(others))
    await _until(lambda: pool.stats()["running"] == 0)
    assert {w.pid for w in pool.workers} == pids
    assert pool.stats()["restartsByCause"] == {}


@pytest_twisted.ensureDeferred
async def test_recyclingLosesNothing() -> None:
    """
    Workers recycled every 5 calls serve 40 calls without a failure, from
    several successive processes (a worker due for replacement serves on
    until its successor is ready: whenReady waits for that).
    """
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=2, maxTasksPerChild=5)
    pool.startService()
    try:
        await pool.whenReady()
        pids = []
        for _ in range(8):
            pids += [await pool.submit("pid") for _ in range(5)]
            await pool.whenReady()
        assert len(set(pids)) >= 8
        assert pool.stats()["restartsByCause"]["recycled"] >= 6
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_memoryCapRecycles() -> None:
    """
    A worker that grows past maxMemory is replaced after the call that grew
    it; that call still succeeds.
    """
    pool = ProcessPool(
        reactor, ["tests.pooltasks"], size=1, maxMemory=120 * 1024 * 1024
    )
    pool.startService()
    try:
        await pool.whenReady()
        fat = await pool.submit("hoard", [200])
        await pool.whenReady()
        assert await pool.submit("pid") != fat
        assert pool.stats()["restartsByCause"] == {"memory": 1}
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_largePayloads() -> None:
    """
    10 MB arguments and results cross the pipes intact; a result over
    maxResult fails with TooLarge and the worker stays in service.
    """
    pool = ProcessPool(
        reactor,
        ["tests.pooltasks", "taskservice.examples"],
        size=1,
        maxResult=20 * 1024 * 1024,
    )
    pool.startService()
    try:
        await pool.whenReady()
        payload = "é" * (5 * 1024 * 1024)  # 10 MB of UTF-8
        assert await pool.submit("echo", [payload]) == payload
        assert len(await pool.submit("big", [10 * 1024 * 1024])) == 10 * 1024 * 1024
        with pytest.raises(TooLarge) as raised:
            await pool.submit("big", [21 * 1024 * 1024])
        assert raised.value.data == {"limit": 20 * 1024 * 1024}
        assert await pool.submit("add", [1, 2]) == 3
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_awaitablesFromPlainTasks(pool: ProcessPool) -> None:
    """
    A plain task returning a coroutine works in a worker running an event
    loop; one returning a Deferred is refused with a clear message (workers
    run no reactor).
    """
    assert await pool.submit("plainReturningCoroutine", [5]) == 6
    with pytest.raises(TaskFailed) as raised:
        await pool.submit("returnsDeferred")
    assert "returned a Deferred" in raised.value.remoteMessage


@pytest_twisted.ensureDeferred
async def test_pipelinedShortCalls() -> None:
    """
    Once measured short, calls of a task are pipelined into busy real
    workers (several per worker at once) and all 2,000 come back right.
    (Short here is under 1 s: on a loaded machine a round trip can pass
    the default 1 ms, which is not what this test is about.)
    """
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=2, shortCall=1.0)
    pool.startService()
    await pool.whenReady()
    try:
        await _pipelines(pool)
    finally:
        await pool.stopService()


async def _pipelines(pool: ProcessPool) -> None:
    for i in range(10):
        assert await pool.submit("add", [i, 1]) == i + 1
    assert pool.isShort("add")
    calls = [pool.submit("add", [i, 1]) for i in range(2000)]
    assert max(len(w.calls) for w in pool.workers) > 1
    assert await gatherResults(calls) == [i + 1 for i in range(2000)]


@pytest.mark.parametrize(
    "modules",
    [
        pytest.param(["tests.tasks"], id="plain-loop"),
        # A concurrent task: the worker runs an event loop (with a reactor).
        pytest.param(["tests.tasks", "tests.deferredtasks"], id="event-loop"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_cancelReachesACallWaitingInTheWorker(
    tmp_path: Any, modules: list[str]
) -> None:
    """
    A cancel for a short call waiting in a real worker's pipe, behind one
    that is running, reaches the worker before that call's turn, even
    behind a frame larger than a pipe holds (a big call pipelined after
    it): it never runs, its caller gets CancelledError, the worker is not
    killed, and the calls around it run in order. In both kinds of worker
    loop.
    """
    pool = ProcessPool(reactor, modules, size=1)
    pool.startService()
    try:
        await pool.whenReady()
        (worker,) = pool.workers
        ran = tmp_path / "ran"
        # Until measured short (under 1 ms a call): a busy machine may
        # need more calls than the five the pool's measure takes.
        for n in range(1000):
            await pool.submit("record", [str(ran), "warm-up"])
            if n >= 20 and pool.isShort("record"):
                break
        assert pool.isShort("record")
        ran.write_text("")
        big = "waiting 2 " + "x" * 300_000
        tags = ["waiting 0", "waiting 1", big]
        running = pool.submit("record", [str(ran), "running", 0.3])
        waiting = [pool.submit("record", [str(ran), tag]) for tag in tags]
        assert len(worker.calls) == 4, "pipelined into the one worker"
        await deferLater(reactor, 0.1, lambda: None)
        waiting[1].cancel()
        with pytest.raises(CancelledError):
            await waiting[1]
        assert await gatherResults([running, waiting[0], waiting[2]]) == [
            "running",
            "waiting 0",
            big,
        ]
        assert ran.read_text().splitlines() == ["running", "waiting 0", big]
        assert pool.workers == {worker}
        assert pool.stats()["restartsByCause"] == {}
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_workerWhoseImportHangsIsKilled() -> None:
    """
    A worker still importing its task modules after C{startTimeout} is
    killed and started again with back-off, until the pool stops; stopping
    ends the one importing at that moment at once (it exits when its
    command pipe closes, import or not).
    """
    env = dict(os.environ, TASKSERVICE_TEST_HANG_IMPORT="1")
    pool = ProcessPool(
        reactor, ["tests.hangingimport"], size=1, env=env, startTimeout=0.3
    )
    pool.startService()
    try:
        await _until(lambda: pool.workerExits["not_ready"] >= 2)
        assert pool.stats()["workers"]["idle"] == 0
        await _until(lambda: pool.stats()["workers"]["starting"] == 1)
    finally:
        started = time.monotonic()
        await pool.stopService()
    assert time.monotonic() - started < 2, "not left to the stop's grace period"


@pytest_twisted.ensureDeferred
async def test_deferredTasksRunConcurrently() -> None:
    """
    Tasks declared @task(concurrent=True) that return Deferreds run on a
    Twisted reactor in their worker, many at once, report progress from
    @inlineCallbacks code, and can be cancelled without killing the worker.
    """
    pool = ProcessPool(reactor, ["tests.deferredtasks"], size=1)
    pool.startService()
    try:
        await pool.whenReady()
        (worker,) = pool.workers
        seen = await gatherResults([pool.submit("later", [0.2]) for _ in range(50)])
        assert max(seen) > 10, "the calls overlapped in one worker"
        updates: list[dict[str, Any]] = []
        assert await pool.submit("countDown", [3], onProgress=updates.append) == 3
        assert [u["done"] for u in updates] == [1, 2, 3]
        slow = pool.submit("later", [30])
        await _until(lambda: pool.stats()["running"] == 1)
        slow.cancel()
        with pytest.raises(CancelledError):
            await slow
        await _until(lambda: pool.stats()["running"] == 0)
        assert pool.workers == {worker}, "cancelled in the worker, not killed"
        assert await pool.submit("pid") == worker.pid
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_jobContextReachesTheTask(pool: ProcessPool) -> None:
    """
    A call submitted with a job context shows it to plain and coroutine
    tasks through taskservice.currentJob(); a plain call sees None, even on
    the worker that just ran a job.
    """
    job = {"id": "j-1", "attempt": 2, "progress": {"done": 3, "total": 9}}
    expected = {"id": "j-1", "attempt": 2, "progress": {"done": 3, "total": 9}}
    assert await pool.submit("jobInfo", job=job) == expected
    assert await pool.submit("asyncJobInfo", job=job) == expected
    assert await gatherResults([pool.submit("jobInfo") for _ in range(4)]) == [None] * 4
    assert await pool.submit("asyncJobInfo") is None


@pytest_twisted.ensureDeferred
async def test_failedSpawnIsRetriedUntilItWorks(tmp_path: Any) -> None:
    """
    A real C{spawnProcess} that fails (here: the pool's python executable
    does not exist yet, which C{posix_spawnp} reports as C{OSError} in the
    parent, as it reports C{EMFILE}) is a failed start, not a worker: the
    pool shows nothing starting, counts C{spawn_failed}, retries with
    back-off, and serves as soon as a spawn works; it stops cleanly.
    """
    python = tmp_path / "python"
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1, python=str(python))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    pool.startService()
    try:
        ready = pool.whenReady()
        await _until(lambda: pool.workerExits["spawn_failed"] >= 2)
        assert pool.workers == frozenset()
        assert pool.stats()["workers"]["starting"] == 0
        assert not ready.called
        python.symlink_to(sys.executable)
        await ready
        assert await pool.submit("add", [1, 2]) == 3
    finally:
        await pool.stopService()
        globalLogPublisher.removeObserver(events.append)
    failed = [e for e in events if e.get("log_format", "").startswith("could not")]
    assert len(failed) == 1, "logged once"
    assert [e for e in events if e["log_level"].name == "critical"] == []
