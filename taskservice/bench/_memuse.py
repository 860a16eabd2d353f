"""
The memory scenario's resident sets (see L{taskservice.bench._memory}):
C{twistd -n taskservice} and its workers idle, beside a bare Autobahn
server, C{multiprocessing.Pool} workers and a bare C{python}; and the same
processes before and after many calls.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskservice._twistdprocess import Twistd
from taskservice.bench._baselines import MP_CONTEXT
from taskservice.bench._memprobe import (
    MIB,
    childrenOf,
    mib,
    percentChange,
    residentBytes,
    uniqueBytes,
)
from taskservice.bench._stats import Rows, Summary, verdict
from taskservice.examples import echo as _echo
from taskservice.examples import sleep as _sleep

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

WORKERS = 2
WARM_UP = 1_000
WINDOW = 200
SETTLE = 0.5
WORKER_TARGET = 30 * MIB
PARENT_TARGET = 100 * MIB
GROWTH_TARGET = 5.0
HOST = "127.0.0.1"


# -- processes to measure ------------------------------------------------------


@contextmanager
def twistdTaskservice(workdir: Path) -> Iterator[Twistd]:
    """
    C{twistd -n taskservice} as a user runs it (gateway, SMTP sink, a pool
    of L{WORKERS}), on free loopback ports, once its task server and
    gateway answer; its output appended to C{twistd.log}.
    """
    with Twistd(
        workdir, "--workers", str(WORKERS), log=workdir / "twistd.log"
    ) as server:
        try:
            server.ready("websocket", "listen")
            yield server
        finally:
            server.stop(graceful=30)


@contextmanager
def bareAutobahn(workdir: Path) -> Iterator[int]:
    """
    The naive websocket server of the e-mail scenario (Autobahn on Twisted,
    nothing else): its pid.
    """
    from taskservice.bench._websocket import NAIVE_SERVER, stop, waitForPort
    from taskservice.testing import freePort

    script = workdir / "naive.py"
    script.write_text(NAIVE_SERVER)
    port = freePort()
    process = subprocess.Popen(
        [sys.executable, str(script), str(port), "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waitForPort(port, process)
        yield process.pid
    finally:
        stop(process)


@contextmanager
def barePython() -> Iterator[int]:
    """
    An idle bare interpreter (blocked reading its stdin): its pid.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        yield process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()


@contextmanager
def mpPool(workers: int) -> Iterator[tuple[Any, list[int]]]:
    """
    A C{multiprocessing.Pool} whose workers each ran C{examples} tasks, and
    their pids.
    """
    before = {p.pid for p in multiprocessing.active_children()}
    with multiprocessing.get_context(MP_CONTEXT).Pool(workers) as pool:
        pool.map(_sleep, [0.02] * (4 * workers), chunksize=1)
        pids = sorted(
            p.pid
            for p in multiprocessing.active_children()
            if p.pid is not None and p.pid not in before
        )
        yield pool, pids


async def whenWorkersReady(reactor: Any, client: Any, workers: int) -> None:
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = await client.request("$/stats")
        if stats["workers"]["idle"] == workers and not stats["workers"]["starting"]:
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError("the workers did not become ready")


async def callMany(call: Callable[[int], Deferred[Any]], total: int) -> float:
    """
    C{total} calls, L{WINDOW} in flight: seconds taken.
    """
    from twisted.internet.defer import Deferred

    finished: Deferred[None] = Deferred()
    state = {"sent": 0, "done": 0}

    def send() -> None:
        state["sent"] += 1
        call(state["sent"]).addCallbacks(complete, finished.errback)

    def complete(_: object) -> None:
        state["done"] += 1
        if state["sent"] < total:
            send()
        elif state["done"] == total and not finished.called:
            finished.callback(None)

    started = time.perf_counter()
    for _ in range(min(WINDOW, total)):
        send()
    await finished
    return time.perf_counter() - started


# -- resident sets -------------------------------------------------------------


@dataclass
class Idle:
    """
    Resident and private bytes of each kind of process, over the runs.
    """

    parent: list[int]
    parentUnique: list[int]
    workers: list[int]
    workersUnique: list[int]
    autobahn: list[int]
    mpWorkers: list[int]
    mpWorkersUnique: list[int]
    python: list[int]


async def idleMemory(reactor: Any, runs: int, workdir: Path) -> Idle:
    from twisted.internet.task import deferLater

    from taskservice.client import TaskClient

    idle = Idle([], [], [], [], [], [], [], [])
    for _ in range(runs):
        with twistdTaskservice(workdir) as twistd:
            client = TaskClient(reactor, f"tcp:{HOST}:{twistd.port}")
            client.startService()
            try:
                await whenWorkersReady(reactor, client, WORKERS)
            finally:
                await client.stopService()
            await deferLater(reactor, SETTLE, lambda: None)
            pid = twistd.process.pid
            workers = childrenOf(pid)
            if len(workers) != WORKERS:
                raise RuntimeError(f"twistd has children {workers}")
            idle.parent.append(residentBytes(pid))
            idle.parentUnique.append(uniqueBytes(pid))
            idle.workers += [residentBytes(w) for w in workers]
            idle.workersUnique += [uniqueBytes(w) for w in workers]
        with bareAutobahn(workdir) as autobahn:
            idle.autobahn.append(residentBytes(autobahn))
        with mpPool(WORKERS) as (_, pids):
            idle.mpWorkers += [residentBytes(p) for p in pids]
            idle.mpWorkersUnique += [uniqueBytes(p) for p in pids]
        with barePython() as python:
            idle.python.append(residentBytes(python))
    return idle


def idleRows(idle: Idle, runs: int, rows: Rows, notes: list[str]) -> None:
    def show(values: list[int]) -> str:
        s = Summary.of([v / MIB for v in values])
        return s.show("MiB", 1)

    parent = statistics.median(idle.parent)
    worker = statistics.median(idle.workers)
    rows.append(
        [
            f"idle RSS, twistd taskservice parent (gateway, SMTP sink, pool of"
            f" {WORKERS}; {runs} starts; target <= {PARENT_TARGET // MIB} MiB)",
            f"{show(idle.parent)}; private {show(idle.parentUnique)}",
            f"bare Autobahn websocket server on Twisted {show(idle.autobahn)}",
            f"{parent / statistics.median(idle.autobahn):.2f}x (ours/bare)",
        ]
    )
    rows.append(
        [
            f"idle RSS per worker (taskservice.examples; target <="
            f" {WORKER_TARGET // MIB} MiB)",
            f"{show(idle.workers)}; private {show(idle.workersUnique)}",
            f"multiprocessing.Pool worker ({MP_CONTEXT}, ran examples)"
            f" {show(idle.mpWorkers)}; private {show(idle.mpWorkersUnique)}",
            f"{worker / statistics.median(idle.mpWorkers):.2f}x (ours/mp)",
        ]
    )
    rows.append(
        [
            "",
            "",
            f"idle bare python {show(idle.python)}",
            f"{worker / statistics.median(idle.python):.2f}x (ours/python)",
        ]
    )
    notes.append(
        f"idle RSS: parent {mib(parent)}, target <= {PARENT_TARGET // MIB} MiB:"
        f" {verdict(parent <= PARENT_TARGET)}; worker {mib(worker)}, target <="
        f" {WORKER_TARGET // MIB} MiB: {verdict(worker <= WORKER_TARGET)}"
    )


def growth(before: int, after: int) -> str:
    return f"{mib(before)} -> {mib(after)} ({percentChange(before, after):+.1f}%)"


async def memoryUnderLoad(
    reactor: Any, calls: int, workdir: Path, rows: Rows, notes: list[str]
) -> None:
    from twisted.internet.task import deferLater

    from taskservice.client import TaskClient

    with twistdTaskservice(workdir) as twistd:
        client = TaskClient(reactor, f"tcp:{HOST}:{twistd.port}")
        client.startService()
        try:
            await whenWorkersReady(reactor, client, WORKERS)
            pid = twistd.process.pid
            workers = childrenOf(pid)
            await callMany(lambda i: client.call("echo", i), WARM_UP)
            await deferLater(reactor, SETTLE, lambda: None)
            before = {p: residentBytes(p) for p in [pid, *workers]}
            elapsed = await callMany(lambda i: client.call("echo", i), calls)
            await deferLater(reactor, SETTLE, lambda: None)
            after = {p: residentBytes(p) for p in [pid, *workers]}
            if childrenOf(pid) != workers:
                raise RuntimeError("workers were replaced during the run")
        finally:
            await client.stopService()
    with mpPool(WORKERS) as (pool, pids):
        pool.map(_echo, range(WARM_UP), chunksize=1)
        mpBefore = {p: residentBytes(p) for p in pids}
        pool.map(_echo, range(calls), chunksize=1)
        mpAfter = {p: residentBytes(p) for p in pids}
    rows.append(
        [
            f"RSS before -> after {calls:,} echo calls over TCP"
            f" ({WARM_UP:,} warm-up calls first; target within"
            f" {GROWTH_TARGET:g}%), parent",
            growth(before[pid], after[pid]),
            "-",
            f"{calls / elapsed:,.0f} calls/s",
        ]
    )
    rows.append(
        [
            "same, each worker",
            "; ".join(growth(before[w], after[w]) for w in workers),
            "multiprocessing.Pool workers, as many map() calls: "
            + "; ".join(growth(mpBefore[p], mpAfter[p]) for p in pids),
            "-",
        ]
    )
    worst = max(percentChange(before[p], after[p]) for p in before)
    notes.append(
        f"RSS growth over {calls:,} calls: at most {worst:+.1f}%, target within"
        f" {GROWTH_TARGET:g}%: {verdict(worst <= GROWTH_TARGET)}"
    )
