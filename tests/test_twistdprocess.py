"""
L{taskservice.testing.Twistd}, the one starter of C{twistd taskservice}
subprocesses for the tests and the benchmarks: the listeners it adds on
free ports for each mode (unit tests: nothing is spawned), then a real
twistd waited for, killed, restarted on the same files and ports, and
reaped with its workers.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from taskservice.testing import Twistd, TwistdFailed


def _added(twistd: Twistd) -> list[str]:
    """The options Twistd added to the ones given."""
    return [a for a in twistd.args[::2] if a.startswith("--")]


def test_freePortsForWhatTheModeRuns(tmp_path: Path) -> None:
    """
    With no listener given, the default mode gets --listen, --websocket
    and --smtp-sink on distinct free loopback ports; --no-websocket no
    --websocket; the gateway alone (--task-server) only --websocket;
    --smtp and --no-smtp-sink no sink. --metrics is added only if given.
    """
    both = Twistd(tmp_path)
    assert _added(both) == ["--listen", "--websocket", "--smtp-sink"]
    assert set(both.ports) == {"listen", "websocket", "smtp-sink"}
    assert len(set(both.ports.values())) == 3 and all(both.ports.values())
    assert both.argv[:5] == [
        both.argv[0],
        "-n",
        "--pidfile=",
        "taskservice",
        "--listen",
    ]
    assert both.argv[0].endswith("/twistd")

    alone = Twistd(tmp_path, "--no-websocket")
    assert set(alone.ports) == {"listen", "smtp-sink"}
    gateway = Twistd(tmp_path, "--task-server", "tcp:127.0.0.1:1")
    assert set(gateway.ports) == {"websocket"}
    assert set(Twistd(tmp_path, "--no-smtp-sink").ports) == {"listen", "websocket"}
    assert set(Twistd(tmp_path, "--smtp", "mail:25").ports) == {"listen", "websocket"}


def test_givenListenersAreKept(tmp_path: Path) -> None:
    """
    A listener given (either spelling) is left as given and its port read
    from it (0 for "any"); a UNIX socket has no port; --metrics counts.
    """
    given = (
        "--listen=tcp:4711:interface=127.0.0.1",
        "--websocket",
        "tcp:0:interface=127.0.0.1",
        "--metrics",
        "tcp:port=9109",
        "--no-smtp-sink",
    )
    twistd = Twistd(tmp_path, *given)
    assert twistd.ports == {"listen": 4711, "websocket": 0, "metrics": 9109}
    assert twistd.port == 4711
    assert twistd.args == given
    unix = Twistd(tmp_path, "--listen", "unix:/tmp/t.sock", "--no-websocket")
    assert "listen" not in unix.ports


def test_notStarted(tmp_path: Path) -> None:
    """
    Before start() there is no process to ask about, and stop() is a
    no-op.
    """
    twistd = Twistd(tmp_path)
    with pytest.raises(RuntimeError, match="not started"):
        twistd.exited()
    twistd.stop()
    assert twistd.output() == ""


@pytest.mark.integration
def test_killRestartAndReap(tmp_path: Path) -> None:
    """
    A real twistd: ready() once its ports answer; SIGKILL, then restart()
    on the same port and files (its output appended), answering again;
    stop() leaves no process of it (its workers included).
    """
    with Twistd(tmp_path, "--workers", "1", "--no-websocket") as server:
        server.ready()
        first = server.pid
        assert len(server.family()) == 2  # twistd and its worker
        server.kill()
        assert server.wait() == -signal.SIGKILL
        with pytest.raises(RuntimeError, match="is running"):
            server.restart().start()
        assert server.pid != first
        server.connect().close()
        output = server.waitForOutput("TaskServerFactory starting on")
        assert output.count("starting up.") == 2, output
    assert server.family() == []


@pytest.mark.integration
def test_exitBeforeListeningFailsAtOnce(tmp_path: Path) -> None:
    """
    connect() fails with the twistd's output as soon as it exits (here on
    a usage error), not after its deadline; so does waitForOutput().
    """
    with Twistd(tmp_path, "--workers", "0") as server:
        with pytest.raises(TwistdFailed, match="--workers") as caught:
            server.connect(deadline=600)
        assert "exited 1 before listening" in str(caught.value)
        with pytest.raises(TwistdFailed, match="exited without writing"):
            server.waitForOutput("never written", deadline=600)
