"""
Scenario 3 of issue 6: a heavy burst, every call sent at once.

- 1,000 calls of the blocking ``sleep(0.05)`` example task on 10 workers
  (ideal 5.0 s: 100 rounds of 50 ms), through the pool and through the TCP
  task server, against C{multiprocessing.Pool(10).apply_async} of the same
  function in the same run.
- 1,000 calls of an C{async def} 50 ms sleep (L{taskservice.bench._tasks})
  on 2 workers, with the default C{--worker-concurrency} (100: at most 200
  at once, so 5 rounds, floor 0.25 s) and with 500 (all 1,000 at once, floor
  0.05 s: what a user expecting this burst would set), against
  C{asyncio.gather} of 1,000 C{asyncio.sleep(0.05)} in one plain process.

The blocking burst takes over 5 s a run for each contender, so it runs at
most 3 times; the async one runs C{runs} times.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskservice.bench._baselines import MP_CONTEXT
from taskservice.bench._stats import Rows, Summary
from taskservice.examples import sleep as _sleep

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

BURST = 1_000
QUICK_BURST = 200
SLEEP = 0.05
BLOCKING_WORKERS = 10
ASYNC_WORKERS = 2
USER_CONCURRENCY = 500
"""The C{--worker-concurrency} a user sending bursts of 1,000 coroutine calls
to 2 workers would pick: every call of the burst runs at once."""
BLOCKING_RUNS = 3
BLOCKING_TARGET = 1.05
"""Within 5% of the ideal."""
ASYNC_TARGET = 0.3
WORKERMAN_FAQ = 12.6
"""Seconds the Workerman FAQ's pool took for the blocking burst here."""


def idealSeconds(calls: int, seconds: float, atOnce: int) -> float:
    """
    The shortest possible time for C{calls} calls of C{seconds} each, at
    most C{atOnce} running at a time.
    """
    return -(-calls // atOnce) * seconds


async def burst(submit: Callable[[], Deferred[Any]], count: int) -> float:
    """
    Seconds from the first of C{count} submits (all made at once) to the
    last result.
    """
    from twisted.internet.defer import gatherResults

    started = time.perf_counter()
    results = await gatherResults([submit() for _ in range(count)], consumeErrors=True)
    elapsed = time.perf_counter() - started
    if len(results) != count:
        raise RuntimeError(f"{len(results)} results for {count} calls")
    return elapsed


def mpBurst(pool: Any, count: int, seconds: float) -> float:
    started = time.perf_counter()
    pending = [pool.apply_async(_sleep, (seconds,)) for _ in range(count)]
    for result in pending:
        result.get()
    return time.perf_counter() - started


def asyncioFloor(count: int, seconds: float) -> float:
    """
    C{asyncio.gather} of C{count} sleeps in this process, on a fresh loop
    (this thread runs no asyncio loop: the bench runs Twisted's own
    reactor).
    """

    async def gather() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(asyncio.sleep(seconds) for _ in range(count)))
        return time.perf_counter() - started

    return asyncio.run(gather())


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "MISSED"


async def blockingBurst(
    reactor: Any, runs: int, count: int, rows: Rows, notes: list[str]
) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from taskservice.client import TaskClient
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory

    ideal = idealSeconds(count, SLEEP, BLOCKING_WORKERS)
    pool = ProcessPool(reactor, ["taskservice.examples"], size=BLOCKING_WORKERS)
    pool.startService()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        TaskServerFactory(pool)
    )
    client = TaskClient(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
    client.startService()
    mpPool = multiprocessing.get_context(MP_CONTEXT).Pool(BLOCKING_WORKERS)
    ours: list[float] = []
    tcp: list[float] = []
    mp: list[float] = []
    try:
        await pool.whenReady()
        await client.call("sleep", 0)
        mpPool.map(_sleep, [SLEEP] * BLOCKING_WORKERS, chunksize=1)
        for _ in range(runs):
            ours.append(await burst(lambda: pool.submit("sleep", (SLEEP,)), count))
            tcp.append(await burst(lambda: client.call("sleep", SLEEP), count))
            mp.append(mpBurst(mpPool, count, SLEEP))
    finally:
        mpPool.terminate()
        mpPool.join()
        await client.stopService()
        await port.stopListening()
        await pool.stopService()
    o, t, m = Summary.of(ours), Summary.of(tcp), Summary.of(mp)
    name = (
        f"burst: {count:,} x blocking 50 ms at once, {BLOCKING_WORKERS} workers"
        f" (ideal {ideal:.2f} s, target <= {ideal * BLOCKING_TARGET:.2f} s)"
    )
    rows.append(
        [
            f"{name}, pool",
            o.show("s", 2),
            f"multiprocessing.Pool({BLOCKING_WORKERS}).apply_async {m.show('s', 2)}",
            f"{m.median / o.median:.2f}x (mp/ours); {o.median / ideal:.3f} of ideal",
        ]
    )
    rows.append(
        [
            "same burst through TCP (TaskClient, one connection)",
            t.show("s", 2),
            "",
            f"{m.median / t.median:.2f}x (mp/ours); {t.median / ideal:.3f} of ideal",
        ]
    )
    notes.append(
        f"blocking burst: pool median {o.median:.2f} s, TCP {t.median:.2f} s,"
        f" target <= {ideal * BLOCKING_TARGET:.2f} s:"
        f" {verdict(max(o.median, t.median), ideal * BLOCKING_TARGET)};"
        f" {runs} runs (each contender takes over {ideal:.0f} s a run)."
        + (
            f" Reference: the Workerman FAQ's pool took {WORKERMAN_FAQ} s for"
            " the same 1,000 x 50 ms on 10 workers here."
            if count == BURST
            else ""
        )
    )


def _asyncSleeper(pool: Any) -> Callable[[], Deferred[Any]]:
    return lambda: pool.submit("async_sleep", (SLEEP,))


async def asyncBurst(
    reactor: Any, runs: int, count: int, rows: Rows, notes: list[str]
) -> None:
    from taskservice.pool import DEFAULT_CONCURRENCY, ProcessPool

    pools = {
        concurrency: ProcessPool(
            reactor,
            ["taskservice.bench._tasks"],
            size=ASYNC_WORKERS,
            concurrency=concurrency,
        )
        for concurrency in (DEFAULT_CONCURRENCY, USER_CONCURRENCY)
    }
    times: dict[int, list[float]] = {concurrency: [] for concurrency in pools}
    floor: list[float] = []
    try:
        for pool in pools.values():
            pool.startService()
        for pool in pools.values():
            await pool.whenReady()
            await pool.submit("async_sleep", (0,))
        for _ in range(runs):
            for concurrency, pool in pools.items():
                times[concurrency].append(await burst(_asyncSleeper(pool), count))
            floor.append(asyncioFloor(count, SLEEP))
    finally:
        for pool in pools.values():
            await pool.stopService()
    f = Summary.of(floor)
    for concurrency, samples in times.items():
        o = Summary.of(samples)
        ideal = idealSeconds(count, SLEEP, concurrency * ASYNC_WORKERS)
        default = " (default)" if concurrency == DEFAULT_CONCURRENCY else ""
        rows.append(
            [
                f"burst: {count:,} x async 50 ms sleep at once, {ASYNC_WORKERS}"
                f" workers, --worker-concurrency {concurrency}{default}"
                f" (ideal {ideal:.2f} s)",
                o.show("s", 3),
                f"asyncio.gather in one process {f.show('s', 3)} (ideal {SLEEP:.2f} s)",
                f"{o.median / f.median:.2f}x of the floor;"
                f" {o.median / ideal:.2f} of ideal",
            ]
        )
        notes.append(
            f"async burst, --worker-concurrency {concurrency}: median"
            f" {o.median:.3f} s, target <= {ASYNC_TARGET} s:"
            f" {verdict(o.median, ASYNC_TARGET)}"
        )


async def burstScenario(
    reactor: Any, runs: int, quick: bool, rows: Rows, notes: list[str]
) -> None:
    """
    Scenario 3: the blocking burst (at most L{BLOCKING_RUNS} runs, a fifth
    of the calls with C{quick}) and the async burst (C{runs} runs).
    """
    count = QUICK_BURST if quick else BURST
    await blockingBurst(reactor, min(runs, BLOCKING_RUNS), count, rows, notes)
    await asyncBurst(reactor, runs, BURST, rows, notes)
