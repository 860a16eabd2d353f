"""
L{Twistd}: one real C{twistd -n taskservice} subprocess, for integration
tests and benchmarks (exported by L{taskservice.testing}). Options go in;
its ports, pid, output and stop come out. It picks a free loopback port for
each listener its mode runs that the options do not place, waits for
readiness by a port answering or a line in its output (never a sleep),
signals it (SIGTERM, SIGKILL, SIGSTOP...), starts it again on the same
files and ports, and always reaps it and its workers.

Its workers run in sessions of their own, so neither their parent nor
their process group finds them once twistd is gone: each twistd gets a
unique marker in its environment, which its workers inherit, and whatever
is left of it is found by that marker (in C{/proc}: Linux) and killed.

Standard library only: nothing here imports Twisted or the service.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from taskservice._endpoints import portNumber, portOf

HOST = "127.0.0.1"
TWISTD = Path(sys.executable).parent / "twistd"
"""The twistd script of this environment (a virtual environment's own)."""
DEADLINE = 60.0
"""Seconds a wait gives up after: generous, for a loaded shared machine."""
POLL = 0.05
"""Seconds between two looks while waiting (a port, a line, an exit)."""

LISTENERS = ("listen", "websocket", "smtp-sink", "metrics")
"""The options naming an endpoint C{twistd taskservice} listens on, as
L{Twistd.ports} names them."""

T = TypeVar("T")


class TwistdFailed(AssertionError):
    """
    The twistd did not do what was waited for (it exited first, or the
    deadline passed); the message holds its output.
    """


def poll(what: str, check: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """
    Call C{check} every L{POLL} seconds until it returns something other
    than L{None} (returned), at most C{deadline} seconds.

    @raise TwistdFailed: the deadline passed.
    """
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > end:
            raise TwistdFailed(f"timed out after {deadline}s waiting for {what}")
        time.sleep(POLL)


def freePort(host: str = HOST) -> int:
    """
    A TCP port on C{host} that nothing listens on now (the kernel's pick),
    for a test or benchmark that starts a real server on it.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- processes, from /proc ------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    state: str
    ppid: int
    startTime: int


def _readStat(pid: int) -> ProcessInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid, state=fields[0], ppid=int(fields[1]), startTime=int(fields[19])
    )


def processes() -> list[ProcessInfo]:
    """Every live (not zombie) process on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _readStat(int(entry))
            if info is not None and info.state != "Z":
                found.append(info)
    return found


def isAlive(process: ProcessInfo) -> bool:
    """The same process (not a recycled pid) still exists and is no zombie."""
    now = _readStat(process.pid)
    return now is not None and now.startTime == process.startTime and now.state != "Z"


def marked(marker: bytes) -> list[ProcessInfo]:
    """The live processes whose environment holds C{marker}."""
    found = []
    for process in processes():
        try:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in environ.split(b"\0"):
            found.append(process)
    return found


def cmdline(pid: int) -> list[str]:
    """A process's command line ([] once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")


# -- the twistd ---------------------------------------------------------------


def _given(args: Sequence[str], option: str) -> str | None:
    """The value of C{--option} in C{args} (C{--option V} or C{--option=V})."""
    flag = f"--{option}"
    found = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg[len(flag) + 1 :]
    return found


def _runs(args: Sequence[str], option: str) -> bool:
    """Whether the mode C{args} choose runs the listener of C{option}."""
    gatewayAlone = "--task-server" in args and "--no-websocket" not in args
    if option == "listen":
        return not gatewayAlone
    if option == "websocket":
        return "--no-websocket" not in args
    if option == "smtp-sink":
        return not (
            gatewayAlone or "--no-smtp-sink" in args or _given(args, "smtp") is not None
        )
    return False  # --metrics: only where asked for


class Twistd:
    """
    C{twistd -n --pidfile= TWISTD_OPTIONS taskservice ARGS} in C{directory},
    its output (standard output and error) to C{log} (default
    C{directory/twistd.out}; C{Path(os.devnull)} keeps none); a context
    manager that starts it and, on the way out, kills whatever is
    left of it and of its workers.

    Each of C{--listen}, C{--websocket} and C{--smtp-sink} that the mode of
    C{args} runs (C{--no-websocket}: no gateway; C{--task-server}: the
    gateway alone; C{--smtp}/C{--no-smtp-sink}: no sink) and C{args} do not
    give is added on a free loopback port, so no twistd takes the demo's
    fixed ports. L{ports} has the TCP port of every listener, given or
    added (0 where C{args} said any).

    @ivar log: the output file (appended to by a restart).
    @ivar marker: the environment entry its processes carry.
    """

    def __init__(
        self,
        directory: Path,
        *args: str,
        twistdOptions: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.directory = directory
        added: list[str] = []
        self.ports: dict[str, int] = {}
        for option in LISTENERS:
            description = _given(args, option)
            if description is None and _runs(args, option):
                description = f"tcp:{freePort()}:interface={HOST}"
                added += [f"--{option}", description]
            if description is not None:
                port = portNumber(portOf(description))
                if port is not None:
                    self.ports[option] = port
        self.args = (*args, *added)
        self.argv = [str(TWISTD), "-n", "--pidfile=", *twistdOptions, "taskservice"]
        self.argv += self.args
        self.log = directory / "twistd.out" if log is None else log
        name, value = "TASKSERVICE_TEST_TWISTD", uuid.uuid4().hex
        self.marker = f"{name}={value}".encode()
        self._env = {**os.environ, **(env or {}), name: value}
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Twistd {self.directory} ports={self.ports}>"

    # -- life ---------------------------------------------------------------------

    def start(self) -> Twistd:
        """
        Spawn it (again, after it exited: same files, same ports, output
        appended). It is not waited for: see L{connect}, L{ready},
        L{waitForOutput}.
        """
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"{self!r} is running (pid {self._process.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                self.argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        return self

    def restart(self, deadline: float = DEADLINE) -> Twistd:
        """
        Once it has exited (L{kill} or L{terminate} first), start it again
        on the same files and ports.
        """
        self.wait(deadline)
        poll("no process of the last run left", lambda: not self.family() or None)
        return self.start()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running (or last) process."""
        if self._process is None:
            raise RuntimeError(f"{self!r} was not started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        """The task server's port (C{--listen}'s)."""
        return self.ports["listen"]

    def signal(self, number: int) -> None:
        """Send it signal C{number} (C{signal.SIGSTOP}, say)."""
        self.process.send_signal(number)

    def terminate(self) -> None:
        """SIGTERM: an orderly shutdown."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: its workers are left to notice their parent is gone."""
        self.signal(signal.SIGKILL)

    def exited(self) -> int | None:
        """Its exit status (C{-N}: killed by signal N), or L{None} if running."""
        return self.process.poll()

    def wait(self, deadline: float = DEADLINE) -> int:
        """
        Its exit status, once it has exited.

        @raise TwistdFailed: still running after C{deadline} seconds.
        """
        try:
            return self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            raise TwistdFailed(
                f"twistd still running after {deadline}s:\n{self.output()}"
            ) from None

    def stop(self, graceful: float | None = None) -> None:
        """
        End it and reap it: SIGTERM and up to C{graceful} seconds first if
        given, then SIGKILL; then SIGKILL whatever is left of its workers.
        """
        process = self._process
        if process is None:
            return
        if graceful is not None and process.poll() is None:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=graceful)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE)
        for leftover in self.family():
            if isAlive(leftover):
                with suppress(ProcessLookupError):
                    os.kill(leftover.pid, signal.SIGKILL)

    def __enter__(self) -> Twistd:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- looking at it --------------------------------------------------------------

    def output(self) -> str:
        """What it wrote so far (every run's)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def family(self) -> list[ProcessInfo]:
        """
        The live processes this twistd started, itself included: those
        that inherited its environment marker.
        """
        return marked(self.marker)

    def connect(
        self, port: int | str = "listen", deadline: float = DEADLINE
    ) -> socket.socket:
        """
        A connection to C{port} (a number, or a listener's name in
        L{ports}) once it accepts one.

        @raise TwistdFailed: it exited first (its output in the message),
            or nothing accepted within C{deadline} seconds.
        """
        number = self.ports[port] if isinstance(port, str) else port

        def attempt() -> socket.socket | None:
            status = self.exited()
            if status is not None:
                raise TwistdFailed(
                    f"twistd exited {status} before listening on {number}:\n"
                    f"{self.output()}"
                )
            try:
                return socket.create_connection((HOST, number), timeout=DEADLINE)
            except OSError:
                return None

        return poll(f"twistd to listen on {HOST}:{number}", attempt, deadline)

    def ready(self, *names: str, deadline: float = DEADLINE) -> Twistd:
        """
        Wait until each listener C{names} (default: all in L{ports} with a
        fixed port) accepts a connection.
        """
        for name in names or [n for n, p in self.ports.items() if p]:
            self.connect(name, deadline).close()
        return self

    def waitForOutput(self, text: str, deadline: float = DEADLINE) -> str:
        """
        Wait until C{text} is in its output; return the output.

        @raise TwistdFailed: it exited first without writing it.
        """

        def written() -> str | None:
            output = self.output()
            if text in output:
                return output
            if self.exited() is not None:
                raise TwistdFailed(f"twistd exited without writing {text!r}:\n{output}")
            return None

        return poll(f"{text!r} in the output of twistd", written, deadline)

    def waitGone(self, deadline: float = DEADLINE) -> None:
        """Wait until no process of it (twistd or a worker) is left."""
        poll("no process of twistd left", lambda: not self.family() or None, deadline)
