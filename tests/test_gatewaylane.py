"""
The gateway in front of the pool of the task server in its own process
(L{PoolCaller}, as C{twistd taskservice} wires it): browsers' task calls go
to the pool's own Deferreds (L{PoolCaller.submitRequest}), with the same
outcomes, cancel, abandonment and counters as through a client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from txaio.testutil import replace_loop

from taskservice._poolcaller import PoolCaller
from taskservice.gateway import GatewayFactory, GatewaySite
from taskservice.testing import FakeProcessReactor
from tests.test_gateway import Browser, Harness, error


class LaneHarness(Harness):
    """
    L{Harness} with the gateway calling the task server's pool directly.
    """

    def __init__(self, **gatewayOptions: Any) -> None:
        super().__init__(**gatewayOptions)
        self.caller = PoolCaller(self.server)
        self.factory = GatewayFactory(self.reactor, self.caller, **gatewayOptions)
        self.site = GatewaySite(self.factory, web=Path("/nonexistent"))
        assert self.factory.lane is self.caller

    def gateway(self) -> Any:
        [protocol] = [b for b in self.factory.browsers if b._open]
        return protocol


@pytest.fixture(autouse=True)
def fakeLoop() -> Iterator[None]:
    with replace_loop(FakeProcessReactor()):
        yield


def test_callsGoToThePoolsOwnDeferred() -> None:
    """
    A browser's call is the pool's call: no second Deferred in front, the
    browser's protocol its owner; the result comes back with its id.
    """
    h = LaneHarness()
    browser = h.browser()
    browser.call(1, "add", 1, 2)
    h.flush()
    [d] = h.gateway().session._inFlight.values()
    assert h.caller._upstream == {}
    [worker] = h.reactor.alive
    assert worker.calls
    h.run()
    assert browser.take() == [{"jsonrpc": "2.0", "id": 1, "result": 3}]
    assert d.called
    stats = h.factory.stats()
    assert (stats["calls"], stats["inFlight"], stats["errors"]) == (1, 0, 0)
    assert h.factory.callOutcomes["ok"] == 1


def test_errorsProgressAndCancel() -> None:
    """
    The pool's errors, a task's progress and $/cancelRequest reach the
    browser as through a client.
    """
    h = LaneHarness()
    browser = h.browser()
    browser.call(1, "nope")
    browser.call(2, "add", 1)
    h.flush()
    assert [m["error"]["code"] for m in browser.take()] == [-32601, -32602]
    browser.call(3, "count", 2)
    h.flush()
    [worker] = h.reactor.alive
    worker.progress({"done": 1, "total": 2})
    h.flush()
    assert browser.take() == [
        {
            "jsonrpc": "2.0",
            "method": "$/progress",
            "params": {"done": 1, "total": 2, "id": 3},
        }
    ]
    browser.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 3}})
    h.flush()
    assert browser.take() == [error(3, -32800, "cancelled")]
    assert worker.killed
    assert h.factory.stats()["cancelled"] == 1
    assert h.factory.stats()["inFlight"] == 0


def test_browserGoneAbandonsItsCalls() -> None:
    """
    When a browser goes, its queued call is dropped from the pool, its
    running call finishes unheard (its worker is not killed), and both end
    for the gateway at once, counted cancelled, as a client's abandoned
    calls do; the late result is counted nowhere.
    """
    h = LaneHarness()
    browser, other = h.browser(), h.browser()
    browser.call(1, "add", 1, 1)
    browser.call(2, "add", 2, 2)
    other.call(1, "add", 3, 3)
    h.flush()
    [worker] = h.reactor.alive
    assert (h.pool.stats()["running"], h.pool.stats()["queued"]) == (1, 2)
    browser.dropConnection(abort=True)
    h.flush()
    assert not worker.killed
    assert h.pool.stats()["queued"] == 1
    stats = h.factory.stats()
    assert (stats["abandoned"], stats["inFlight"], stats["connections"]) == (2, 1, 1)
    assert h.factory.callOutcomes["cancelled"] == 2
    h.run()
    assert h.pool.stats()["completed"] == 2
    assert other.take() == [{"jsonrpc": "2.0", "id": 1, "result": 6}]
    assert h.factory.stats()["inFlight"] == 0
    assert h.factory.callOutcomes == {"cancelled": 2, "ok": 1}


def test_notificationKeepsRunningWhenTheBrowserGoes() -> None:
    """
    A notification's call belongs to nobody: the browser going does not
    drop it from the queue.
    """
    h = LaneHarness()
    browser: Browser = h.browser()
    browser.call(1, "add", 1, 1)
    browser.send({"jsonrpc": "2.0", "method": "add", "params": [5, 5]})
    h.flush()
    assert h.pool.stats()["queued"] == 1
    browser.dropConnection(abort=True)
    h.flush()
    assert h.pool.stats()["queued"] == 1
    h.run()
    assert h.pool.stats()["completed"] == 2
    assert h.factory.stats()["inFlight"] == 0


def test_statsThroughTheLane() -> None:
    """
    $/stats is the gateway's document with the task server's own inside.
    """
    h = LaneHarness()
    browser = h.browser()
    browser.call(1, "$/stats")
    h.flush()
    [reply] = browser.take()
    assert reply["result"]["gateway"]["connections"] == 1
    assert reply["result"]["taskServer"]["workers"]["size"] == 1
