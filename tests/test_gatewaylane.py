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

from taskservice._frames import RESULTS_FD, frame
from taskservice._gatewayprotocol import _BrowserCall
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


class RawBrowser(Browser):
    """
    A browser that also keeps each message's bytes as they came.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        super().onMessage(payload, isBinary)


def test_browserCallsTakeTheLeanLane() -> None:
    """
    Beside the pool a browser's task call is the pool's own call with no
    Deferred at all (the session is its sink, as on the task server), and
    the worker's result JSON goes into the reply as the worker wrote it,
    not decoded and encoded again.
    """
    h = LaneHarness()
    browser = h.connectBrowser(RawBrowser)
    browser.call(1, "add", 1, 2)
    h.flush()
    [inFlight] = h.gateway().session._inFlight.values()
    assert isinstance(inFlight, _BrowserCall)
    call = inFlight.call
    [worker] = h.reactor.alive
    [message] = worker.calls
    worker.calls.clear()
    worker.protocol.childDataReceived(
        RESULTS_FD,
        frame(b'{"op":"result","cid":%d,"result":[1, 2.50]}' % message["cid"]),
    )
    h.flush()
    assert browser.raw == [b'{"jsonrpc":"2.0","id":1,"result":[1, 2.50]}']
    assert call._deferred is None
    assert inFlight.called
    stats = h.factory.stats()
    assert (stats["calls"], stats["inFlight"], stats["errors"]) == (1, 0, 0)
    assert h.factory.callOutcomes == {"ok": 1}


def test_leanLaneCountsErrorsAndRefusals() -> None:
    """
    On the lean lane a task's error and a call the pool refuses at once
    (its queue is full, told before the pool's start returns) are counted
    and answered as through a Deferred (the same counts as on main).
    """
    h = LaneHarness()
    h.pool._scheduler.maxQueue = 1  # (the rig makes its pool with the default)
    browser = h.browser()
    for requestId in (1, 2, 3):
        browser.call(requestId, "add", requestId, 0)
    h.flush()
    [refused] = browser.take()
    assert (refused["id"], refused["error"]["code"]) == (3, -32003)
    [worker] = h.reactor.alive
    worker.raise_("ValueError", "no")
    h.run()
    replies = sorted(browser.take(), key=lambda m: m["id"])
    assert replies[0]["error"]["code"] == -32000
    assert replies[1] == {"jsonrpc": "2.0", "id": 2, "result": 2}
    stats = h.factory.stats()
    assert (stats["calls"], stats["inFlight"], stats["errors"]) == (3, 0, 2)
    # ("overloaded" counts the gateway's own refusals: none here.)
    assert stats["overloaded"] == 0
    assert h.factory.callOutcomes == {"ok": 1, "task_error": 1, "overloaded": 1}


def test_noLeanLaneThroughAClient() -> None:
    """
    A gateway in front of a task server through a client has no lean lane:
    every call goes through the client, as before.
    """
    h = Harness()
    h.browser()
    h.flush()
    [protocol] = list(h.factory.browsers)
    assert protocol.startCall is None
    assert protocol.session._lane is None
    lane = LaneHarness()
    lane.browser()
    lane.flush()
    assert lane.gateway().session._lane is not None
