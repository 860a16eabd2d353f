"""
The compiled load client of the TCP and websocket load scenarios: builds
C{loadclient.c} (beside this module) with C{cc -O2} into a cache directory
keyed by the source's hash, runs it and parses the JSON line it prints.

A Python client saturates near 30,000 calls/s on this machine, below the
servers it measures; the single-threaded epoll client in C does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from taskservice.bench._procfs import processStats
from taskservice.bench._stats import Summary

SOURCE = Path(__file__).with_name("loadclient.c")
FLAGS = ("-O2", "-std=gnu99", "-Wall")
NO_COMPILER = "skipped: no C compiler"


class BuildError(Exception):
    """
    The C compiler refused C{loadclient.c}: its output is the message.
    """


def cacheDirectory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskservice-bench"


def compiler() -> str | None:
    """
    The C compiler to use (C{$CC}, else C{cc}), or None if there is none.
    """
    return shutil.which(os.environ.get("CC", "cc"))


def build(directory: Path | None = None) -> Path | None:
    """
    The path of the built client, compiling it unless a build of this very
    source (and these flags) is cached in C{directory} (by default
    L{cacheDirectory}); None if there is no C compiler.
    """
    cc = compiler()
    if cc is None:
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *FLAGS)).encode()).hexdigest()[:16]
    directory = directory or cacheDirectory()
    binary = directory / f"loadclient-{key}"
    if binary.exists():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    # Compile beside the target, then rename: concurrent builds never see
    # half a binary.
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".loadclient-")
    os.close(fd)
    result = subprocess.run(
        [cc, *FLAGS, "-o", partial, str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        os.unlink(partial)
        raise BuildError(f"{cc} failed on {SOURCE}:\n{result.stderr}")
    os.replace(partial, binary)
    return binary


@dataclass(frozen=True)
class LoadResult:
    """
    One run of the client: what it printed, and the wall-clock time of the
    whole client process (for CPU shares). The jobs modes add the
    percentiles of the submits' own round trips.
    """

    mode: str
    connections: int
    calls: int
    ok: int
    errors: int
    seconds: float
    rate: float
    p50: float | None
    p99: float | None
    cpuUser: float
    cpuSys: float
    firstError: str
    wall: float
    submitP50: float | None = None
    submitP99: float | None = None

    @property
    def cpuShare(self) -> float:
        """
        The client's CPU time over its lifetime, per second of wall clock
        (1.0 is one core busy).
        """
        return (self.cpuUser + self.cpuSys) / self.wall


def run(
    binary: Path,
    mode: str,
    port: int,
    total: int,
    connections: int = 1,
    host: str = "127.0.0.1",
    path: str = "/ws",
    timeout: float = 60.0,
) -> LoadResult:
    """
    Run the client once (see C{loadclient.c} for the modes) and return what
    it measured.
    """
    argv = [
        str(binary),
        "--mode",
        mode,
        "--host",
        host,
        "--port",
        str(port),
        "--connections",
        str(connections),
        "--total",
        str(total),
        "--path",
        path,
        "--timeout",
        str(timeout),
    ]
    started = time.monotonic()
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 30, check=False
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr}"
        )
    return LoadResult(**json.loads(result.stdout), wall=wall)


def treeCpu(pid: int) -> tuple[float, float]:
    """
    CPU seconds (user and system) used so far by process C{pid} alone, and
    by it and its live children, from C{/proc/PID/stat}: a server's parent,
    and the parent with its workers.
    """
    ticks = rootTicks = 0
    for process, fields in processStats():
        used = int(fields[11]) + int(fields[12])  # utime, stime
        if process == pid:
            rootTicks = used
        if process == pid or int(fields[1]) == pid:
            ticks += used
    perSecond = os.sysconf("SC_CLK_TCK")
    return rootTicks / perSecond, ticks / perSecond


@dataclass(frozen=True)
class Measurement:
    """
    One client run against one server, with the server's CPU shares (CPU
    seconds per second of the client's run) of its whole process tree and of
    its parent process alone.
    """

    result: LoadResult
    serverShare: float
    parentShare: float


def measure(
    binary: Path,
    serverPid: int,
    mode: str,
    port: int,
    total: int,
    connections: int = 1,
    timeout: float = 60.0,
) -> Measurement:
    """
    L{run} the client against the server whose process tree is C{serverPid},
    reading the tree's CPU time before and after.
    """
    parentBefore, before = treeCpu(serverPid)
    result = run(binary, mode, port, total, connections, timeout=timeout)
    parentAfter, after = treeCpu(serverPid)
    return Measurement(
        result,
        (after - before) / result.wall,
        (parentAfter - parentBefore) / result.wall,
    )


@dataclass
class Series:
    """
    The runs of one mode against one server, summarised.
    """

    runs: list[Measurement] = field(default_factory=list)

    def add(self, measurement: Measurement) -> None:
        self.runs.append(measurement)

    @property
    def rate(self) -> Summary:
        return Summary.of([m.result.rate for m in self.runs])

    def _median(self, values: list[float | None]) -> float:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else float("nan")

    @property
    def p50(self) -> float:
        return self._median([m.result.p50 for m in self.runs])

    @property
    def p99(self) -> float:
        return self._median([m.result.p99 for m in self.runs])

    @property
    def errors(self) -> int:
        return sum(m.result.errors for m in self.runs)

    @property
    def firstError(self) -> str:
        return next((m.result.firstError for m in self.runs if m.result.errors), "")

    def latency(self) -> str:
        """
        C{"p50 … ms, p99 … ms"}: the medians of the runs' percentiles.
        """
        return f"p50 {self.p50 * 1e3:.3f} ms, p99 {self.p99 * 1e3:.3f} ms"

    def cpu(self, parent: str = "") -> str:
        """
        The median CPU shares of the load client and of the server tree
        (1.0 = one core busy), and of the server's C{parent} process alone
        if it is named.
        """
        client = statistics.median(m.result.cpuShare for m in self.runs)
        server = statistics.median(m.serverShare for m in self.runs)
        text = f"client {client:.2f}, server {server:.2f}"
        if parent:
            share = statistics.median(m.parentShare for m in self.runs)
            text += f" ({parent} {share:.2f})"
        return text


def cpuRow(
    scenario: str, ours: dict[str, Series], baseline: dict[str, Series]
) -> list[str]:
    """
    The report row of the CPU shares of the load client and the servers,
    for each mode (ours with its parent process alone beside its tree).
    """
    return [
        f"{scenario} CPU in cores: load client vs server process tree (medians)",
        "; ".join(f"{name} {series.cpu('parent')}" for name, series in ours.items()),
        "; ".join(f"{name} {series.cpu()}" for name, series in baseline.items()),
        "-",
    ]


def errorNotes(
    prefix: str, ours: dict[str, Series], baselineName: str, baseline: dict[str, Series]
) -> list[str]:
    """
    A note for each mode and server that got wrong or missing replies.
    """
    return [
        f"{prefix}{name} {who}: {series.errors} wrong or missing replies"
        f" (first: {series.firstError})"
        for name, oursSeries in ours.items()
        for who, series in (("taskservice", oursSeries), (baselineName, baseline[name]))
        if series.errors
    ]
