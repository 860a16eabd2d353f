"""
Soak: thousands of calls over a real connection while workers are killed,
calls time out and calls are cancelled at random. Every call gets exactly
one reply; no process or file descriptor leaks; the pool ends whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater

from taskservice._lines import LineProtocol
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory

pytestmark = pytest.mark.integration

CALLS = 3000


class Collector(LineProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.replies: list[dict[str, Any]] = []

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        if "id" in message:
            self.replies.append(message)

    def lineTooLong(self) -> None:
        raise AssertionError("no reply should be this long")

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(message).encode() + b"\n")


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                found.add(int(entry))
    return found


def _fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        # (The descriptor listdir itself used is gone by now.)
        with contextlib.suppress(OSError):
            found.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    return found


def _plan(rng: random.Random) -> list[tuple[str, list[Any]]]:
    calls: list[tuple[str, list[Any]]] = [("add", [i, 1]) for i in range(CALLS)]
    for index, call in zip(
        rng.sample(range(CALLS), 20 + 4 + 100 + 200),
        [("hang", [5])] * 20
        + [("crash", [9])] * 4
        + [("sleep", [0.05])] * 100
        + [("nap", [0.05])] * 200,
        strict=True,
    ):
        calls[index] = call
    return calls


@pytest_twisted.ensureDeferred
async def test_soak() -> None:
    """
    3,000 calls, 20 of them past their deadline, 4 that crash their worker,
    4 workers SIGKILLed from outside, 60 cancellations at random moments:
    each request id is answered exactly once, with a result or the error
    its fate implies; afterwards the pool has its 4 workers, and once it is
    stopped no child process or descriptor remains.
    """
    rng = random.Random(20261128)
    pool = ProcessPool(reactor, ["tests.pooltasks", "taskservice.examples"], size=4)
    pool.startService()
    await pool.whenReady()
    factory = TaskServerFactory(pool)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    # Taken after the first listen: Twisted reserves a descriptor then, for
    # good (to survive running out of them), and our workers are running.
    fdsBefore = _fds()
    client = await TCP4ClientEndpoint(
        reactor, "127.0.0.1", port.getHost().port
    ).connect(Factory.forProtocol(Collector))
    plan = _plan(rng)
    cancelled = set(rng.sample(range(CALLS), 60))
    killed = 0
    try:
        for start in range(0, CALLS, 250):
            for i in range(start, start + 250):
                method, params = plan[i]
                client.send(
                    {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                )
            await deferLater(reactor, rng.uniform(0, 0.05), lambda: None)
            for i in cancelled & set(range(start, start + 250)):
                client.send(
                    {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": i}}
                )
            if killed < 4 and start % 500 == 0:
                victim = rng.choice([w for w in pool.workers if w.pid])
                os.kill(victim.pid, signal.SIGKILL)
                killed += 1
        deadline = time.monotonic() + 90
        while len(client.replies) < CALLS and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)

        counts = Counter(r["id"] for r in client.replies)
        assert set(counts) == set(range(CALLS)), "every id is answered"
        assert set(counts.values()) == {1}, "and exactly once"
        outcomes = Counter(
            r["error"]["code"] if "error" in r else "result" for r in client.replies
        )
        for reply in client.replies:
            method = plan[reply["id"]][0]
            if "result" in reply:
                assert method not in ("hang", "crash")
            else:
                code = reply["error"]["code"]
                assert code in (-32001, -32002, -32800), reply
                if code == -32800:
                    assert reply["id"] in cancelled
                if code == -32001:
                    assert method == "hang"
        assert outcomes[-32001] + outcomes[-32800] >= 20 - len(cancelled)
        assert outcomes[-32002] >= 4
        await pool.whenReady()
        assert len(pool.workers) == 4
        # A cancelled call may still hold its worker for the moment the
        # worker takes to confirm (its caller has had the reply already).
        deadline = time.monotonic() + 10
        while pool.stats()["running"] or pool.stats()["queued"]:
            stuck = [
                (w, c.spec.name, c.abandoned, c.deferred.called)
                for w in pool.workers
                for c in w.calls.values()
            ]
            assert time.monotonic() < deadline, stuck
            await deferLater(reactor, 0.05, lambda: None)
    finally:
        client.transport.loseConnection()
        await port.stopListening()
        await pool.stopService()
    assert _children() == set(), "no worker outlives the pool"
    await deferLater(reactor, 0.1, lambda: None)
    assert _fds() <= fdsBefore, "no descriptor leaked"
