"""
``python -m taskservice.bench [--runs N] [--quick] [--write PATH]``

Runs each scenario and its in-run baseline interleaved, several times, and
prints medians with their spread (min-max) and the ratio to the baseline:
these machines are shared and noisy, so only same-run ratios mean much.
With ``--write`` the table goes into a Markdown page (docs/benchmarks.md),
which the Sphinx page docs/benchmarks.rst includes.

The scenarios on the pool and task server that ``main`` starts are
``_poolscenarios.py``, over their baselines in ``_baselines.py``; the
others have a module each. This module is the command line, the run loop
and the Markdown page; the scenarios' names are re-exported here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from taskservice.bench._baselines import (
    POOL_SIZE,
    WINDOW,
    executorThroughput,
    mpSequential,
    mpThroughput,
)
from taskservice.bench._burst import burstScenario
from taskservice.bench._jobs import jobsScenario
from taskservice.bench._memory import memoryScenario
from taskservice.bench._pgjobs import pgjobsScenario
from taskservice.bench._poolscenarios import (
    deadlineToError,
    failureScenario,
    killToError,
    payloadScenario,
    poolThroughput,
    recyclingScenario,
    sequential,
    sequentialScenario,
    throughputScenario,
    websocketScenario,
)
from taskservice.bench._stats import Rows, latency, mergeSection, ratio, table
from taskservice.bench._tcp import tcpScenario
from taskservice.bench._wsload import wsloadScenario

__all__ = [
    "POOL_SIZE",
    "WINDOW",
    "Rows",
    "deadlineToError",
    "executorThroughput",
    "failureScenario",
    "killToError",
    "latency",
    "main",
    "mpSequential",
    "mpThroughput",
    "payloadScenario",
    "poolThroughput",
    "ratio",
    "recyclingScenario",
    "run",
    "sequential",
    "sequentialScenario",
    "throughputScenario",
    "websocketScenario",
]


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
