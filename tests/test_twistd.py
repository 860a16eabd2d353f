"""
C{twistd taskservice} as an operator runs it: a real C{twistd} subprocess
(the test environment's own script, from a directory that is not the source
tree), real worker processes, a real loopback socket.

These tests block on subprocesses and sockets, so they are plain (not
reactor-driven) test functions. Every twistd of the tests is a
L{taskservice.testing.Twistd}: it finds whatever a test leaves behind (by an
environment marker its workers inherit) and kills it on the way out.
"""

from __future__ import annotations

import errno
import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taskservice import tap
from taskservice._twistdprocess import (
    DEADLINE,
    HOST,
    POLL,
    ProcessInfo,
    cmdline,
    isAlive,
    processes,
)
from taskservice.testing import Twistd, freePort

pytestmark = pytest.mark.integration


T = TypeVar("T")


def waitFor(what: str, check: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """
    Call C{check} until it returns something other than None (returned), or
    fail after C{deadline} seconds.
    """
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what}")
        time.sleep(POLL)


def call(connection: socket.socket, reader: Any, request: bytes) -> Any:
    """
    Send one request line; read and decode one reply line.
    """
    connection.sendall(request)
    line: bytes = reader.readline()
    assert line.endswith(b"\n"), line
    return json.loads(line)


def test_serveThenStopOnSIGTERM(tmp_path: Path) -> None:
    """
    twistd taskservice with 2 workers answers JSON-RPC and the Workerman
    FAQ dialect on loopback, reports its 2 workers in $/stats; on SIGTERM
    it shuts down in order (exit status: killed by the re-raised SIGTERM,
    which a shell shows as 143) and leaves no worker process behind.
    """
    port = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "2",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--no-websocket",
    ) as server:
        connection = server.connect(port)
        with connection, connection.makefile("rb") as reader:
            assert call(
                connection,
                reader,
                b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["hi"]}\n',
            ) == {"jsonrpc": "2.0", "id": 1, "result": "hi"}
            assert (
                call(
                    connection, reader, b'{"function":"echo","args":{"value":"seed"}}\n'
                )
                == "seed"
            )
            stats = call(
                connection, reader, b'{"jsonrpc":"2.0","id":2,"method":"$/stats"}\n'
            )
        assert stats["id"] == 2, stats
        assert stats["result"]["workers"]["size"] == 2, stats

        def twoWorkers() -> list[ProcessInfo] | None:
            children = [
                p
                for p in processes()
                if p.ppid == server.process.pid
                and "taskservice.worker" in cmdline(p.pid)
            ]
            return children if len(children) == 2 else None

        workers = waitFor("two worker processes", twoWorkers)
        # The marker finds exactly twistd and its workers, so the check
        # after the stop (nothing marked is left) means something.
        assert {p.pid for p in server.family()} == {
            server.process.pid,
            *(w.pid for w in workers),
        }

        server.process.send_signal(signal.SIGTERM)
        try:
            returncode = server.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twistd still running after SIGTERM:\n{server.output()}")
        output = server.output()
        # twistd re-raises the SIGTERM after its orderly shutdown: the
        # process dies of the signal (Popen reports -15; a shell, 143).
        assert returncode == -signal.SIGTERM, output
        assert "Server Shut Down." in output, output
        assert "Traceback" not in output, output
        waitFor(
            "the workers to exit",
            lambda: True if not any(isAlive(w) for w in workers) else None,
        )
        assert server.family() == []


def test_sigtermDrainsCallsInFlight(tmp_path: Path) -> None:
    """
    SIGTERM while calls are running and queued: twistd stops accepting
    connections, every call already sent is run and answered (including the
    queued one), the connection is then closed, and twistd exits with no
    worker left.
    """
    port = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "2",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--no-websocket",
    ) as server:
        connection = server.connect(port)
        with connection, connection.makefile("rb") as reader:
            for i, seconds in enumerate([1.0, 1.0, 0.2], 1):
                connection.sendall(
                    b'{"jsonrpc":"2.0","id":%d,"method":"sleep","params":[%g]}\n'
                    % (i, seconds)
                )
            probe = server.connect(port)
            with probe, probe.makefile("rb") as probeReader:

                def runningAndQueued() -> bool | None:
                    stats = call(
                        probe,
                        probeReader,
                        b'{"jsonrpc":"2.0","id":0,"method":"$/stats"}\n',
                    )["result"]
                    return (
                        True if (stats["running"], stats["queued"]) == (2, 1) else None
                    )

                waitFor("two calls running and one queued", runningAndQueued)
            server.process.send_signal(signal.SIGTERM)
            replies = [json.loads(reader.readline()) for _ in range(3)]
            assert reader.readline() == b"", "closed after the last reply"
        assert sorted(r["id"] for r in replies) == [1, 2, 3]
        assert all("result" in r for r in replies), replies
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
        assert server.process.wait(timeout=DEADLINE) == -signal.SIGTERM
        waitFor("no process left", lambda: True if not server.family() else None)


def test_portInUse(tmp_path: Path) -> None:
    """
    When the listening port is taken, twistd does not run half-up: it
    exits non-zero, promptly, naming the address that is in use, and
    starts no worker (the listener binds before the pool starts).
    """
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with Twistd(
            tmp_path,
            "--workers",
            "2",
            "--listen",
            f"tcp:{port}:interface={HOST}",
            "--no-websocket",
        ) as server:
            returncode = waitFor("twistd to exit", server.exited)
            output = server.output()
            assert returncode == 1, output
            assert f"{HOST}:{port}" in output, output
            assert "is in use" in output and "--listen" in output, output
            waitFor(
                "no process of it to be left", lambda: server.family() == [] or None
            )


def test_missingTaskModule(tmp_path: Path) -> None:
    """
    --tasks naming a module that does not exist makes twistd exit non-zero
    with a message naming that module (as given, not just its missing
    top-level package), without listening or starting workers.
    """
    port = freePort()
    with Twistd(
        tmp_path,
        "--tasks",
        "no.such.module",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--no-websocket",
    ) as server:
        returncode = waitFor("twistd to exit", server.exited)
        output = server.output()
        assert returncode == 1, output
        assert "no.such.module" in output, output
        waitFor("no process of it to be left", lambda: server.family() == [] or None)


def test_connectionPerCallBurstFitsTheBacklog(tmp_path: Path) -> None:
    """
    300 callers that each open a connection at the same moment, the
    Workerman FAQ's pattern, all complete their TCP handshake even while
    the server does not accept for a while (here: stopped with SIGSTOP):
    the default backlog (4096) holds them, where Twisted's default of 50
    dropped the SYNs past it and those callers retried a second later.
    Once the server runs again, every one is answered, its FAQ-dialect
    line sent without a newline before its FIN.
    """
    callers = 300
    cap = tap.somaxconn()
    if cap is not None and cap < callers:
        pytest.skip(f"net.core.somaxconn is {cap}: the kernel caps the backlog")
    port = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--no-websocket",
    ) as server:
        server.connect(port).close()
        sockets: list[socket.socket] = []
        server.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(callers):
                s = socket.socket()
                s.setblocking(False)
                sockets.append(s)
                assert s.connect_ex((HOST, port)) in (0, errno.EINPROGRESS)

            def allConnected() -> bool | None:
                _, writable, _ = select.select([], sockets, [], 0.1)
                return True if len(writable) == callers else None

            waitFor(f"{callers} handshakes", allConnected, deadline=5.0)
            assert all(
                s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in sockets
            )
        finally:
            server.process.send_signal(signal.SIGCONT)
        try:
            for i, s in enumerate(sockets):
                s.setblocking(True)
                s.settimeout(DEADLINE)
                s.sendall(b'{"function":"echo","args":[%d]}' % i)
                s.shutdown(socket.SHUT_WR)
            for i, s in enumerate(sockets):
                with s.makefile("rb") as reader:
                    assert reader.read() == b"%d\n" % i
        finally:
            for s in sockets:
                s.close()


def test_noWebsocketStatsTellTheSink(tmp_path: Path) -> None:
    """
    Under --no-websocket, where no gateway's /stats reports it, the task
    server's own $/stats carries the demo SMTP sink's count: after the
    FAQ's send_mail to one real address (and its placeholder 'xxx',
    skipped), it says 1.
    """
    port = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--no-websocket",
    ) as server:
        connection = server.connect(port)
        with connection, connection.makefile("rb") as reader:
            assert call(
                connection,
                reader,
                b'{"function":"send_mail","args":{"from":"xxx",'
                b'"to":["xxx","a@example.com"],"contents":"xxx"}}\n',
            ) == {"sent": 1, "skipped": ["xxx"]}
            stats = call(
                connection, reader, b'{"jsonrpc":"2.0","id":1,"method":"$/stats"}\n'
            )
    assert stats["result"]["smtpSink"] == {"received": 1, "duplicates": 0}, stats


def test_secondTwistdNamesTheBusyPort(tmp_path: Path) -> None:
    """
    A second C{twistd taskservice} on the same machine, given the first's
    ports, exits with status 1 before starting anything and names the busy
    port and the option that moves it: the task server's (--listen), the
    gateway's (--websocket), the demo SMTP sink's (--smtp-sink) and
    /metrics' (--metrics), each in turn as the others are moved.
    """
    ports = {
        name: freePort() for name in ("listen", "websocket", "smtp-sink", "metrics")
    }

    def argv(moved: set[str]) -> list[str]:
        args = ["--workers", "1", "--jobs-db", ":memory:"]
        for name, port in ports.items():
            args += [
                f"--{name}",
                f"tcp:{freePort() if name in moved else port}:interface={HOST}",
            ]
        return args

    first = tmp_path / "first"
    first.mkdir()
    with Twistd(first, *argv(set())) as server:
        waitFor(
            "the first twistd to listen", lambda: _listening(ports.values()) or None
        )
        moved: set[str] = set()
        for name, port in ports.items():
            second = tmp_path / f"second-{name}"
            second.mkdir()
            with Twistd(second, *argv(moved)) as other:
                returncode = waitFor("the second twistd to exit", other.exited)
                output = other.output()
                assert returncode == 1, output
                assert f"--{name} tcp:{port}:interface={HOST}:" in output, output
                assert f"{HOST}:{port} is in use" in output, output
                assert f"move it with --{name} tcp:PORT" in output, output
                assert "Traceback" not in output, output
            moved.add(name)
        assert server.exited() is None, server.output()


def _listening(ports: Iterable[int]) -> bool:
    """
    Whether every one of C{ports} on the loopback accepts a connection.
    """
    for port in ports:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
    return True
