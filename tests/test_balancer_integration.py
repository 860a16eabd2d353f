"""
Several task servers behind one gateway, as an operator runs them: two
C{twistd taskservice --no-websocket} task servers and a C{twistd taskservice}
gateway given both with C{--task-server}, all real processes on loopback,
called by a websocket client in the test's reactor. One task server is
SIGKILLed mid-run (the machine went away), then started again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from taskservice.testing import Twistd, freePort
from tests.test_gateway_integration import Browser, openBrowser
from tests.test_twistd import DEADLINE, HOST

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
NAP = 0.3


@contextmanager
def taskServer(directory: Path, port: int) -> Iterator[Twistd]:
    """
    A task server (no gateway) with two workers running L{tests.tasks}.
    """
    directory.mkdir(exist_ok=True)
    with Twistd(
        directory,
        "--no-websocket",
        "--no-smtp-sink",
        "--workers",
        "2",
        "--tasks",
        "tests.tasks",
        "--listen",
        f"tcp:{port}:interface={HOST}",
    ) as server:
        server.connect(port).close()
        yield server


async def stats(browser: Browser, requestId: str) -> dict[str, Any]:
    browser.call(requestId, "$/stats")
    reply = await browser.next()
    assert reply["id"] == requestId, reply
    result: dict[str, Any] = reply["result"]
    return result


async def until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, 0.1, lambda: None)


@pytest.fixture
def pythonPath(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The twistd processes import L{tests.tasks} from this checkout.
    """
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


@pytest.mark.usefixtures("pythonPath")
@pytest_twisted.ensureDeferred
async def test_twoTaskServersOneKilledMidRun(tmp_path: Path) -> None:
    """
    The gateway spreads calls over both servers. One is SIGKILLed with
    calls running and queued on it: every call gets exactly one reply;
    idempotent calls that were on it are answered by the other server, the
    others get -32006 at once; the survivor keeps serving. Started again,
    the lost server is brought back and takes calls again.
    """
    portA, portB, wsPort = freePort(), freePort(), freePort()
    with ExitStack() as stack:
        a = stack.enter_context(taskServer(tmp_path / "a", portA))
        stack.enter_context(taskServer(tmp_path / "b", portB))
        gateway = stack.enter_context(
            Twistd(
                tmp_path,
                "--task-server",
                f"tcp:{HOST}:{portA}",
                "--task-server",
                f"tcp:{HOST}:{portB}",
                "--websocket",
                f"tcp:{wsPort}:interface={HOST}",
            )
        )
        gateway.connect(wsPort).close()
        browser = await openBrowser(wsPort)

        async def bothUp() -> list[dict[str, Any]] | None:
            servers: list[dict[str, Any]] = (await stats(browser, "up"))["taskServers"]
            return servers if all(s["up"] for s in servers) else None

        servers = await until("both task servers up", bothUp)
        assert [s["server"] for s in servers] == [
            f"tcp:{HOST}:{portA}",
            f"tcp:{HOST}:{portB}",
        ]

        # Spread: 40 echoes in flight at once go to both servers (the
        # gateway's own $/stats calls count too: compare before and after).
        before = [s["calls"] for s in servers]
        for i in range(40):
            browser.call(i, "echo", i)
        replies = [await browser.next() for _ in range(40)]
        assert sorted(r["result"] for r in replies) == list(range(40))
        spread = (await stats(browser, "spread"))["taskServers"]
        sent = [s["calls"] - b for s, b in zip(spread, before, strict=True)]
        assert sent in ([20, 21], [21, 20]), spread

        # Mid-run: 20 idempotent and 20 plain naps, then server A dies.
        calls = {f"n{i}": "nap" for i in range(20)} | {
            f"o{i}": "nap_once" for i in range(20)
        }
        # In pairs (n0 n1 o0 o1 n2 ...): calls go to the servers in turn, so
        # each server gets both kinds.
        for i in range(0, 20, 2):
            for requestId in (f"n{i}", f"n{i + 1}", f"o{i}", f"o{i + 1}"):
                browser.call(requestId, calls[requestId], NAP)
        await deferLater(reactor, NAP / 2, lambda: None)
        a.process.send_signal(signal.SIGKILL)
        answers: dict[str, list[dict[str, Any]]] = {}
        while len(answers) < len(calls):
            reply = await browser.next()
            answers.setdefault(reply["id"], []).append(reply)
        # Nothing more arrives: exactly one reply each.
        browser.call("after", "echo", "still here")
        late = await browser.next()
        assert late == {"jsonrpc": "2.0", "id": "after", "result": "still here"}
        assert all(len(r) == 1 for r in answers.values()), answers
        outcomes = {i: r[0] for i, r in answers.items()}
        for requestId, reply in outcomes.items():
            if calls[requestId] == "nap":
                assert reply.get("result") == NAP, reply
        lost = [r for r in outcomes.values() if "error" in r]
        assert lost, "some plain calls were on the killed server"
        for reply in lost:
            assert reply["id"].startswith("o"), reply
            assert reply["error"]["code"] == -32006, reply
            assert reply["error"]["message"] == "connection to the task server lost"
        status = (await stats(browser, "after-kill"))["taskServers"]
        assert [s["up"] for s in status] == [False, True]
        assert status[0]["retried"] > 0, status

        # Calls go on, to the survivor only.
        for i in range(10):
            browser.call(f"s{i}", "echo", i)
        assert sorted([(await browser.next())["result"] for _ in range(10)]) == list(
            range(10)
        )

        # Server A comes back on its port: the gateway reconnects and uses it.
        stack.enter_context(taskServer(tmp_path / "a2", portA))
        await until("server A back", bothUp)
        before = (await stats(browser, "before"))["taskServers"][0]["calls"]
        for i in range(10):
            browser.call(f"b{i}", "echo", i)
        for _ in range(10):
            assert "result" in await browser.next()
        after = (await stats(browser, "back"))["taskServers"][0]["calls"]
        assert after > before
        browser.sendClose()
        await browser.closed


@pytest.mark.usefixtures("pythonPath")
@pytest_twisted.ensureDeferred
async def test_noTaskServerReachable(tmp_path: Path) -> None:
    """
    With neither task server running, a browser's call is answered -32006
    at once, and the gateway keeps serving.
    """
    wsPort = freePort()
    with Twistd(
        tmp_path,
        "--task-server",
        f"tcp:{HOST}:{freePort()}",
        "--task-server",
        f"tcp:{HOST}:{freePort()}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
    ) as gateway:
        gateway.connect(wsPort).close()
        browser = await openBrowser(wsPort)
        for attempt in range(2):
            browser.call(attempt, "echo", "anyone?")
            reply = await browser.next()
            assert reply["id"] == attempt
            assert reply["error"]["code"] == -32006, reply
        assert "no task server is reachable" in reply["error"]["message"]
        assert "Connection refused" in reply["error"]["data"]["reason"]
        browser.sendClose()
        await browser.closed
