"""
TaskClientProtocol on an in-memory transport, and TaskClient against a real
task server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from taskservice.client import TaskClient, TaskClientProtocol
from taskservice.errors import MethodNotFound, TaskFailed, TimedOut, Unavailable
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory

_case = SynchronousTestCase()


def connected() -> tuple[TaskClientProtocol, StringTransport]:
    protocol = TaskClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def sent(transport: StringTransport) -> list[dict[str, Any]]:
    lines = transport.value().splitlines()
    transport.clear()
    return [json.loads(line) for line in lines]


def test_requestsAreMatchedById() -> None:
    """
    Each request gets a fresh id; responses arriving out of order resolve
    the right Deferreds; errors become the exception of their code.
    """
    protocol, transport = connected()
    first = protocol.request("echo", ["a"])
    second = protocol.request("add", {"a": 1, "b": 2})
    third = protocol.request("nope")
    assert sent(transport) == [
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["a"]},
        {"jsonrpc": "2.0", "id": 2, "method": "add", "params": {"a": 1, "b": 2}},
        {"jsonrpc": "2.0", "id": 3, "method": "nope"},
    ]
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":2,"result":3}\n')
    assert _case.successResultOf(second) == 3
    _case.assertNoResult(first)
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"not found"}}\n'
        b'{"jsonrpc":"2.0","id":1,"result":"a"}\n'
    )
    assert _case.successResultOf(first) == "a"
    _case.failureResultOf(third, MethodNotFound)
    assert protocol.inFlight == 0


def test_progressAndTaskErrors() -> None:
    """
    Progress notifications reach the call's callback without their id; a
    task error carries the remote type and message.
    """
    protocol, transport = connected()
    updates: list[dict[str, Any]] = []
    d = protocol.request("count", [2], onProgress=updates.append)
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","method":"$/progress","params":{"id":1,"done":1,"total":2}}\n'
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"ValueError: x",'
        b'"data":{"type":"ValueError","message":"x"}}}\n'
    )
    assert updates == [{"done": 1, "total": 2}]
    error = _case.failureResultOf(d, TaskFailed).value
    assert (error.remoteType, error.remoteMessage) == ("ValueError", "x")


def test_cancelSendsCancelRequest() -> None:
    """
    Cancelling a call sends $/cancelRequest for its id, fails the call with
    CancelledError once, and ignores the server's later answer.
    """
    protocol, transport = connected()
    d = protocol.request("sleep", [10])
    sent(transport)
    d.cancel()
    _case.failureResultOf(d, CancelledError)
    assert sent(transport) == [
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}}
    ]
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"cancelled"}}\n'
    )


def test_connectionLostFailsInFlightCalls() -> None:
    """
    A lost connection fails every call in flight at once with Unavailable,
    and later calls on that protocol fail the same way.
    """
    protocol, transport = connected()
    calls = [protocol.request("sleep", [1]) for _ in range(3)]
    protocol.connectionLost(Failure(ConnectionDone()))
    for d in calls:
        error = _case.failureResultOf(d, Unavailable).value
        assert error.message == "connection to the task server lost"
    _case.failureResultOf(protocol.request("echo", [1]), Unavailable)


def test_malformedLinesFromTheServer() -> None:
    """
    Garbage from the server is logged and does not disturb calls in flight.
    """
    protocol, transport = connected()
    d = protocol.request("echo", [1])
    protocol.dataReceived(b'not json\n[1,2]\n"x"\n')
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":1,"result":1}\n')
    assert _case.successResultOf(d) == 1


def test_positionalOrKeywordNotBoth() -> None:
    """
    JSON-RPC params are by position or by name: passing both is refused.
    """
    client = TaskClient(reactor, "tcp:127.0.0.1:1")
    with pytest.raises(TypeError, match="not both"):
        client.call("add", 1, b=2)
    _case.failureResultOf(client.call("echo", 1), Unavailable)


# -- against a real server ---------------------------------------------------


class Server:
    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool
        self.factory = TaskServerFactory(pool)
        self.port: Any = None
        self.portNumber = 0

    async def listen(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, self.portNumber, interface="127.0.0.1")
        self.port = await endpoint.listen(self.factory)
        self.portNumber = self.port.getHost().port

    async def stopListening(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    pool = ProcessPool(reactor, ["tests.pooltasks", "taskservice.examples"], size=2)
    pool.startService()
    await pool.whenReady()
    server = Server(pool)
    await server.listen()
    yield server
    await server.stopListening()
    await pool.stopService()


@pytest_twisted.async_yield_fixture
async def client(server: Server) -> AsyncIterator[TaskClient]:
    client = TaskClient(reactor, f"tcp:127.0.0.1:{server.portNumber}")
    client.startService()
    yield client
    await client.stopService()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_manyCallsOneConnection(server: Server, client: TaskClient) -> None:
    """
    Many concurrent calls share one persistent connection.
    """
    results = await gatherResults([client.call("add", i, i) for i in range(200)])
    assert results == [2 * i for i in range(200)]
    stats = await client.request("$/stats")
    assert stats["connections"] == 1
    assert await client.call("echo", value={"nested": ["ü", 1.5]}) == {
        "nested": ["ü", 1.5]
    }


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_progressAndCancel(server: Server, client: TaskClient) -> None:
    """
    Progress reaches the callback over the network; cancelling a running
    call kills its worker and fails the Deferred with CancelledError.
    """
    updates: list[dict[str, Any]] = []
    assert await client.request("count", [5], onProgress=updates.append) == 5
    assert [u["done"] for u in updates] == [1, 2, 3, 4, 5]
    d = client.call("sleep", 30)
    while not any(w.calls for w in server.pool.workers):
        await deferLater(reactor, 0.01, lambda: None)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    with pytest.raises(TimedOut):
        await client.call("hang", 2)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_serverGoneAndBack(server: Server, client: TaskClient) -> None:
    """
    When the server goes away, calls in flight fail at once with
    Unavailable, new calls fail at once, and the client reconnects by itself
    when the server is back.
    """
    assert await client.call("add", 1, 1) == 2
    inFlight = client.call("sleep", 5)
    await server.stopListening()
    for connection in list(_serverConnections(server)):
        connection.transport.abortConnection()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await inFlight
    with pytest.raises(Unavailable):
        await client.call("add", 1, 1)
    assert time.monotonic() - started < 1.0
    await server.listen()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert await client.call("add", 2, 2) == 4
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the client did not reconnect"
            await deferLater(reactor, 0.05, lambda: None)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_unreachableAtStart() -> None:
    """
    A client whose server is not there fails its first call promptly with
    Unavailable naming the reason.
    """
    probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    port = probe.getHost().port
    await probe.stopListening()
    client = TaskClient(reactor, f"tcp:127.0.0.1:{port}")
    client.startService()
    try:
        with pytest.raises(Unavailable) as raised:
            await client.call("echo", 1)
        assert "refused" in str(raised.value.data)
    finally:
        await client.stopService()


def _serverConnections(server: Server) -> list[Any]:
    return list(server.factory.protocols)


def test_abandonSendsCancelOnlyIfQueued() -> None:
    """
    Abandoning a call asks the server to drop it only if it has not started,
    fails it at once with CancelledError, and ignores the late answer.
    """
    protocol, transport = connected()
    d = protocol.request("sleep", [10])
    other = protocol.request("echo", [1])
    sent(transport)
    protocol.abandon(d)
    _case.failureResultOf(d, CancelledError)
    assert sent(transport) == [
        {
            "jsonrpc": "2.0",
            "method": "$/cancelRequest",
            "params": {"id": 1, "onlyIfQueued": True},
        }
    ]
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":1,"result":10}\n')
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":2,"result":1}\n')
    assert _case.successResultOf(other) == 1


def test_timeoutMember() -> None:
    """
    A call's own deadline goes on the wire as the request's "timeout"
    member; without one, no member is sent.
    """
    protocol, transport = connected()
    protocol.request("sleep", [1], timeout=2.5)
    protocol.request("sleep", [1])
    assert sent(transport) == [
        {"jsonrpc": "2.0", "id": 1, "method": "sleep", "params": [1], "timeout": 2.5},
        {"jsonrpc": "2.0", "id": 2, "method": "sleep", "params": [1]},
    ]


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_noDelayBothWays(server: Server, client: TaskClient) -> None:
    """
    Both ends of a task connection disable Nagle's algorithm: small replies
    and progress must not wait for a delayed ACK (measured: 40 ms per round
    trip on a connection also carrying progress, 1 ms without).
    """
    await client.call("echo", 1)
    (serverSide,) = server.factory.protocols
    assert serverSide.transport.getTcpNoDelay()
    assert client._protocol is not None
    assert client._protocol.transport.getTcpNoDelay()


def test_lateAnswerToACancelledCallIsQuiet() -> None:
    """
    The server's answer to a call we cancelled is expected, not an error:
    nothing is logged at error level for it; an answer to an id we never
    used still is.
    """
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol, transport = connected()
        d = protocol.request("sleep", [10])
        d.cancel()
        _case.failureResultOf(d, CancelledError)
        protocol.dataReceived(
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"cancelled"}}\n'
        )
        assert not [
            e for e in events if e.get("log_level") and e["log_level"].name == "error"
        ]
        protocol.dataReceived(
            b'{"jsonrpc":"2.0","id":99,"error":{"code":-32800,"message":"cancelled"}}\n'
        )
        assert [
            e for e in events if e.get("log_level") and e["log_level"].name == "error"
        ]
    finally:
        globalLogPublisher.removeObserver(events.append)
