"""
Issue 12's performance section: durable jobs (C{$/submit}), against the
in-memory call path of the same server in the same run.

 - throughput: trivial jobs (C{echo}) submitted by 100 connections and run
   to completion on 2 workers, driven by the compiled load client's C{jobs}
   mode (a C{$/submit}, then a C{$/attach} to the job it names, whose reply
   is the job's result), beside plain C{echo} calls on the same 100
   connections of the same server, and the same jobs on a server whose
   journal is in memory (C{--jobs-db :memory:}: no disk);
 - submit latency: the C{$/submit} reply comes after the commit to disk;
   measured one at a time and under that load, beside the in-memory journal,
   and beside a bare C{fsync} in the journal's directory;
 - restart: C{twistd taskservice} started on a journal holding 100,000
   finished and 10,000 queued jobs, until its port answers C{$/stats},
   beside the same start on an empty journal;
 - size: the journal's bytes holding 100,000 finished jobs, and after they
   are purged, twice over (bounded means the second round ends where the
   first did).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from taskservice._journal import SUCCEEDED, NewJob
from taskservice._sqlitejournal import SQLiteJournal
from taskservice.bench._faqserver import BACKLOG
from taskservice.bench._loadclient import (
    NO_COMPILER,
    Measurement,
    Series,
    build,
    measure,
)
from taskservice.bench._stats import Summary, percentile
from taskservice.bench._websocket import HOST, startTwistd, stop
from taskservice.testing import freePort

CONNECTIONS = 100
TIMEOUT = 120
TTL = 86400.0

Rows = list[list[str]]


@dataclass(frozen=True)
class Sizes:
    """
    How much each part does per run.
    """

    jobs: int
    calls: int
    sequential: int
    finished: int
    queued: int
    purged: int


SIZES = {
    False: Sizes(20_000, 60_000, 1_000, 100_000, 10_000, 100_000),
    True: Sizes(2_000, 5_000, 200, 10_000, 1_000, 10_000),
}


# -- helpers ---------------------------------------------------------------


def askStats(port: int, timeout: float = 5.0) -> dict[str, Any]:
    """
    One C{$/stats} call on a new connection to C{port}: its result.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as connection:
        connection.sendall(b'{"jsonrpc":"2.0","id":1,"method":"$/stats"}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed without answering")
            reply += chunk
    result: dict[str, Any] = json.loads(reply)["result"]
    return result


def whenServing(
    port: int, process: subprocess.Popen[bytes], seconds: float = 60
) -> dict[str, Any]:
    """
    Ask C{$/stats} every 5 ms until C{port} answers it; its result.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"twistd taskservice exited with {process.returncode}")
        try:
            return askStats(port, timeout=1.0)
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"nothing answered $/stats on {port} within {seconds} s")


def whenJobs(
    port: int, done: Any, seconds: float = TIMEOUT, every: float = 0.01
) -> dict[str, Any]:
    """
    Ask C{$/stats} every C{every} seconds until C{done(jobs)} holds for its
    C{"jobs"} part; that part.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs: dict[str, Any] = askStats(port)["jobs"]
        if done(jobs):
            return jobs
        time.sleep(every)
    raise RuntimeError(f"the jobs on {port} did not get there within {seconds} s")


def buildJournal(path: Path, finished: int, queued: int, now: float) -> None:
    """
    Write a job journal at C{path} holding C{finished} succeeded jobs (kept
    for a day) and C{queued} jobs due now, directly in SQLite: the schema
    and settings are the journal's own (L{SQLiteJournal} creates the file),
    the rows one C{executemany} each.
    """
    connection = SQLiteJournal(None, str(path), threaded=False)._connect()
    try:
        insert = (
            "INSERT INTO jobs (id, method, params, state, attempts, max_attempts,"
            " backoff, run_at, created_at, started_at, finished_at, expires_at,"
            " result) VALUES (?, 'echo', ?, ?, ?, 1, 1.0, ?, ?, ?, ?, ?, ?)"
        )
        connection.executemany(
            insert,
            (
                (
                    secrets.token_urlsafe(12),
                    f"[{i}]",
                    SUCCEEDED,
                    1,
                    now - 60,
                    now - 60,
                    now - 60,
                    now - 59,
                    now - 59 + TTL,
                    str(i),
                )
                for i in range(finished)
            ),
        )
        connection.executemany(
            insert,
            (
                (
                    secrets.token_urlsafe(12),
                    f"[{i}]",
                    "queued",
                    0,
                    now - 1,
                    now - 1,
                    None,
                    None,
                    None,
                    None,
                )
                for i in range(queued)
            ),
        )
        connection.commit()
    finally:
        connection.close()


def fsyncSamples(directory: Path, count: int) -> list[float]:
    """
    Seconds each C{fsync} takes after a 4 KiB write to a file in
    C{directory} (what a commit with C{synchronous=FULL} waits for, at
    least once).
    """
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        for _ in range(count):
            os.write(fd, block)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def fileSizes(path: Path) -> tuple[int, int]:
    """
    The bytes of the journal file and of its write-ahead log.
    """
    sizes = []
    for suffix in ("", "-wal"):
        try:
            sizes.append(os.stat(f"{path}{suffix}").st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


def mib(size: float) -> str:
    """
    Bytes in MiB, or in KiB under one MiB.
    """
    if size < 2**20:
        return f"{size / 2**10:.0f} KiB"
    return f"{size / 2**20:.1f} MiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def met(condition: bool) -> str:
    return "met" if condition else "missed"


# -- the parts -------------------------------------------------------------


@dataclass
class _Throughput:
    calls: Series
    disk: Series
    wait: Series
    memory: Series
    sequentialDisk: Series
    sequentialMemory: Series
    fsync: list[float]
    journalBytes: int


def _submitMedian(series: Series, which: str) -> float:
    values = [getattr(m.result, which) for m in series.runs]
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def _submitLatency(series: Series) -> str:
    return (
        f"p50 {ms(_submitMedian(series, 'submitP50'))},"
        f" p99 {ms(_submitMedian(series, 'submitP99'))}"
    )


def throughput(binary: Path, runs: int, sizes: Sizes, directory: Path) -> _Throughput:
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
    return _Throughput(**series, fsync=fsync, journalBytes=journalBytes)


@dataclass
class _Restart:
    full: list[float]
    empty: list[float]
    drained: list[float]
    found: dict[str, Any]


def restart(runs: int, sizes: Sizes, directory: Path) -> _Restart:
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
    return _Restart(full, empty, drained, found)


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


# -- the scenario ----------------------------------------------------------


async def jobsScenario(
    reactor: Any, runs: int, quick: bool, rows: Rows, notes: list[str]
) -> None:
    """
    Throughput, submit latency, restart and size of durable jobs; rows and
    notes for the report.
    """
    binary = build()
    if binary is None:
        rows.append(
            ["jobs: durable jobs through the task server", NO_COMPILER, "-", "-"]
        )
        return
    sizes = SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="taskservice-bench-jobs-") as name:
        directory = Path(name)
        measured = throughput(binary, runs, sizes, directory)
        restarted = restart(min(runs, 3), sizes, directory)
        size = await journalSize(reactor, sizes.purged, directory)
    _report(measured, restarted, size, sizes, rows, notes)


def _cpu(series: Series) -> str:
    parent = statistics.median(m.parentShare for m in series.runs)
    tree = statistics.median(m.serverShare for m in series.runs)
    client = statistics.median(m.result.cpuShare for m in series.runs)
    return f"client {client:.2f}, server {tree:.2f} (parent {parent:.2f})"


def _perJob(series: Series) -> float:
    """
    The parent's CPU seconds per job (or call), the median over the runs.
    """

    def one(m: Measurement) -> float:
        return m.parentShare * m.result.wall / max(1, m.result.ok)

    return statistics.median(one(m) for m in series.runs)


def _report(
    t: _Throughput,
    r: _Restart,
    size: tuple[list[SizeRound], float],
    sizes: Sizes,
    rows: Rows,
    notes: list[str],
) -> None:
    disk, memory, calls = t.disk.rate, t.memory.rate, t.calls.rate
    base = f"plain echo calls, same server, {CONNECTIONS} connections:"
    rows.append(
        [
            f"jobs: durable echo jobs, {CONNECTIONS} connections, one job in flight"
            " each ($/submit, then $/attach to its result), 2 workers",
            f"{disk.show('jobs/s')}; end to end {t.disk.latency()}",
            f"{base} {calls.show('calls/s')}; {t.calls.latency()}",
            f"{disk.median / calls.median:.2f}x",
        ]
    )
    wait = t.wait.rate
    rows.append(
        [
            f'jobs: the same jobs, one request each ($/submit with "wait": true),'
            f" {CONNECTIONS} connections",
            f"{wait.show('jobs/s')}; end to end {t.wait.latency()};"
            f" parent {_perJob(t.wait) * 1e6:.0f} us a job",
            f"$/submit then $/attach {disk.show('jobs/s')};"
            f" parent {_perJob(t.disk) * 1e6:.0f} us a job",
            f"{wait.median / disk.median:.2f}x",
        ]
    )
    rows.append(
        [
            "jobs: the same jobs, journal in memory (--jobs-db :memory:)",
            f"{memory.show('jobs/s')}; end to end {t.memory.latency()}",
            f"journal on disk {disk.show('jobs/s')}",
            f"{memory.median / disk.median:.2f}x (memory/disk)",
        ]
    )
    rows.append(
        [
            "jobs: parent CPU per job vs per call (medians); CPU in cores",
            f"{_perJob(t.disk) * 1e6:.0f} us a job; {_cpu(t.disk)}",
            f"{_perJob(t.calls) * 1e6:.0f} us a call; {_cpu(t.calls)}",
            f"{_perJob(t.disk) / _perJob(t.calls):.2f}x",
        ]
    )
    seqDisk = _submitMedian(t.sequentialDisk, "submitP50")
    seqMemory = _submitMedian(t.sequentialMemory, "submitP50")
    rows.append(
        [
            "jobs: $/submit reply (after the commit), one connection, one at a time",
            _submitLatency(t.sequentialDisk),
            f"journal in memory {_submitLatency(t.sequentialMemory)}",
            f"{seqDisk / seqMemory:.2f}x (p50, disk/memory)",
        ]
    )
    waitP50 = _submitMedian(t.wait, "submitP50")
    rows.append(
        [
            f'jobs: $/submit with "wait" under the {CONNECTIONS}-connection load'
            " (to its first $/progress, naming the job)",
            _submitLatency(t.wait),
            f"$/submit then $/attach {_submitLatency(t.disk)}",
            f"{waitP50 / _submitMedian(t.disk, 'submitP50'):.2f}x (p50)",
        ]
    )
    loadDisk = _submitMedian(t.disk, "submitP50")
    loadMemory = _submitMedian(t.memory, "submitP50")
    rows.append(
        [
            f"jobs: $/submit reply under the {CONNECTIONS}-connection load",
            _submitLatency(t.disk),
            f"journal in memory {_submitLatency(t.memory)}",
            f"{loadDisk / loadMemory:.2f}x (p50, disk/memory)",
        ]
    )
    rows.append(
        [
            "jobs: fsync after a 4 KiB write, in the journal's directory"
            f" ({len(t.fsync)} samples)",
            f"p50 {ms(percentile(t.fsync, 0.5))}, p99 {ms(percentile(t.fsync, 0.99))}",
            "-",
            "-",
        ]
    )
    full, empty = Summary.of(r.full), Summary.of(r.empty)
    rows.append(
        [
            f"jobs: twistd taskservice start -> $/stats answers, journal of"
            f" {sizes.finished:,} finished + {sizes.queued:,} queued jobs",
            full.show("s", 2),
            f"empty journal {empty.show('s', 2)}",
            f"{full.median / empty.median:.2f}x",
        ]
    )
    rows.append(
        [
            f"jobs: then its {sizes.queued:,} queued jobs run (after serving)",
            Summary.of(r.drained).show("s", 2),
            "-",
            f"{sizes.queued / statistics.median(r.drained):,.0f} jobs/s",
        ]
    )
    rounds, seconds = size

    def both(sizes: tuple[int, int]) -> str:
        return f"{mib(sum(sizes))} ({mib(sizes[0])} + {mib(sizes[1])})"

    for number, one in enumerate(rounds, 1):
        rows.append(
            [
                f"jobs: journal bytes, file + WAL: {sizes.purged:,} jobs finished"
                f" and kept -> purged -> closed (round {number} of {len(rounds)})",
                f"{both(one.held)} -> {both(one.purged)} -> {mib(sum(one.closed))}",
                "-",
                f"{mib(sum(one.closed))} after the purge, closed",
            ]
        )
    notes.append(
        f"jobs: the C epoll load client's jobs mode, {CONNECTIONS} connections of"
        " one job each: a $/submit of echo(K), then a $/attach to the job it names,"
        " whose reply (after the job's end is committed) must be K; completions"
        " are counted by those replies (each one checked, and timed from the"
        " submit), not by polling $/stats, which counts without checking and adds"
        " its own polling interval. The jobs-wait mode sends one $/submit with"
        ' "wait": true a job instead: its first $/progress (naming the job, once'
        " committed) times the submit, its reply (the job's result, K) ends the"
        " job, on the same server as the submit + attach series. Rates are"
        " medians of the runs (min-max),"
        " latencies the medians of the runs' p50/p99. The journal is SQLite WAL"
        " with synchronous=FULL, in a temporary directory on the same disk as the"
        f" checkout; {sizes.jobs:,} jobs and {sizes.calls:,} calls a run. The"
        f" server with the journal on disk held {t.journalBytes:,} journal bytes"
        " after its runs (1 day of results kept)."
    )
    notes.append(
        "jobs: restart on a copy of a journal written directly in SQLite (the"
        " journal's own schema) and fresh in the page cache, as after a crash and"
        " a restart on the same machine; the time runs from spawning twistd to"
        " the first $/stats answer (the same twistd command on an empty journal is"
        f" the baseline); {len(r.full)} runs. The first answer found"
        f" {r.found.get('succeeded', '?'):,} succeeded, {r.found.get('queued', '?'):,}"
        f" queued and {r.found.get('running', '?'):,} running jobs."
    )
    notes.append(
        f"jobs: size: {sizes.purged:,} echo jobs submitted, claimed and finished"
        " through SQLiteJournal itself (no server; the server's statements), then"
        " purged (purge() with the time past their --job-ttl), twice over,"
        " opening and closing the journal each round (closing checkpoints the WAL"
        " into the file and removes it); the file shrinks by incremental vacuum"
        " once checkpointed; while it runs, the WAL keeps the size it reached"
        f" (capped at 64 MiB by journal_size_limit); {seconds:.1f} s for the"
        " rounds."
    )
    rate = disk.median
    notes.append(
        "jobs targets (issue 12, 2 cores): >= 5,000 jobs/s:"
        f" {rate:,.0f} ({met(rate >= 5_000)}); submit p50 <= 2 ms:"
        f" {ms(seqDisk)} one at a time ({met(seqDisk <= 2e-3)}),"
        f" {ms(loadDisk)} under the {CONNECTIONS}-connection load"
        f' ({met(loadDisk <= 2e-3)}), {ms(waitP50)} with "wait" (one request'
        f" a job, {wait.median:,.0f} jobs/s); restart <= 2 s: {full.median:.2f} s"
        f" ({met(full.median <= 2)}); size after purge bounded: file + WAL "
        + " then ".join(mib(sum(one.purged)) for one in rounds)
        + ", closed "
        + " then ".join(mib(sum(one.closed)) for one in rounds)
        + "."
        " Reference (issue 12, same machine, not this run): Celery with Redis"
        " 592 tasks/s."
    )
    for name, series in (
        ("jobs (disk)", t.disk),
        ("jobs (wait)", t.wait),
        ("jobs (memory)", t.memory),
    ):
        if series.errors:
            notes.append(
                f"{name}: {series.errors} wrong or missing replies"
                f" (first: {series.firstError})"
            )
