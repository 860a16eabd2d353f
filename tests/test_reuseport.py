"""
--reuse-port: several task servers sharing one port. The endpoint on real
loopback sockets, the options, and two real C{twistd} task servers.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage

from taskservice._reuseport import ReusePortEndpoint
from taskservice.testing import Twistd, freePort
from tests.test_tap import parse
from tests.test_twistd import HOST, waitFor

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_twoListenersShareAPort() -> None:
    """
    Two listeners with SO_REUSEPORT bind the same port, and connections to
    it are accepted; a plain bind of that port is refused.
    """
    port = freePort()
    factory = Factory.forProtocol(Protocol)
    first = await ReusePortEndpoint(reactor, port, HOST).listen(factory)
    second = await ReusePortEndpoint(reactor, port, HOST).listen(factory)
    try:
        assert first.getHost().port == second.getHost().port == port
        for _ in range(4):
            socket.create_connection((HOST, port), timeout=5).close()
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind((HOST, port))
    finally:
        await maybeDeferred(first.stopListening)
        await maybeDeferred(second.stopListening)


@pytest_twisted.ensureDeferred
async def test_bindErrorIsCannotListen() -> None:
    """
    A port taken without SO_REUSEPORT: the listen fails with
    CannotListenError (twistd reports it and exits).
    """
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(CannotListenError):
            await ReusePortEndpoint(reactor, port, HOST).listen(
                Factory.forProtocol(Protocol)
            )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--listen", "tcp:0:interface=127.0.0.1"], "fixed port"),
        (["--listen", "unix:/tmp/tasks.sock"], "plain tcp:"),
        (["--task-server", "tcp:h:1"], "--task-server"),
    ],
)
def test_reusePortNeeds(args: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError) as raised:
        parse("--reuse-port", *args)
    assert complaint in str(raised.value)


def _stats(port: int) -> dict[str, object]:
    with socket.create_connection((HOST, port), timeout=30) as connection:
        connection.sendall(b'{"jsonrpc":"2.0","id":1,"method":"$/stats"}\n')
        reply = json.loads(connection.makefile("rb").readline())
    result: dict[str, object] = reply["result"]
    return result


def test_twoTwistdShareThePort(tmp_path: Path) -> None:
    """
    Two twistd task servers with --reuse-port on one port both serve it
    (told apart by their pool sizes); when one stops, the other goes on
    alone.
    """
    port = freePort()
    common = ["--no-websocket", "--no-smtp-sink", "--reuse-port"]
    listen = ["--listen", f"tcp:{port}:interface={HOST}"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        Twistd(tmp_path / "a", *common, *listen, "--workers", "1") as a,
        Twistd(tmp_path / "b", *common, *listen, "--workers", "2"),
    ):
        a.connect(port).close()

        def bothAnswered() -> set[int] | None:
            sizes = {
                _stats(port)["workers"]["size"]  # type: ignore[index]
                for _ in range(20)
            }
            return sizes if sizes == {1, 2} else None

        assert waitFor("both servers to answer", bothAnswered) == {1, 2}
        a.process.terminate()
        a.process.wait(timeout=60)
        sizes = {_stats(port)["workers"]["size"] for _ in range(10)}  # type: ignore[index]
        assert sizes == {2}
