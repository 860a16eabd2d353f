"""
C{twistd taskservice} with its websocket gateway, as an operator runs it: a
real C{twistd} subprocess (see L{tests.test_twistd}) with the task server
and the gateway on free loopback ports, called by autobahn's Twisted
websocket client in the test's reactor.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from taskservice.testing import Twistd, freePort
from tests.test_gateway_integration import openBrowser
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("taskPort", ["free", "0"])
@pytest_twisted.ensureDeferred
async def test_websocketCallThroughTwistd(tmp_path: Path, taskPort: str) -> None:
    """
    twistd taskservice serves the gateway beside the task server, the
    gateway reaching it at the --listen address (or, for port 0, wherever
    it was bound): a browser's call and $/stats go through to a worker;
    on SIGTERM the browser is told 1001 (going away) and twistd stops
    cleanly, leaving no process behind.
    """
    listenPort = freePort() if taskPort == "free" else 0
    wsPort = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:{listenPort}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
    ) as server:
        server.connect(wsPort).close()
        browser = await openBrowser(wsPort)
        browser.call(1, "echo", "through the gateway")
        assert await browser.next() == {
            "jsonrpc": "2.0",
            "id": 1,
            "result": "through the gateway",
        }
        browser.call(2, "$/stats")
        stats = (await browser.next())["result"]
        assert stats["gateway"]["connections"] == 1
        assert stats["taskServer"]["workers"]["size"] == 1

        server.process.send_signal(signal.SIGTERM)
        wasClean, code, reason = await browser.closed
        assert code == 1001, (wasClean, code, reason)
        deadline = time.monotonic() + DEADLINE
        while server.exited() is None:
            assert time.monotonic() < deadline, server.output()
            await deferLater(reactor, 0.05, lambda: None)
        output = server.output()
        assert server.exited() == -signal.SIGTERM, output
        assert "Traceback" not in output, output
        while server.family():
            assert time.monotonic() < deadline, "workers left behind"
            await deferLater(reactor, 0.05, lambda: None)


def test_websocketPortInUse(tmp_path: Path) -> None:
    """
    When the gateway's port is taken, twistd exits non-zero naming it,
    without starting a worker (every listener binds before the pool starts).
    """
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        wsPort = squatter.getsockname()[1]
        with Twistd(
            tmp_path,
            "--workers",
            "1",
            "--listen",
            f"tcp:{freePort()}:interface={HOST}",
            "--websocket",
            f"tcp:{wsPort}:interface={HOST}",
        ) as server:
            returncode = waitFor("twistd to exit", server.exited)
            output = server.output()
            assert returncode == 1, output
            assert f"{HOST}:{wsPort}" in output, output
            assert "is in use" in output and "--websocket" in output, output
            assert "started worker" not in output, output
            waitFor(
                "no process of it to be left", lambda: server.family() == [] or None
            )
