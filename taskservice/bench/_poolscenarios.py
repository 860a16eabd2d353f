"""
The scenarios of issue 6 that run on the bench's own pool and task server
(see L{taskservice.bench.__main__}): throughput beside C{multiprocessing}
(L{taskservice.bench._baselines}), sequential round trips, how fast a caller
hears of a worker's death or its deadline, recycling, a 10 MB payload, and
the e-mail scenario through the websocket gateway.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from taskservice.bench._baselines import (
    POOL_SIZE,
    WINDOW,
    executorThroughput,
    mpSequential,
    mpThroughput,
)
from taskservice.bench._stats import Rows, Summary, latency, percentile, ratio

# -- ours ------------------------------------------------------------------------


async def poolThroughput(pool: Any, total: int) -> float:
    from twisted.internet.defer import Deferred

    finished: Deferred[None] = Deferred()
    state = {"sent": 0, "done": 0}

    def send() -> None:
        i = state["sent"]
        state["sent"] += 1
        pool.submit("echo", (i,)).addBoth(complete)

    def complete(_: object) -> None:
        state["done"] += 1
        if state["sent"] < total:
            send()
        elif state["done"] == total:
            finished.callback(None)

    started = time.perf_counter()
    for _ in range(min(WINDOW, total)):
        send()
    await finished
    return total / (time.perf_counter() - started)


async def sequential(call: Callable[[int], Any], count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    return samples


async def killToError(reactor: Any, pool: Any, count: int) -> list[float]:
    """
    Seconds from SIGKILL of a busy worker to its caller's error.
    """
    from twisted.internet.task import deferLater

    from taskservice.errors import WorkerLost

    samples = []
    for _ in range(count):
        await pool.whenReady()
        d = pool.submit("sleep", (30,))
        while not any(w.calls for w in pool.workers):
            await deferLater(reactor, 0.001, lambda: None)
        victim = next(w for w in pool.workers if w.calls)
        started = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        try:
            await d
        except WorkerLost:
            samples.append(time.perf_counter() - started)
    return samples


async def deadlineToError(pool: Any, count: int, timeout: float = 0.2) -> list[float]:
    """
    Seconds between a call's deadline and its caller's error.
    """
    from taskservice.errors import TimedOut

    samples = []
    for _ in range(count):
        await pool.whenReady()
        started = time.perf_counter()
        try:
            await pool.submit("sleep", (30,), timeout=timeout)
        except TimedOut:
            samples.append(time.perf_counter() - started - timeout)
    return samples


# -- the scenarios -------------------------------------------------------------


async def throughputScenario(pool: Any, runs: int, total: int, rows: Rows) -> None:
    """
    The pool alone, WINDOW calls in flight, interleaved with the baselines.
    """
    ours, mp, executor = [], [], []
    for _ in range(runs):
        ours.append(await poolThroughput(pool, total))
        mp.append(mpThroughput(total))
        executor.append(executorThroughput(total // 4))
    o, m, e = Summary.of(ours), Summary.of(mp), Summary.of(executor)
    rows.append(
        [
            "pool, trivial call, 2 workers, 200 in flight",
            o.show("calls/s"),
            f"multiprocessing.Pool {m.show('calls/s')}",
            ratio(o.median, m.median),
        ]
    )
    rows.append(
        ["", "", f"ProcessPoolExecutor {e.show('calls/s')}", ratio(o.median, e.median)]
    )


async def sequentialScenario(pool: Any, client: Any, count: int, rows: Rows) -> None:
    """
    One call at a time: through the pool, through TCP, and mp.Pool.apply.
    """
    poolSeq = await sequential(lambda i: pool.submit("echo", (i,)), count)
    tcpSeq = await sequential(lambda i: client.call("echo", i), count)
    mpSeq = mpSequential(count)
    for name, samples in (("pool", poolSeq), ("TCP via TaskClient", tcpSeq)):
        rows.append(
            [
                f"sequential round trip, {name}",
                latency(samples),
                f"mp.Pool.apply {latency(mpSeq)}",
                ratio(percentile(mpSeq, 0.5), percentile(samples, 0.5), "p50"),
            ]
        )


async def failureScenario(reactor: Any, pool: Any, rows: Rows) -> None:
    """
    How fast a caller hears of a worker's death and of its deadline.
    """
    for name, samples in (
        (
            "SIGKILL of a busy worker -> caller's error",
            await killToError(reactor, pool, 10),
        ),
        (
            "deadline -> caller's error (worker SIGKILLed)",
            await deadlineToError(pool, 10),
        ),
    ):
        rows.append(
            [
                name,
                f"median {percentile(samples, 0.5) * 1e3:.2f} ms,"
                f" max {max(samples) * 1e3:.2f} ms",
                "-",
                "-",
            ]
        )


async def recyclingScenario(
    reactor: Any, pool: Any, runs: int, count: int, rows: Rows, notes: list[str]
) -> None:
    """
    Sequential latency of a 1 ms task with workers recycled every 100 calls,
    against the same pool size without recycling (1 ms per call gives the
    successors time to boot, so replacements really happen in the run).
    """
    from taskservice.pool import ProcessPool

    await pool.whenReady()
    recycled = ProcessPool(
        reactor, ["taskservice.examples"], size=POOL_SIZE, maxTasksPerChild=100
    )
    recycled.startService()
    await recycled.whenReady()
    plain: list[float] = []
    withRecycling: list[float] = []
    for _ in range(runs):
        plain += await sequential(lambda i: pool.submit("sleep", (0.001,)), count)
        withRecycling += await sequential(
            lambda i: recycled.submit("sleep", (0.001,)), count
        )
    rows.append(
        [
            "1 ms task, workers recycled every 100 calls (sequential)",
            latency(withRecycling, withMax=True),
            f"no recycling {latency(plain, withMax=True)}",
            ratio(percentile(withRecycling, 0.99), percentile(plain, 0.99), "p99"),
        ]
    )
    notes.append(f"recycled workers: {recycled.stats()['restartsByCause']}")
    await recycled.stopService()


async def payloadScenario(reactor: Any, client: Any, rows: Rows) -> None:
    """
    A 10 MB argument echoed back, through the pool and through TCP.
    """
    from taskservice.pool import ProcessPool

    payload = "x" * (10 * 1024 * 1024)
    big = ProcessPool(reactor, ["taskservice.examples"], size=1)
    big.startService()
    await big.whenReady()
    poolBig = await sequential(lambda i: big.submit("echo", (payload,)), 5)
    tcpBig = await sequential(lambda i: client.call("echo", payload), 5)
    await big.stopService()
    rows.append(
        [
            "10 MB argument and result, round trip (median of 5)",
            f"pool {percentile(poolBig, 0.5) * 1e3:.0f} ms,"
            f" TCP {percentile(tcpBig, 0.5) * 1e3:.0f} ms",
            "-",
            "-",
        ]
    )


async def websocketScenario(reactor: Any, runs: int, rows: Rows) -> None:
    """
    A second browser's websocket round trip while 1,000 e-mails go out,
    through twistd taskservice and through a naive inline server.
    """
    from taskservice.bench._websocket import USERS, scenario

    results = await scenario(reactor, runs)
    oursSend = Summary.of([send for send, _ in results["ours"]])
    naiveSend = Summary.of([send for send, _ in results["naive"]])
    oursPings = [p for _, pings in results["ours"] for p in pings]
    naivePings = [p for _, pings in results["naive"] for p in pings]
    rows.append(
        [
            f"{USERS:,} e-mails through the gateway to the SMTP sink",
            oursSend.show("s", 2),
            f"inline in the websocket handler {naiveSend.show('s', 2)}",
            ratio(naiveSend.median, oursSend.median),
        ]
    )
    rows.append(
        [
            "websocket ping on a second connection meanwhile",
            latency(oursPings, withMax=True) + f" ({len(oursPings)} pings)",
            f"inline: {latency(naivePings, withMax=True)} ({len(naivePings)} pings)",
            ratio(percentile(naivePings, 0.99), percentile(oursPings, 0.99), "p99"),
        ]
    )
