"""
The measured parts of the durable-jobs benchmark (see
L{taskservice.bench._jobs}): throughput and submit latency through two
servers (journal on disk, journal in memory), restart on a full journal,
and a journal's size through rounds of jobs and purges.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from taskservice._journal import SUCCEEDED, NewJob
from taskservice._sqlitejournal import SQLiteJournal
from taskservice.bench._faqserver import BACKLOG
from taskservice.bench._jobtools import (
    CONNECTIONS,
    TIMEOUT,
    TTL,
    Sizes,
    askStats,
    buildJournal,
    fileSizes,
    fsyncSamples,
    whenJobs,
    whenServing,
)
from taskservice.bench._loadclient import Series, measure
from taskservice.bench._websocket import HOST, startTwistd, stop
from taskservice.testing import freePort


@dataclass
class Throughput:
    """
    The series of L{throughput}'s runs, C{fsync} samples in the journal's
    directory, and the journal's bytes after the runs.
    """

    calls: Series
    disk: Series
    wait: Series
    memory: Series
    sequentialDisk: Series
    sequentialMemory: Series
    fsync: list[float]
    journalBytes: int


def throughput(binary: Path, runs: int, sizes: Sizes, directory: Path) -> Throughput:
    """
    Jobs and calls on a server with its journal on disk, and jobs on one
    with its journal in memory, interleaved (the order alternates).
    """
    ports = {"disk": freePort(), "memory": freePort()}
    journals = {"disk": str(directory / "jobs.sqlite3"), "memory": ":memory:"}
    servers = {
        name: startTwistd(
            directory,
            "--no-smtp-sink",
            "--no-websocket",
            "--listen",
            f"tcp:{ports[name]}:interface={HOST}:backlog={BACKLOG}",
            "--jobs-db",
            journals[name],
        )
        for name in ports
    }
    series = {
        key: Series()
        for key in (
            "calls",
            "disk",
            "wait",
            "memory",
            "sequentialDisk",
            "sequentialMemory",
        )
    }
    try:
        for name, process in servers.items():
            whenServing(ports[name], process)
        runsOf: list[tuple[str, str, int, int, str]] = [
            ("calls", "persistent", sizes.calls, CONNECTIONS, "disk"),
            ("disk", "jobs", sizes.jobs, CONNECTIONS, "disk"),
            ("wait", "jobs-wait", sizes.jobs, CONNECTIONS, "disk"),
            ("memory", "jobs", sizes.jobs, CONNECTIONS, "memory"),
            ("sequentialDisk", "jobs-sequential", sizes.sequential, 1, "disk"),
            ("sequentialMemory", "jobs-sequential", sizes.sequential, 1, "memory"),
        ]
        for name, process in servers.items():  # warm up
            for mode in ("persistent", "jobs", "jobs-wait"):
                measure(binary, process.pid, mode, ports[name], 2_000, 10, TIMEOUT)
        for run in range(runs):
            for key, mode, total, connections, server in runsOf[
                :: 1 if run % 2 else -1
            ]:
                series[key].add(
                    measure(
                        binary,
                        servers[server].pid,
                        mode,
                        ports[server],
                        total=total,
                        connections=connections,
                        timeout=TIMEOUT,
                    )
                )
        journalBytes = int(askStats(ports["disk"])["jobs"]["journalBytes"])
        fsync = fsyncSamples(directory, 500)
    finally:
        for process in servers.values():
            stop(process)
    return Throughput(**series, fsync=fsync, journalBytes=journalBytes)


@dataclass
class Restart:
    """
    L{restart}'s seconds to serve on a full and on an empty journal, to run
    the queued jobs, and what the first C{$/stats} found.
    """

    full: list[float]
    empty: list[float]
    drained: list[float]
    found: dict[str, Any]


def restart(runs: int, sizes: Sizes, directory: Path) -> Restart:
    """
    Start C{twistd taskservice} on a copy of a journal of finished and
    queued jobs, and on an empty one, interleaved: seconds until C{$/stats}
    answers, and until the queued jobs have run.
    """
    template = directory / "template.sqlite3"
    buildJournal(template, sizes.finished, sizes.queued, time.time())
    full: list[float] = []
    empty: list[float] = []
    drained: list[float] = []
    found: dict[str, Any] = {}
    for run in range(runs):
        for kind in ("full", "empty")[:: 1 if run % 2 else -1]:
            path = directory / f"restart-{run}-{kind}.sqlite3"
            if kind == "full":
                shutil.copyfile(template, path)
            port = freePort()
            started = time.perf_counter()
            process = startTwistd(
                directory,
                "--no-smtp-sink",
                "--no-websocket",
                "--listen",
                f"tcp:{port}:interface={HOST}",
                "--jobs-db",
                str(path),
            )
            try:
                stats = whenServing(port, process)
                ready = time.perf_counter() - started
                if kind == "empty":
                    empty.append(ready)
                    continue
                full.append(ready)
                found = stats["jobs"]
                whenJobs(
                    port,
                    lambda jobs: jobs["succeeded"] == sizes.finished + sizes.queued,
                )
                drained.append(time.perf_counter() - started - ready)
            finally:
                stop(process)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Restart(full, empty, drained, found)


@dataclass(frozen=True)
class SizeRound:
    """
    The journal's bytes (file, write-ahead log) in one round of
    L{journalSize}.
    """

    held: tuple[int, int]
    purged: tuple[int, int]
    closed: tuple[int, int]


async def journalSize(
    reactor: Any, jobs: int, directory: Path, rounds: int = 2
) -> tuple[list[SizeRound], float]:
    """
    Run C{jobs} jobs through a journal of our own (submit, claim, finish:
    the server's calls, without a server) and purge them, C{rounds} times,
    opening and closing the journal each round: its bytes while it holds
    them, after the purge, and once closed (which checkpoints the log into
    the file); and the seconds it all took.
    """
    path = directory / "size.sqlite3"
    started = time.perf_counter()
    measured = []
    for number in range(rounds):
        journal = SQLiteJournal(reactor, str(path))
        journal.open()
        try:
            now = time.time()
            submits: list[Deferred[Any]] = [
                journal.submit(
                    NewJob(
                        id=f"{number}-{i}",
                        method="echo",
                        params=f"[{i}]",
                        key=None,
                        maxAttempts=1,
                        backoff=1.0,
                        timeout=None,
                        runAt=now,
                        createdAt=now,
                    )
                )
                for i in range(jobs)
            ]
            await gatherResults(submits)
            finishing: list[Deferred[Any]] = []
            while True:
                claimed = await journal.claim(10_000, now)
                if not claimed.jobs:
                    break
                finishing += [
                    journal.finish(
                        job.id, SUCCEEDED, now, now + TTL, result=job.params[1:-1]
                    )
                    for job in claimed.jobs
                ]
            await gatherResults(finishing)
            held = fileSizes(path)
            purged = await journal.purge(now + TTL + 1)
            assert purged == jobs, purged
            afterPurge = fileSizes(path)
        finally:
            await journal.close()
        measured.append(SizeRound(held, afterPurge, fileSizes(path)))
    return measured, time.perf_counter() - started
