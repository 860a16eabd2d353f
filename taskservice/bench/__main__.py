"""
``python -m taskservice.bench [--runs N] [--quick] [--write PATH]``

Runs each scenario and its in-run baseline interleaved, several times, and
prints medians with their spread (min-max) and the ratio to the baseline:
these machines are shared and noisy, so only same-run ratios mean much.
With ``--write`` the table goes into a Markdown page (docs/benchmarks.md),
which the Sphinx page docs/benchmarks.rst includes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from taskservice.bench._burst import burstScenario
from taskservice.bench._jobs import jobsScenario
from taskservice.bench._memory import memoryScenario
from taskservice.bench._pgjobs import pgjobsScenario
from taskservice.bench._stats import Summary, mergeSection, percentile, table
from taskservice.bench._tcp import tcpScenario
from taskservice.bench._wsload import wsloadScenario
from taskservice.examples import echo

POOL_SIZE = 2
WINDOW = 200


# The baselines' worker processes must not be forked from this process: they
# would inherit Twisted's signal handlers and ignore Pool.terminate().
_CONTEXT = "forkserver"
_echo = echo


def latency(samples: list[float], withMax: bool = False) -> str:
    """
    C{"p50 … ms, p99 … ms"} (and the maximum) of round-trip samples.
    """
    text = (
        f"p50 {percentile(samples, 0.5) * 1e3:.3f} ms,"
        f" p99 {percentile(samples, 0.99) * 1e3:.3f} ms"
    )
    if withMax:
        text += f", max {max(samples) * 1e3:.1f} ms"
    return text


def ratio(ours: float, theirs: float, what: str = "") -> str:
    return f"{ours / theirs:.2f}x{f' ({what})' if what else ''}"


# -- baselines -----------------------------------------------------------------


def mpThroughput(total: int) -> float:
    with multiprocessing.get_context(_CONTEXT).Pool(POOL_SIZE) as pool:
        pool.apply(_echo, (0,))
        return _throughputWithPool(
            lambda value, done: pool.apply_async(
                _echo, (value,), callback=done, error_callback=done
            ),
            total,
        )


def executorThroughput(total: int) -> float:
    context = multiprocessing.get_context(_CONTEXT)
    with concurrent.futures.ProcessPoolExecutor(POOL_SIZE, mp_context=context) as ex:
        ex.submit(_echo, 0).result()
        return _throughputWithPool(
            lambda value, done: ex.submit(_echo, value).add_done_callback(done),
            total,
        )


def _throughputWithPool(submit: Callable[[int, Any], object], total: int) -> float:
    slots = threading.Semaphore(WINDOW)
    finished = threading.Event()
    remaining = [total]
    lock = threading.Lock()

    def done(_: object) -> None:
        slots.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                finished.set()

    started = time.perf_counter()
    for i in range(total):
        slots.acquire()
        submit(i, done)
    finished.wait()
    return total / (time.perf_counter() - started)


def mpSequential(count: int) -> list[float]:
    with multiprocessing.get_context(_CONTEXT).Pool(POOL_SIZE) as pool:
        pool.apply(_echo, (0,))
        samples = []
        for i in range(count):
            started = time.perf_counter()
            pool.apply(_echo, (i,))
            samples.append(time.perf_counter() - started)
        return samples


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


Rows = list[list[str]]


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


async def main(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from taskservice.client import TaskClient
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory

    runs = options.runs
    total = 5_000 if options.quick else 20_000
    count = 1_000 if options.quick else 5_000
    rows: Rows = []
    notes: list[str] = []

    pool = ProcessPool(reactor, ["taskservice.examples"], size=POOL_SIZE)
    pool.startService()
    await pool.whenReady()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        TaskServerFactory(pool)
    )
    client = TaskClient(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
    client.startService()
    await client.call("echo", 0)
    scenarios: dict[str, Callable[[], Awaitable[None]]] = {
        "pool": lambda: throughputScenario(pool, runs, total, rows),
        "sequential": lambda: sequentialScenario(pool, client, count, rows),
        "failure": lambda: failureScenario(reactor, pool, rows),
        "recycling": lambda: recyclingScenario(
            reactor, pool, runs, count // 2, rows, notes
        ),
        "payload": lambda: payloadScenario(reactor, client, rows),
        "email": lambda: websocketScenario(reactor, min(runs, 3), rows),
        "tcp": lambda: tcpScenario(runs, options.quick, rows, notes),
        "wsload": lambda: wsloadScenario(runs, options.quick, rows, notes),
        "burst": lambda: burstScenario(reactor, runs, options.quick, rows, notes),
        "memory": lambda: memoryScenario(reactor, runs, options.quick, rows, notes),
        "jobs": lambda: jobsScenario(reactor, runs, options.quick, rows, notes),
        "pgjobs": lambda: pgjobsScenario(runs, options.quick, rows, notes),
    }
    unknown = set(options.only or ()) - scenarios.keys()
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(scenarios)}"
        )
    try:
        for name, scenario in scenarios.items():
            if not options.only or name in options.only:
                await scenario()
    finally:
        await client.stopService()
        await port.stopListening()
        await pool.stopService()

    header = [
        "scenario",
        "taskservice (median, min-max)",
        "baseline (same run)",
        "ratio",
    ]
    report = table(header, rows)
    machine = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {platform.platform()}, runs={runs}, calls per throughput run={total}"
    )
    print(machine)
    print(report)
    for note in notes:
        print(note)
    if options.write:
        _write(options.write, options.only, machine, report, notes)


def _write(
    path: str, only: list[str] | None, machine: str, report: str, notes: list[str]
) -> None:
    """
    A full run writes the whole page; a run of some scenarios (C{--only})
    writes only its own section of it, kept apart from the full run's table
    (and replaced by the next run of the same scenarios), so that the other
    scenarios' figures are never those of a partial run.
    """
    if not only:
        text = _document(machine, report, notes)
    else:
        try:
            with open(path) as f:
                existing = f.read()
        except FileNotFoundError:
            existing = "# Benchmarks\n"
        text = mergeSection(
            existing, _sectionName(only), _section(only, machine, report, notes)
        )
    with open(path, "w") as f:
        f.write(text)


def _sectionName(only: list[str]) -> str:
    return " ".join(f"--only {name}" for name in sorted(set(only)))


def _section(only: list[str], machine: str, report: str, notes: list[str]) -> str:
    from twisted import __version__ as twisted

    name = _sectionName(only)
    return (
        f"## `{name}`\n\n"
        f"Latest results of `python -m taskservice.bench {name} --write"
        " docs/benchmarks.md`, a run of only these scenarios (later than the"
        " table above if they appear in it too; the next full run replaces this"
        f" section).\n\nMachine: {machine}, Twisted {twisted}.\n\n"
        + report
        + "\n\n"
        + "".join(f"- {note}\n" for note in notes)
    )


def _document(machine: str, report: str, notes: list[str]) -> str:
    from twisted import __version__ as twisted

    return (
        "# Benchmarks\n\n"
        "Latest results of `python -m taskservice.bench --write"
        " docs/benchmarks.md` (generated: do not edit by hand). Each"
        " scenario runs beside its baseline in the same run, interleaved;"
        " throughput is the median of the runs with their min-max, latencies"
        " are percentiles over all samples. Compare ratios, not absolute"
        " figures: the machine is shared and noisy.\n\n"
        f"Machine: {machine}, Twisted {twisted}.\n\n"
        + report
        + "\n\n"
        + "".join(f"- {note}\n" for note in notes)
    )


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m taskservice.bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", metavar="PATH")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="run only this scenario (repeatable)",
    )
    options = parser.parse_args(argv)

    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))


if __name__ == "__main__":
    run(sys.argv[1:])
