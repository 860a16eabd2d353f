"""
Backpressure: a client that floods calls, or does not read its replies,
is slowed down by TCP instead of growing the server's memory.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport

from taskservice.pool import ProcessPool
from taskservice.server import HOLD_LIMIT, TaskServerFactory, TaskServerProtocol
from taskservice.testing import FakeProcessReactor


def request(i: int, method: str = "add", params: Any = (1, 1)) -> bytes:
    return (
        json.dumps(
            {"jsonrpc": "2.0", "id": i, "method": method, "params": list(params)}
        ).encode()
        + b"\n"
    )


def connect(
    maxInFlight: int = 4, size: int = 1
) -> tuple[FakeProcessReactor, ProcessPool, TaskServerProtocol, StringTransport]:
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=size)
    pool.startService()
    reactor.readyAll()
    factory = TaskServerFactory(pool, maxInFlight=maxInFlight)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return reactor, pool, protocol, transport


def test_registersAsStreamingProducer() -> None:
    """
    The protocol is a streaming producer for its own transport, so a full
    write buffer (a client not reading) pauses reading from that client.
    """
    reactor, pool, protocol, transport = connect()
    assert transport.producer is protocol and transport.streaming
    protocol.pauseProducing()
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_callsPastTheLimitWaitInOrder() -> None:
    """
    At maxInFlight calls in the pool, further calls wait on the connection,
    unparsed by the pool, and start in arrival order as earlier ones finish;
    every call is answered.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=2)
    for i in range(5):
        protocol.dataReceived(request(i, "add", (i, 0)))
    worker = reactor.workers[0]
    assert pool.stats()["running"] + pool.stats()["queued"] == 2
    assert transport.producerState == "producing", "a few waiting lines are fine"
    worker.reply(0)
    assert [c["args"] for c in worker.calls] == [[1, 0]]
    reactor.runAllCalls(pool.registry)
    replies = [json.loads(line) for line in transport.value().splitlines()]
    assert [r["id"] for r in replies] == [0, 1, 2, 3, 4]
    assert [r["result"] for r in replies] == [0, 1, 2, 3, 4]


def test_tooMuchWaitingPausesReading() -> None:
    """
    Past HOLD_LIMIT bytes of waiting lines the server stops reading from the
    client; it resumes when half of that has started.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=1)
    line = request(0, "echo", ["x" * 100_000])
    protocol.dataReceived(request(99, "add", (1, 1)))
    sent = 0
    while transport.producerState == "producing":
        protocol.dataReceived(line.replace(b'"id": 0', b'"id": %d' % sent))
        sent += 1
    assert sent * len(line) > HOLD_LIMIT
    assert sent * len(line) <= HOLD_LIMIT + len(line)
    reactor.runAllCalls(pool.registry)
    assert transport.producerState == "producing"
    replies = [json.loads(line) for line in transport.value().splitlines()]
    assert len(replies) == sent + 1


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_floodingClientIsThrottled() -> None:
    """
    A real client that pours 3,000 slow calls onto one connection gets
    exactly maxInFlight of them into the pool (the rest wait on its own
    connection, and past HOLD_LIMIT bytes in its socket), and another client
    is served at once. When the flooder goes away, its queued calls are dropped unrun
    (the close is noticed when the server next writes to the connection,
    when a running call answers).
    """
    pool = ProcessPool(reactor, ["taskservice.examples"], size=2)
    pool.startService()
    await pool.whenReady()
    factory = TaskServerFactory(pool, maxInFlight=50)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    address = ("127.0.0.1", port.getHost().port)
    flood = socket.create_connection(address)
    other = socket.create_connection(address)
    try:
        flood.sendall(b"".join(request(i, "sleep", [1]) for i in range(3000)))
        await _until(lambda: pool.stats()["running"] == 2)
        await _until(lambda: pool.stats()["queued"] == 48)
        await deferLater(reactor, 0.2, lambda: None)
        assert pool.stats()["queued"] == 48, "nothing more was read"
        assert pool.stats()["maxQueue"] > 48
        # Another client is served meanwhile: echo needs a worker, so send
        # a protocol call that does not.
        other.sendall(b'{"jsonrpc":"2.0","id":1,"method":"$/stats"}\n')
        reply = json.loads(await _recvLine(other))
        assert reply["result"]["queued"] == 48
        flood.close()
        await _until(lambda: pool.stats()["queued"] == 0)
        await _until(lambda: pool.stats()["running"] == 0)
        # The calls running when the close was noticed finished; the
        # thousands still waiting never ran.
        assert pool.stats()["completed"] < 20
    finally:
        flood.close()
        other.close()
        await port.stopListening()
        pool.shutdownTimeout = 0.1
        await pool.stopService()


async def _until(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await deferLater(reactor, 0.01, lambda: None)


async def _recvLine(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """
    Read one line without blocking the reactor.
    """
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + seconds
    while not data.endswith(b"\n"):
        assert time.monotonic() < deadline, "no reply in time"
        try:
            data += sock.recv(65536)
        except BlockingIOError:
            await deferLater(reactor, 0.01, lambda: None)
    return data


def test_cancelOnlyIfQueued() -> None:
    """
    C{$/cancelRequest} with C{onlyIfQueued} drops a call that has not
    started (answered -32800) and leaves a running one to finish normally.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=10, size=1)
    protocol.dataReceived(request(1, "add", (1, 1)) + request(2, "add", (2, 2)))
    for i in (1, 2):
        protocol.dataReceived(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "$/cancelRequest",
                    "params": {"id": i, "onlyIfQueued": True},
                }
            ).encode()
            + b"\n"
        )
    worker = reactor.workers[0]
    assert not worker.killed
    reactor.runAllCalls(pool.registry)
    replies = {r["id"]: r for r in map(json.loads, transport.value().splitlines())}
    assert replies[1]["result"] == 2
    assert replies[2]["error"]["code"] == -32800
    assert [c["args"] for c in worker.messages if c.get("op") == "call"] == [[1, 1]]


def test_malformedSeedLinesAnsweredInTurn() -> None:
    """
    A malformed Workerman-dialect line is answered in that dialect
    ({"error": ...}) and in its turn: after the dialect call before it.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=10, size=1)
    protocol.dataReceived(
        b'{"function":"add","args":[1,2]}\n'
        b'{"function":5}\n'
        b'{"function":"add","args":[3,4]}\n'
    )
    assert transport.value() == b""
    reactor.runAllCalls(pool.registry)
    lines = [json.loads(line) for line in transport.value().splitlines()]
    assert lines[0] == 3
    assert lines[1]["error"]["code"] == -32600
    assert set(lines[1]) == {"error"}
    assert lines[2] == 7


def test_tooLongLineAnswersWithItsLeadingId() -> None:
    """
    A request line over the limit is answered -32004 with its id when the
    id leads the line (as TaskClient writes it), so the caller's call is
    not left waiting; the connection keeps working.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=10, size=1)
    protocol.maxLineLength = 100
    protocol.dataReceived(request(5, "echo", ["x" * 200]))
    protocol.dataReceived(request(6, "add", (1, 1)))
    reactor.runAllCalls(pool.registry)
    replies = [json.loads(line) for line in transport.value().splitlines()]
    assert replies[0]["id"] == 5 and replies[0]["error"]["code"] == -32004
    assert replies[1] == {"jsonrpc": "2.0", "id": 6, "result": 2}
