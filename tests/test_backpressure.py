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
from taskservice.server import TaskServerFactory, TaskServerProtocol
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


def test_tooManyInFlightPausesReading() -> None:
    """
    At maxInFlight unanswered calls the server stops reading; it resumes
    when half of them have been answered; every call is answered.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=4)
    for i in range(3):
        protocol.dataReceived(request(i))
    assert transport.producerState == "producing"
    protocol.dataReceived(request(3))
    assert transport.producerState == "paused"
    worker = reactor.workers[0]
    worker.reply(2)
    assert transport.producerState == "paused", "3 still in flight"
    worker.reply(2)
    assert transport.producerState == "producing", "down to half"
    reactor.runAllCalls(pool.registry)
    replies = [json.loads(line) for line in transport.value().splitlines()]
    assert sorted(r["id"] for r in replies) == [0, 1, 2, 3]


def test_replyBacklogAndInFlightTogether() -> None:
    """
    Reading resumes only when both the write buffer has drained and the
    in-flight calls are down.
    """
    reactor, pool, protocol, transport = connect(maxInFlight=2)
    protocol.dataReceived(request(0) + request(1))
    protocol.pauseProducing()
    reactor.runAllCalls(pool.registry)
    assert transport.producerState == "paused", "the client is not reading"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_floodingClientIsThrottled() -> None:
    """
    A real client that pours 3,000 slow calls onto one connection gets
    exactly maxInFlight of them accepted: the server stops reading, the rest
    waits in the kernel's socket buffers, and another client is served at
    once. When the flooder goes away, its queued calls are dropped unrun
    (while reading is paused the server notices the close on its next write,
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
        assert pool.stats()["running"] == 2, "running calls are left to finish"
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
