"""
The memory scenario's start times (see L{taskservice.bench._memory}): a
fresh worker from spawn to its ready handshake, against a bare
C{python -c} spawned the same way and C{multiprocessing} C{Pool(1)}s.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

from taskservice.bench._baselines import MP_CONTEXT
from taskservice.bench._stats import Rows, verdict
from taskservice.examples import echo as _echo

START_TARGET = 0.150


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
    mpStart(MP_CONTEXT)  # the fork server itself starts once per process
    for _ in range(samples):
        ours.append(await poolStart(reactor))
        python.append(await interpreterStart(reactor))
        spawn.append(mpStart("spawn"))
        forkserver.append(mpStart(MP_CONTEXT))

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
