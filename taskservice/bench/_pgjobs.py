"""
Issue 13's performance section: durable jobs through two task servers on
one PostgreSQL journal, against one server on the SQLite journal of the
same run.

 - throughput: trivial jobs (C{echo}) through two C{twistd taskservice}
   servers sharing a throwaway PostgreSQL cluster (durable: fsync on, as
   PostgreSQL ships), each driven by the compiled load client's C{jobs}
   mode on half the connections, at the same time; beside one server on an
   SQLite journal (synchronous=FULL) driven on all the connections;
 - claim latency: from sending a C{$/submit} to a worker starting the job
   (the task returns its start time), one job at a time: on the server it
   was submitted to, and on the other server, woken by C{NOTIFY} because
   the first one's only job slot is taken; beside the same on SQLite.
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from taskservice import _pgcluster
from taskservice.bench._faqserver import BACKLOG
from taskservice.bench._jobtools import whenServing
from taskservice.bench._loadclient import NO_COMPILER, Measurement, build, measure
from taskservice.bench._stats import Rows, Summary, met, percentile
from taskservice.bench._websocket import HOST, startTwistd, stop
from taskservice.testing import freePort

CONNECTIONS = 100
TIMEOUT = 120


class _Line:
    """
    A blocking JSON-RPC connection, one request at a time.
    """

    def __init__(self, port: int) -> None:
        self.connection = socket.create_connection((HOST, port), timeout=30)
        self.reader = self.connection.makefile("rb")
        self.nextId = 0

    def request(self, method: str, params: Any) -> Any:
        self.nextId += 1
        self.connection.sendall(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": self.nextId,
                    "method": method,
                    "params": params,
                }
            ).encode()
            + b"\n"
        )
        while True:
            reply = json.loads(self.reader.readline())
            if reply.get("id") == self.nextId:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        self.reader.close()
        self.connection.close()


def claimLatencies(submitTo: int, count: int) -> list[float]:
    """
    Seconds from sending each C{$/submit} of C{started_at} to C{submitTo}
    until a worker started it, one job at a time.
    """
    line = _Line(submitTo)
    try:
        samples = []
        for _ in range(count):
            sent = time.time()
            job = line.request("$/submit", {"method": "started_at", "params": []})
            started = line.request("$/attach", {"job": job["job"]})
            samples.append(started - sent)
        return samples
    finally:
        line.close()


def _server(directory: Path, port: int, jobsDb: str, *args: str) -> Any:
    return startTwistd(
        directory,
        "--no-smtp-sink",
        "--no-websocket",
        "--tasks",
        "taskservice.examples",
        "--tasks",
        "taskservice.bench._tasks",
        "--listen",
        f"tcp:{port}:interface={HOST}:backlog={BACKLOG}",
        "--jobs-db",
        jobsDb,
        *args,
    )


def _together(
    binary: Path, servers: list[tuple[Any, int]], total: int
) -> tuple[float, list[Measurement]]:
    """
    Drive every server at once, C{CONNECTIONS} split between them: the
    jobs/s of all of them together, and each one's measurement.
    """
    results: list[Measurement | None] = [None] * len(servers)
    share = CONNECTIONS // len(servers)

    def drive(index: int) -> None:
        process, port = servers[index]
        results[index] = measure(
            binary, process.pid, "jobs", port, total // len(servers), share, TIMEOUT
        )

    started = time.perf_counter()
    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = [m for m in results if m is not None]
    return sum(m.result.ok for m in done) / wall, done


async def pgjobsScenario(runs: int, quick: bool, rows: Rows, notes: list[str]) -> None:
    """
    Throughput and claim latency of two servers on PostgreSQL, beside one
    on SQLite; rows and notes for the report.
    """
    binary = build()
    bindir = _pgcluster.binDir()
    if binary is None or bindir is None:
        reason = NO_COMPILER if binary is None else "no PostgreSQL server binaries"
        rows.append(["pgjobs: two task servers on PostgreSQL", reason, "-", "-"])
        return
    total = 4_000 if quick else 20_000
    latencyCount = 100 if quick else 500
    cluster = _pgcluster.start(bindir, durable=True)
    try:
        import psycopg

        with psycopg.connect(cluster.dsn(), autocommit=True) as db:
            db.execute("CREATE DATABASE bench")
        with tempfile.TemporaryDirectory(prefix="taskservice-bench-pg-") as name:
            directory = Path(name)
            _measure(
                binary,
                cluster.dsn("bench"),
                directory,
                runs,
                total,
                latencyCount,
                rows,
                notes,
            )
    finally:
        cluster.stop()


def _measure(
    binary: Path,
    dsn: str,
    directory: Path,
    runs: int,
    total: int,
    latencyCount: int,
    rows: Rows,
    notes: list[str],
) -> None:
    ports = [freePort(), freePort(), freePort()]
    pg = [_server(directory, p, dsn) for p in ports[:2]]
    sqlite = _server(directory, ports[2], str(directory / "jobs.sqlite3"))
    try:
        for process, port in zip([*pg, sqlite], ports, strict=True):
            whenServing(port, process)
        for process, port in zip([*pg, sqlite], ports, strict=True):  # warm up
            measure(binary, process.pid, "jobs", port, 1_000, 10, TIMEOUT)
        pgRates: list[float] = []
        sqliteRates: list[float] = []
        pgParent: list[float] = []
        for run in range(runs):
            for kind in ("pg", "sqlite")[:: 1 if run % 2 else -1]:
                if kind == "pg":
                    rate, measured = _together(
                        binary, list(zip(pg, ports[:2], strict=True)), total
                    )
                    pgRates.append(rate)
                    pgParent.append(
                        sum(
                            m.parentShare * m.result.wall / m.result.ok
                            for m in measured
                        )
                        / len(measured)
                    )
                else:
                    rate, _ = _together(binary, [(sqlite, ports[2])], total)
                    sqliteRates.append(rate)
        same = claimLatencies(ports[1], latencyCount)
        onSQLite = claimLatencies(ports[2], latencyCount)
    finally:
        for process in (*pg, sqlite):
            stop(process)
    cross = _crossServer(directory, dsn, latencyCount)
    _report(pgRates, sqliteRates, pgParent, same, onSQLite, cross, rows, notes)


def _crossServer(directory: Path, dsn: str, count: int) -> list[float]:
    """
    Claim latency through NOTIFY: a server with one job slot, held by a
    long job, is given the jobs; a second server runs them.
    """
    busyPort, otherPort = freePort(), freePort()
    busy = _server(directory, busyPort, dsn, "--job-concurrency", "1")
    other = _server(directory, otherPort, dsn)
    try:
        whenServing(busyPort, busy)
        whenServing(otherPort, other)
        line = _Line(busyPort)
        try:
            holder = line.request("$/submit", {"method": "sleep", "params": [TIMEOUT]})[
                "job"
            ]
            deadline = time.monotonic() + 30
            while line.request("$/job", {"job": holder})["state"] != "running":
                if time.monotonic() > deadline:
                    raise RuntimeError("the long job never started")
                time.sleep(0.01)
            samples = claimLatencies(busyPort, count)
            line.request("$/cancelJob", {"job": holder})
        finally:
            line.close()
        return samples
    finally:
        stop(busy)
        stop(other)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _report(
    pgRates: list[float],
    sqliteRates: list[float],
    pgParent: list[float],
    same: list[float],
    onSQLite: list[float],
    cross: list[float],
    rows: Rows,
    notes: list[str],
) -> None:
    pg, lite = Summary.of(pgRates), Summary.of(sqliteRates)
    rows.append(
        [
            f"pgjobs: durable echo jobs through two task servers on one PostgreSQL,"
            f" {CONNECTIONS} connections ({CONNECTIONS // 2} each), 2 workers each",
            pg.show("jobs/s"),
            f"one server on SQLite, {CONNECTIONS} connections: {lite.show('jobs/s')}",
            f"{pg.median / lite.median:.2f}x",
        ]
    )
    for name, samples in (
        ("on the server it was submitted to", same),
        ("on the other server, woken by NOTIFY (the first one full)", cross),
    ):
        rows.append(
            [
                f"pgjobs: claim latency, $/submit sent -> worker starts it, {name}",
                f"p50 {_ms(percentile(samples, 0.5))},"
                f" p99 {_ms(percentile(samples, 0.99))}",
                f"SQLite p50 {_ms(percentile(onSQLite, 0.5))},"
                f" p99 {_ms(percentile(onSQLite, 0.99))}",
                f"{percentile(samples, 0.5) / percentile(onSQLite, 0.5):.2f}x (p50)",
            ]
        )
    cross50 = percentile(cross, 0.5)
    notes.append(
        "pgjobs: a throwaway PostgreSQL cluster started by the benchmark"
        " (initdb + pg_ctl, durable: fsync, synchronous_commit and"
        " full_page_writes on, as PostgreSQL ships), on loopback TCP; the two"
        " servers are driven at once by two load clients (jobs mode: $/submit"
        " then $/attach to the result), the rate is all their jobs over the wall"
        " time; parent CPU per job (median of the two servers) "
        f"{statistics.median(pgParent) * 1e6:.0f} us. Claim latency is one job"
        f" at a time, {len(same)} jobs each, from the client's clock at sending"
        " the submit to the worker's at starting the task (the same machine)."
    )
    notes.append(
        "pgjobs targets (issue 13, 2 cores): >= 3,000 jobs/s through two servers:"
        f" {pg.median:,.0f} ({met(pg.median >= 3000)}); claim"
        f" latency p50 <= 5 ms (through NOTIFY): {_ms(cross50)}"
        f" ({met(cross50 <= 5e-3)}); ratio to SQLite"
        f" {pg.median / lite.median:.2f}x."
    )
