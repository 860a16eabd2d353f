"""
A throwaway PostgreSQL cluster for the tests and the benchmark: C{initdb}
and C{pg_ctl} from Debian's C{postgresql} package, on a temporary directory,
listening on a free loopback port and on a UNIX socket in that directory.

PostgreSQL refuses to run as root: when run as root (a fresh CI machine),
the cluster runs as the unprivileged user C{nobody}, through C{runuser}, on
a directory handed to it. For the tests C{fsync} is off (the cluster is
thrown away, and they do not measure its durability); the benchmark asks
for a durable one (PostgreSQL's defaults: every commit flushed).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "taskservice"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
UNPRIVILEGED = "nobody"


def binDir() -> Path | None:
    """
    The directory of C{initdb} and C{pg_ctl}, the newest version first, or
    L{None} where PostgreSQL's server binaries are not installed.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()],
        reverse=True,
    )
    pgConfig = shutil.which("pg_config")
    if pgConfig is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [pgConfig, "--bindir"],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            if found:
                candidates.append(found)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Cluster:
    """
    A running cluster: C{dsn(dbname)} connects to one of its databases over
    loopback TCP as its superuser (trust authentication, loopback only).
    """

    directory: Path
    port: int
    bindir: Path
    asUser: str | None
    pid: int

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgresql.log"

    def stop(self) -> None:
        """
        Stop the cluster (a fast shutdown of its postmaster, by its pid),
        then delete its directory.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        end = time.monotonic() + STOP_TIMEOUT
        while _alive(self.pid) and time.monotonic() < end:
            time.sleep(0.05)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _run(command: Sequence[str], asUser: str | None, cwd: Path) -> None:
    if asUser is not None:
        command = ["runuser", "-u", asUser, "--", *command]
    done = subprocess.run(
        command,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        # The server must not be killed with the test's process group.
        start_new_session=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def start(bindir: Path, *, durable: bool = False) -> Cluster:
    """
    initdb a new cluster in a temporary directory and start it; with
    C{durable}, commits are flushed to disk as by default (else not).
    """
    asUser = UNPRIVILEGED if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="taskservice-pg-"))
    try:
        if asUser is not None:
            entry = pwd.getpwnam(asUser)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        data = directory / "data"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            asUser,
            directory,
        )
        port = _freePort()
        settings = [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={directory}",
            "-c max_connections=200",
        ]
        if not durable:
            settings += [
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        _run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-D",
                str(data),
                "-l",
                str(directory / "postgresql.log"),
                "-o",
                " ".join(settings),
            ],
            asUser,
            directory,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except BaseException:
        pidFile = directory / "data" / "postmaster.pid"
        if pidFile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidFile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Cluster(directory, port, bindir, asUser, pid)
