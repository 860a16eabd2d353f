"""
Scenario 6 of issue 6: what a worker costs to start and to keep, and
whether memory stays flat under load (the 10 MB payload part of the
scenario is C{payload} in C{__main__}).

- Start: a fresh worker from spawn to its ready handshake, timed as a
  size-1 L{ProcessPool}'s C{startService()} to C{whenReady()}; against, in
  the same run and interleaved, a bare C{python -c} spawned the same way
  (until its first byte of output: the interpreter's own start) and a
  C{multiprocessing} C{Pool(1)} (spawn and forkserver) until its first
  result.
- Idle memory: resident set (C{VmRSS} in C{/proc/PID/status}) of a
  C{twistd -n taskservice} subprocess with its gateway and SMTP sink, as a
  user runs it, and of each of its workers; against a bare Autobahn
  websocket server on Twisted (the naive server of the e-mail scenario),
  C{multiprocessing.Pool} workers that ran the same example task, and an
  idle bare C{python}.
- Under load: the same resident sets before and after 100,000 trivial
  calls over TCP (after 1,000 warm-up calls); against C{multiprocessing.Pool}
  workers before and after as many calls.
- What a worker imports: C{python -X importtime -m taskservice.worker
  taskservice.examples}, the biggest imports and whether Twisted or
  Autobahn is among them.

Sizes are MiB (2**20 bytes); the issue's targets (30 MB a worker, 100 MB
the parent) are checked as MiB.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskservice._twistdprocess import Twistd
from taskservice.bench._procfs import processStats
from taskservice.bench._stats import Summary
from taskservice.examples import echo as _echo
from taskservice.examples import sleep as _sleep

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

Rows = list[list[str]]

WORKERS = 2
CALLS = 100_000
QUICK_CALLS = 10_000
WARM_UP = 1_000
WINDOW = 200
START_SAMPLES = 10
QUICK_START_SAMPLES = 5
IDLE_RUNS = 3
SETTLE = 0.5
MIB = 1 << 20
WORKER_TARGET = 30 * MIB
PARENT_TARGET = 100 * MIB
START_TARGET = 0.150
GROWTH_TARGET = 5.0
HOST = "127.0.0.1"

_CONTEXT = "forkserver"


# -- pure helpers ----------------------------------------------------------------


def kilobytes(text: str) -> dict[str, int]:
    """
    The C{"Name:   123 kB"} lines of C{/proc/PID/status} or
    C{/proc/PID/smaps_rollup}, as bytes by name; other lines are skipped.
    """
    sizes = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        fields = value.split()
        if sep and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            sizes[name.strip()] = int(fields[0]) * 1024
    return sizes


@dataclass(frozen=True)
class Import:
    """
    One line of C{python -X importtime}: microseconds spent in the module
    itself, and with everything it imported.
    """

    module: str
    selfMicros: int
    cumulativeMicros: int
    depth: int


def parseImportTime(text: str) -> list[Import]:
    """
    The imports C{python -X importtime} reported on standard error, in its
    order (a module after those it imported); other lines are skipped.
    """
    imports = []
    for line in text.splitlines():
        prefix, sep, rest = line.partition("import time:")
        if prefix or not sep:
            continue
        fields = rest.split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        module = name.lstrip()
        depth = (len(name) - len(module) - 1) // 2
        imports.append(Import(module, int(fields[0]), int(fields[1]), max(0, depth)))
    return imports


def percentChange(before: float, after: float) -> float:
    return (after - before) / before * 100.0


def mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# -- reading processes -------------------------------------------------------


def residentBytes(pid: int) -> int:
    """
    C{VmRSS} of process C{pid} in bytes.
    """
    return kilobytes(Path(f"/proc/{pid}/status").read_text())["VmRSS"]


def uniqueBytes(pid: int) -> int:
    """
    Memory only process C{pid} holds (private pages, clean and dirty): what
    it costs beyond what it shares with others.
    """
    sizes = kilobytes(Path(f"/proc/{pid}/smaps_rollup").read_text())
    return sizes.get("Private_Clean", 0) + sizes.get("Private_Dirty", 0)


def childrenOf(pid: int) -> list[int]:
    """
    The pids of C{pid}'s children (C{/proc/PID/task/*/children} needs a
    kernel option: scan every process's C{stat} instead).
    """
    return sorted(
        process for process, fields in processStats() if int(fields[1]) == pid
    )


# -- start time ----------------------------------------------------------------


async def poolStart(reactor: Any) -> float:
    """
    Seconds from a size-1 pool's C{startService()} (which spawns the worker)
    to C{whenReady()} (its ready handshake).
    """
    from taskservice.pool import ProcessPool

    pool = ProcessPool(reactor, ["taskservice.examples"], size=1)
    started = time.perf_counter()
    pool.startService()
    await pool.whenReady()
    elapsed = time.perf_counter() - started
    await pool.stopService()
    return elapsed


async def interpreterStart(reactor: Any) -> float:
    """
    Seconds from spawning C{python -c} (with C{reactor.spawnProcess}, as the
    pool spawns workers) to the first byte it writes.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ProcessProtocol

    class FirstOutput(ProcessProtocol):
        def __init__(self) -> None:
            self.output: Deferred[float] = Deferred()
            self.ended: Deferred[None] = Deferred()

        def childDataReceived(self, childFD: int, data: bytes) -> None:
            if not self.output.called:
                self.output.callback(time.perf_counter())

        def processEnded(self, reason: object) -> None:
            self.ended.callback(None)

    protocol = FirstOutput()
    started = time.perf_counter()
    reactor.spawnProcess(
        protocol,
        sys.executable,
        [sys.executable, "-c", "import os; os.write(1, b'r')"],
        env=dict(os.environ),
    )
    first = await protocol.output
    await protocol.ended
    return first - started


def mpStart(method: str) -> float:
    """
    Seconds from creating a C{multiprocessing} C{Pool(1)} to its first
    result (C{examples.echo}, so it imports the same task module).
    """
    started = time.perf_counter()
    with multiprocessing.get_context(method).Pool(1) as pool:
        pool.apply(_echo, (0,))
        elapsed = time.perf_counter() - started
    return elapsed


async def startTimes(reactor: Any, samples: int, rows: Rows, notes: list[str]) -> None:
    ours: list[float] = []
    python: list[float] = []
    spawn: list[float] = []
    forkserver: list[float] = []
    mpStart(_CONTEXT)  # the fork server itself starts once per process
    for _ in range(samples):
        ours.append(await poolStart(reactor))
        python.append(await interpreterStart(reactor))
        spawn.append(mpStart("spawn"))
        forkserver.append(mpStart(_CONTEXT))

    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1e3:.0f} ms,"
            f" max {max(values) * 1e3:.0f} ms"
        )

    o = statistics.median(ours)
    rows.append(
        [
            f"fresh worker: spawn -> ready handshake (size-1 pool, {samples}"
            f" samples; target <= {START_TARGET * 1e3:.0f} ms)",
            ms(ours),
            f"python -c, spawned the same way, to its first byte {ms(python)}",
            f"{o / statistics.median(python):.2f}x (ours/python)",
        ]
    )
    rows.append(
        [
            "",
            "",
            f"multiprocessing Pool(1) to first result: spawn {ms(spawn)};"
            f" forkserver {ms(forkserver)}",
            f"{statistics.median(spawn) / o:.2f}x (spawn/ours)",
        ]
    )
    notes.append(
        f"worker start: median {o * 1e3:.0f} ms, target <="
        f" {START_TARGET * 1e3:.0f} ms: {verdict(o <= START_TARGET)}"
    )


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
    with multiprocessing.get_context(_CONTEXT).Pool(workers) as pool:
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


# -- memory --------------------------------------------------------------------


@dataclass
class _Idle:
    parent: list[int]
    parentUnique: list[int]
    workers: list[int]
    workersUnique: list[int]
    autobahn: list[int]
    mpWorkers: list[int]
    mpWorkersUnique: list[int]
    python: list[int]


async def idleMemory(reactor: Any, runs: int, workdir: Path) -> _Idle:
    from twisted.internet.task import deferLater

    from taskservice.client import TaskClient

    idle = _Idle([], [], [], [], [], [], [], [])
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


def idleRows(idle: _Idle, runs: int, rows: Rows, notes: list[str]) -> None:
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
            f"multiprocessing.Pool worker ({_CONTEXT}, ran examples)"
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


# -- imports -----------------------------------------------------------------------


def workerImports() -> list[Import]:
    """
    What C{python -m taskservice.worker taskservice.examples} imports, by
    C{-X importtime}. The worker gets its command pipe (fd 3) at end of
    file, so it exits right after its ready frame.
    """
    result = subprocess.run(
        [
            "sh",
            "-c",
            'exec "$0" -X importtime -m taskservice.worker taskservice.examples'
            " 3</dev/null 4>/dev/null",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return parseImportTime(result.stderr)


def importNote(imports: list[Import]) -> str:
    top = sorted(
        (i for i in imports if i.depth == 0),
        key=lambda i: i.cumulativeMicros,
        reverse=True,
    )
    total = sum(i.cumulativeMicros for i in imports if i.depth == 0)
    heavy = [
        name
        for name in ("twisted", "autobahn", "taskservice.gateway", "zope.interface")
        if any(i.module == name for i in imports)
    ]
    biggest = ", ".join(f"{i.module} {i.cumulativeMicros / 1e3:.1f}" for i in top[:6])
    return (
        f"a worker of taskservice.examples imports {len(imports)} modules in"
        f" {total / 1e3:.0f} ms (-X importtime, cumulative); biggest top-level"
        f" imports (ms): {biggest}; Twisted, Autobahn, the gateway or"
        f" zope.interface among them: {', '.join(heavy) or 'none'}"
    )


async def memoryScenario(
    reactor: Any, runs: int, quick: bool, rows: Rows, notes: list[str]
) -> None:
    """
    Scenario 6: worker start time, idle memory, memory under load, and what
    a worker imports.
    """
    samples = QUICK_START_SAMPLES if quick else START_SAMPLES
    await startTimes(reactor, samples, rows, notes)
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        idleRuns = 1 if quick else min(runs, IDLE_RUNS)
        idleRows(await idleMemory(reactor, idleRuns, workdir), idleRuns, rows, notes)
        await memoryUnderLoad(
            reactor, QUICK_CALLS if quick else CALLS, workdir, rows, notes
        )
    notes.append(importNote(workerImports()))
