"""
The durable-jobs benchmark's tools (see L{taskservice.bench._jobs}): how
much each part does, asking a server's C{$/stats} until it serves or its
jobs got somewhere, a journal written directly in SQLite, C{fsync} samples,
a journal's file sizes, and the units its rows are written in.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskservice._journal import SUCCEEDED
from taskservice._sqlitejournal import SQLiteJournal
from taskservice.bench._websocket import HOST

CONNECTIONS = 100
TIMEOUT = 120
TTL = 86400.0


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
