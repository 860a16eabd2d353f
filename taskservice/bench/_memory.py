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

The parts are modules of their own, whose names are re-exported here:
reading processes (L{taskservice.bench._memprobe}), start times
(L{taskservice.bench._memstart}), resident sets idle and under load
(L{taskservice.bench._memuse}); this module is the scenario and what a
worker imports.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from taskservice.bench._memprobe import (
    MIB,
    Import,
    childrenOf,
    kilobytes,
    mib,
    parseImportTime,
    percentChange,
    residentBytes,
    uniqueBytes,
)
from taskservice.bench._memstart import (
    START_TARGET,
    interpreterStart,
    mpStart,
    poolStart,
    startTimes,
)
from taskservice.bench._memuse import (
    GROWTH_TARGET,
    HOST,
    PARENT_TARGET,
    SETTLE,
    WARM_UP,
    WINDOW,
    WORKER_TARGET,
    WORKERS,
    Idle,
    bareAutobahn,
    barePython,
    callMany,
    growth,
    idleMemory,
    idleRows,
    memoryUnderLoad,
    mpPool,
    twistdTaskservice,
    whenWorkersReady,
)
from taskservice.bench._stats import Rows, verdict

__all__ = [
    "CALLS",
    "GROWTH_TARGET",
    "HOST",
    "IDLE_RUNS",
    "MIB",
    "PARENT_TARGET",
    "QUICK_CALLS",
    "QUICK_START_SAMPLES",
    "SETTLE",
    "START_SAMPLES",
    "START_TARGET",
    "WARM_UP",
    "WINDOW",
    "WORKERS",
    "WORKER_TARGET",
    "Idle",
    "Import",
    "Rows",
    "bareAutobahn",
    "barePython",
    "callMany",
    "childrenOf",
    "growth",
    "idleMemory",
    "idleRows",
    "importNote",
    "interpreterStart",
    "kilobytes",
    "memoryScenario",
    "memoryUnderLoad",
    "mib",
    "mpPool",
    "mpStart",
    "parseImportTime",
    "percentChange",
    "poolStart",
    "residentBytes",
    "startTimes",
    "twistdTaskservice",
    "uniqueBytes",
    "verdict",
    "whenWorkersReady",
    "workerImports",
]

CALLS = 100_000
QUICK_CALLS = 10_000
START_SAMPLES = 10
QUICK_START_SAMPLES = 5
IDLE_RUNS = 3


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
