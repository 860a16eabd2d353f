"""
L{Balancer} on fake clients: where calls go, what a lost or unreachable
server does to them, cancel and abandon. The real thing (two twistd task
servers, one killed mid-run) is in test_balancer_integration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from taskservice.balancer import Balancer
from taskservice.errors import (
    Overloaded,
    ServerLost,
    Unavailable,
    Unreachable,
    WorkerLost,
)
from taskservice.server import STATS

UNENCODABLE = object()
"""A param the fake client refuses to encode, as TaskClient does."""


class FakeClient(Service):
    """
    The part of L{TaskClient} a balancer uses; the test moves it up and
    down and answers its calls.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        *,
        token: Any,
        maxRetryDelay: float,
        onUp: Callable[[Any], object],
        onDown: Callable[[Any, str | None], object],
    ) -> None:
        self.endpoint = endpoint
        self.onUp = onUp
        self.onDown = onDown
        self.ready = False
        self.unreachable = False
        self.lastReason: str | None = None
        self.calls: list[tuple[str, Any, Deferred[Any]]] = []
        self.abandoned: list[Deferred[Any]] = []
        self.cancelled: list[str] = []
        self.idempotent: list[str] = []

    def request(
        self,
        method: str,
        params: Any = None,
        *,
        onProgress: Any = None,
        options: Any = None,
    ) -> Deferred[Any]:
        if method == STATS:
            d: Deferred[Any] = Deferred()
            d.callback({"tasks": ["echo", "mail"], "idempotentTasks": self.idempotent})
            return d
        if self.ready and isinstance(params, list) and UNENCODABLE in params:
            # As TaskClient: params are encoded when sent, once connected.
            raise TypeError("params are not JSON-serialisable")
        if self.unreachable:
            d = Deferred()
            d.errback(Unreachable("the task server is unreachable"))
            return d
        d = Deferred(lambda _: self.cancelled.append(method))
        self.calls.append((method, params, d))
        return d

    def attemptFails(self, reason: str) -> None:
        """
        The first connection attempt fails: the calls waiting on it were
        never sent.
        """
        self.ready, self.unreachable, self.lastReason = False, True, reason
        pending, self.calls = self.calls, []
        for _, _, d in pending:
            d.errback(Unreachable("the task server is unreachable", {"reason": reason}))

    def abandon(self, d: Deferred[Any]) -> None:
        self.abandoned.append(d)
        d.errback(CancelledError())

    # -- the test's controls ----------------------------------------------

    def up(self, idempotent: tuple[str, ...] = ("echo",)) -> None:
        self.idempotent = list(idempotent)
        self.ready, self.unreachable, self.lastReason = True, False, None
        self.onUp(self)

    def down(self, reason: str = "Connection was closed cleanly.") -> None:
        self.ready, self.unreachable, self.lastReason = False, True, reason
        pending, self.calls = self.calls, []
        for _, _, d in pending:
            d.errback(
                ServerLost("connection to the task server lost", {"reason": reason})
            )
        self.onDown(self, reason)

    def answer(self, index: int = 0, result: Any = "ok") -> None:
        _, params, d = self.calls.pop(index)
        d.callback(result if result != "params" else params)


def makeBalancer(count: int = 2, up: bool = True) -> tuple[Balancer, list[FakeClient]]:
    balancer = Balancer(
        MemoryReactorClock(),
        [f"tcp:10.0.0.{i + 1}:7000" for i in range(count)],
        makeClient=FakeClient,
    )
    balancer.startService()
    clients = [s.client for s in balancer.servers]
    assert all(isinstance(c, FakeClient) for c in clients)
    fakes: list[FakeClient] = clients  # type: ignore[assignment]
    if up:
        for fake in fakes:
            fake.up()
    return balancer, fakes


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the call has not ended"
    return results[0]


def test_needsAServer() -> None:
    with pytest.raises(ValueError):
        Balancer(MemoryReactorClock(), [], makeClient=FakeClient)


def test_clientsAreChildServices() -> None:
    """
    Starting the balancer starts each server's client, stopping it stops
    them.
    """
    balancer, fakes = makeBalancer()
    assert all(f.running for f in fakes)
    balancer.stopService()
    assert not any(f.running for f in fakes)


def test_sequentialCallsTakeTurns() -> None:
    """
    With nothing outstanding anywhere, calls go to the servers in turn.
    """
    balancer, (a, b) = makeBalancer()
    where = []
    for i in range(4):
        d = balancer.request("echo", [i])
        busy = a if a.calls else b
        where.append(busy.endpoint)
        busy.answer(result="params")
        assert outcome(d) == [i]
    assert where == ["tcp:10.0.0.1:7000", "tcp:10.0.0.2:7000"] * 2


def test_fewestOutstandingWins() -> None:
    """
    A call goes to the server with the fewest calls in flight.
    """
    balancer, (a, b) = makeBalancer()
    for i in range(4):
        balancer.request("echo", [i])
    assert (len(a.calls), len(b.calls)) == (2, 2)
    a.answer()
    a.answer()
    balancer.request("echo", [4])
    balancer.request("echo", [5])
    assert (len(a.calls), len(b.calls)) == (2, 2)
    b.answer()
    balancer.request("echo", [6])
    assert (len(a.calls), len(b.calls)) == (2, 2)
    assert [s["inFlight"] for s in balancer.status()] == [2, 2]


def test_downServerSkippedAndBroughtBack() -> None:
    """
    A server that is down gets no calls; once it is up again it does.
    """
    balancer, (a, b) = makeBalancer()
    a.down()
    for i in range(3):
        balancer.request("echo", [i])
    assert (len(a.calls), len(b.calls)) == (0, 3)
    assert [s["up"] for s in balancer.status()] == [False, True]
    a.up()
    balancer.request("echo", [3])
    assert (len(a.calls), len(b.calls)) == (1, 3)


def test_lostIdempotentCallRetriedOnceElsewhere() -> None:
    """
    An idempotent call in flight on a server that is lost goes to another
    server; its answer there is the caller's.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("echo", ["x"])
    assert len(a.calls) == 1
    a.down()
    assert not d.called
    assert [m for m, _, _ in b.calls] == ["echo"]
    b.answer(result="params")
    assert outcome(d) == ["x"]
    assert [s["retried"] for s in balancer.status()] == [1, 0]


def test_lostIdempotentCallRetriedOnlyOnce() -> None:
    """
    If the second server is lost too, the caller hears it: -32006.
    """
    balancer, (a, b, c) = makeBalancer(3)
    d = balancer.request("echo", ["x"])
    a.down()
    assert len(b.calls) == 1
    b.down()
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(ServerLost)
    assert not c.calls


def test_lostCallNotIdempotentFails() -> None:
    """
    A call whose task is not idempotent is not retried: it fails at once
    with ServerLost (-32006), whose data tells why.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("mail", ["x"])
    a.down("Connection lost.")
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(ServerLost)
    assert failure.value.code == -32006
    assert failure.value.data == {"reason": "Connection lost."}
    assert not b.calls


def test_idempotencyIsTheLostServers() -> None:
    """
    What is idempotent is what the server the call was on said in its
    $/stats, read when it came up.
    """
    balancer, (a, b) = makeBalancer(up=False)
    a.up(idempotent=())
    b.up(idempotent=("echo",))
    d = balancer.request("echo", ["x"])
    assert len(a.calls) == 1
    a.down()
    assert isinstance(outcome(d), Failure)


def test_lostWithNoOtherServerFails() -> None:
    balancer, (a, b) = makeBalancer()
    b.down()
    d = balancer.request("echo", ["x"])
    a.down()
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(ServerLost)


def test_firstConnectionFailedGoesElsewhere() -> None:
    """
    Before any server is known up or down, a call waits on one's first
    connection; if that attempt fails (the call was never sent), another
    server gets it, idempotent or not.
    """
    balancer, (a, b) = makeBalancer(up=False)
    d = balancer.request("mail", ["x"])
    assert len(a.calls) == 1 and not b.calls
    a.attemptFails("Connection refused.")
    assert len(b.calls) == 1
    b.answer(result="params")
    assert outcome(d) == ["x"]
    assert [s["calls"] for s in balancer.status()] == [1, 1]


def test_readyServerPreferredToConnecting() -> None:
    """
    A server still making its first connection gets calls only while no
    server is ready.
    """
    balancer, (a, b) = makeBalancer(up=False)
    b.up()
    for i in range(3):
        balancer.request("mail", [i])
    assert (len(a.calls), len(b.calls)) == (0, 3)


def test_noServerReachable() -> None:
    """
    With every server down a call fails at once with -32006, saying why.
    """
    balancer, (a, b) = makeBalancer()
    a.down("Connection refused.")
    b.down("Connection refused.")
    failure = outcome(balancer.request("echo", ["x"]))
    assert isinstance(failure, Failure) and failure.check(Unreachable)
    assert failure.value.message == "no task server is reachable"
    assert failure.value.data == {
        "reason": "tcp:10.0.0.1:7000: Connection refused.;"
        " tcp:10.0.0.2:7000: Connection refused."
    }


def test_serverErrorsPassThrough() -> None:
    """
    An error the server answered (here: worker lost) is the caller's: the
    server dealt with the call, nothing is retried.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("echo", ["x"])
    _, _, upstream = a.calls.pop()
    upstream.errback(WorkerLost("worker lost", {"signal": 9}))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(WorkerLost)
    assert not b.calls


def test_cancel() -> None:
    """
    Cancelling a call cancels it on its server.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("mail", ["x"])
    d.cancel()
    assert a.cancelled == ["mail"]
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert [s["inFlight"] for s in balancer.status()] == [0, 0]


def test_abandon() -> None:
    """
    Abandoning a call abandons it on its server (left to finish there).
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("mail", ["x"])
    balancer.abandon(d)
    assert len(a.abandoned) == 1
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    balancer.abandon(d)  # again: nothing happens
    assert len(a.abandoned) == 1


def test_notStarted() -> None:
    balancer = Balancer(
        MemoryReactorClock(), ["tcp:10.0.0.1:7000"], makeClient=FakeClient
    )
    failure = outcome(balancer.request("echo", ["x"]))
    assert isinstance(failure, Failure) and failure.check(Unreachable)


def test_call() -> None:
    balancer, (a, b) = makeBalancer()
    d = balancer.call("echo", "x")
    a.answer(result="params")
    assert outcome(d) == ["x"]
    with pytest.raises(TypeError):
        balancer.call("echo", 1, b=2)


def test_statusNamesHideKeyPaths() -> None:
    """
    Servers are named by their endpoint without key or certificate paths.
    """
    balancer = Balancer(
        MemoryReactorClock(),
        [
            "tls:tasks.example.com:7000:trustRoots=/etc/ca:privateKey=/etc/k.pem",
            "unix:path=/run/tasks.sock",
            r"tcp:host=\:\:1:port=7000",
        ],
        makeClient=FakeClient,
    )
    assert [s["server"] for s in balancer.status()] == [
        "tls:tasks.example.com:7000",
        "unix:/run/tasks.sock",
        "tcp:[::1]:7000",
    ]


def test_stoppingServerGetsNoCalls() -> None:
    """
    A server that answers -32006 itself (its pool is stopping: the call did
    not run) gets the call sent elsewhere and no more calls until it
    reconnects: it would otherwise answer fastest and attract them all.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("mail", ["x"])
    _, _, upstream = a.calls.pop()
    upstream.errback(Unavailable("the pool is not running"))
    assert len(b.calls) == 1
    b.answer(result="params")
    assert outcome(d) == ["x"]
    for i in range(3):
        balancer.request("mail", [i])
    assert (len(a.calls), len(b.calls)) == (0, 3)
    a.down()
    a.up()
    balancer.request("mail", [3])
    assert len(a.calls) == 1


def test_allStopping() -> None:
    balancer, (a, b) = makeBalancer()
    for fake in (a, b):
        d = balancer.request("mail", ["x"])
        _, _, upstream = fake.calls.pop()
        upstream.errback(Unavailable("the pool is not running"))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(Unavailable)
    failure = outcome(balancer.request("mail", ["y"]))
    assert isinstance(failure, Failure) and failure.check(Unreachable)
    assert "stopping" in failure.value.data["reason"]


def test_overloadedTriesAnotherServer() -> None:
    """
    -32003 (the call did not run) from one server: another untried server
    gets the call; if every one is full, the caller gets -32003.
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("mail", ["x"])
    _, _, upstream = a.calls.pop()
    upstream.errback(Overloaded("overloaded", {"retryAfter": 1.0}))
    _, _, upstream = b.calls.pop()
    upstream.errback(Overloaded("overloaded", {"retryAfter": 2.0}))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(Overloaded)
    assert failure.value.data == {"retryAfter": 2.0}
    assert not any(s.draining for s in balancer.servers)


def test_unencodableParamsLeaveNothingBehind() -> None:
    """
    Params the client cannot encode raise TypeError (the gateway answers
    -32602), and nothing is counted or kept for the call.
    """
    balancer, (a, b) = makeBalancer()
    with pytest.raises(TypeError):
        balancer.request("mail", [UNENCODABLE])
    assert [s["inFlight"] for s in balancer.status()] == [0, 0]
    assert [s["calls"] for s in balancer.status()] == [0, 0]
    assert not balancer._calls


def test_retryThatCannotRunReportsTheLoss() -> None:
    """
    An idempotent call retried after its server was lost, whose second
    server cannot take it either, fails with the loss (-32006 "connection
    to the task server lost": it may have run), not with "did not run".
    """
    balancer, (a, b) = makeBalancer()
    d = balancer.request("echo", ["x"])
    a.down()
    _, _, upstream = b.calls.pop()
    upstream.errback(Unavailable("the pool is not running"))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(ServerLost)


def test_unencodableParamsOnARetry() -> None:
    """
    Params are encoded only once a client is connected: a call that waited
    on a first connection that failed, resent to a server that then
    refuses its params, fails with that TypeError (it does not hang).
    """
    balancer, (a, b) = makeBalancer(up=False)
    d = balancer.request("mail", [UNENCODABLE])
    assert len(a.calls) == 1
    b.up()
    a.attemptFails("Connection refused.")
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(TypeError)
    assert [s["inFlight"] for s in balancer.status()] == [0, 0]


def test_stoppingServerIsNotUp() -> None:
    balancer, (a, b) = makeBalancer()
    balancer.request("mail", ["x"])
    _, _, upstream = a.calls.pop()
    upstream.errback(Unavailable("the pool is not running"))
    assert [s["up"] for s in balancer.status()] == [False, True]
