"""
The task server over a real TCP socket on 127.0.0.1, with a real
L{ProcessPool} of two worker processes running L{tests.tasks}.

The client side is a small L{LineProtocol} collector that writes raw bytes
and reads whole reply lines, so that malformed input can be sent as is.
Every wait has a safety timeout so that a lost reply fails the test instead
of hanging it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from taskservice import _jsonrpc
from taskservice._lines import LineProtocol
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory, TaskServerProtocol
from tests.badinput import ANY_DATA, BadInput, badInputs

pytestmark = pytest.mark.integration

TASKS = "tests.tasks"
LIMIT = 6 * 1024 * 1024
"""The server's line limit: above the 5 MB echo, so both can be tested."""
SAFETY = 15.0
"""Seconds before a wait fails the test (only ever reached on a bug)."""
BAD_INPUTS = badInputs(LIMIT)


class Collector(LineProtocol):
    """
    A raw client: writes bytes, collects every reply line in order.
    """

    maxLineLength = 64 * 1024 * 1024
    server: TaskServerProtocol
    """The server's side of this connection (set by L{Server.connect})."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self._taken = 0
        self._waiting: tuple[int, Deferred[list[Any]]] | None = None
        self.closed: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.received.append(json.loads(line))
        self._check()

    def lineTooLong(self) -> None:
        raise AssertionError("a reply line over the client's limit")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)
        if self._waiting is not None:
            _, d = self._waiting
            self._waiting = None
            d.errback(reason or Failure(ConnectionDone()))

    def sendRaw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def call(self, requestId: Any, method: str, *params: Any) -> None:
        self.sendRaw(_jsonrpc.line(request(requestId, method, *params)))

    def next(self, count: int = 1) -> Deferred[list[Any]]:
        """
        Fire with the next C{count} messages not taken yet.
        """
        assert self._waiting is None
        d: Deferred[list[Any]] = Deferred()
        self._waiting = (count, d)
        d.addTimeout(SAFETY, reactor)
        self._check()
        return d

    async def one(self) -> Any:
        (message,) = await self.next(1)
        return message

    async def until(self, requestId: Any) -> list[Any]:
        """
        Take messages up to and including the reply to C{requestId}.
        """
        taken = [await self.one()]
        while not (isinstance(taken[-1], dict) and taken[-1].get("id") == requestId):
            taken.append(await self.one())
        return taken

    def _check(self) -> None:
        if self._waiting is None:
            return
        count, d = self._waiting
        if d.called:
            # Timed out: the test has failed already.
            self._waiting = None
            return
        if len(self.received) - self._taken >= count:
            self._waiting = None
            taken = self.received[self._taken : self._taken + count]
            self._taken += count
            d.callback(taken)


class Server:
    """
    The listening server, its pool, and the connections opened to it.
    """

    def __init__(
        self, pool: ProcessPool, factory: TaskServerFactory, port: IListeningPort
    ) -> None:
        self.pool = pool
        self.factory = factory
        self.port = port
        self.clients: list[Collector] = []

    async def connect(self) -> Collector:
        """
        Open a connection, and return once the server has it too.
        """
        before = set(self.factory.protocols)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, Collector())
        self.clients.append(client)
        # A round trip proves the server side is connected.
        client.call("$hello", "$/stats")
        assert (await client.one())["id"] == "$hello"
        (client.server,) = set(self.factory.protocols) - before
        return client

    async def disconnect(self, client: Collector, abort: bool = False) -> None:
        """
        Close C{client} (or, with C{abort}, reset its connection as a client
        that crashed or lost its network would), and return once both ends
        have seen it.
        """
        server = client.server
        assert client.transport is not None
        if abort:
            client.transport.abortConnection()
        else:
            client.transport.loseConnection()
        await client.closed
        await server.whenClosed().addTimeout(SAFETY, reactor)

    async def close(self) -> None:
        await maybeDeferred(self.port.stopListening)
        for client in self.clients:
            if not client.closed.called:
                await self.disconnect(client)
        if self.pool.running:
            await self.pool.stopService()


def request(requestId: Any, method: str, *params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": requestId, "method": method, "params": list(params)}


def result(requestId: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": requestId, "result": value}


def assertError(
    reply: Any, requestId: Any, code: int, data: Any = ANY_DATA
) -> dict[str, Any]:
    """
    C{reply} is an error response for C{requestId} with C{code}, a message,
    and (when given) exactly C{data}.
    """
    assert reply.keys() == {"jsonrpc", "id", "error"}, reply
    assert reply["id"] == requestId
    error = reply["error"]
    assert error["code"] == code, reply
    assert isinstance(error["message"], str) and error["message"]
    if data is not ANY_DATA:
        assert error.get("data") == data, reply
    return error


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    pool = ProcessPool(reactor, [TASKS], size=2)
    pool.startService()
    try:
        await pool.whenReady()
        factory = TaskServerFactory(pool, maxLineLength=LIMIT)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
    except BaseException:
        await pool.stopService()
        raise
    live = Server(pool, factory, port)
    try:
        yield live
    finally:
        await live.close()


@pytest.fixture
def loggedErrors() -> Iterator[list[LogEvent]]:
    """
    The events logged at error level or with a failure during the test.
    """
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


async def assertServes(client: Collector, tag: str) -> None:
    """
    C{client}'s connection answers an echo correctly.
    """
    client.call(tag, "echo", {"tag": tag, "text": "é"})
    assert await client.one() == result(tag, {"tag": tag, "text": "é"})


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[bad.name for bad in BAD_INPUTS])
@pytest_twisted.ensureDeferred
async def test_badInput(
    bad: BadInput, server: Server, loggedErrors: list[LogEvent]
) -> None:
    """
    Each kind of bad input gets its documented error over TCP; the same
    connection then answers a valid echo, and another connection keeps
    working before and after.
    """
    client = await server.connect()
    other = await server.connect()
    await assertServes(other, "other-before")
    client.sendRaw(bad.line + b"\n")
    assertError(await client.one(), bad.replyId, bad.code, bad.data)
    await assertServes(client, "same-after")
    await assertServes(other, "other-after")
    assert loggedErrors == []


@pytest_twisted.ensureDeferred
async def test_allBadInputsInARow(server: Server, loggedErrors: list[LogEvent]) -> None:
    """
    All the bad input, one after another on one connection, each followed
    by a valid call: every one is answered in turn, and a second connection
    keeps working throughout.
    """
    client = await server.connect()
    other = await server.connect()
    for bad in BAD_INPUTS:
        client.sendRaw(
            bad.line + b"\n" + _jsonrpc.line(request("ok", "echo", bad.name))
        )
        error, reply = await client.next(2)
        assertError(error, bad.replyId, bad.code, bad.data)
        assert reply == result("ok", bad.name)
        await assertServes(other, bad.name)
    assert loggedErrors == []


@pytest_twisted.ensureDeferred
async def test_clientVanishes(
    server: Server, tmp_path: Path, loggedErrors: list[LogEvent]
) -> None:
    """
    A client that vanishes mid-task (its connection reset): its queued call
    is dropped without ever running, its running calls finish and their
    results are discarded without error, and other clients are served.
    """
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    ran = tmp_path / "ran"
    try:
        leaving = await server.connect()
        leaving.sendRaw(
            b"".join(
                _jsonrpc.line(message)
                for message in [
                    request(1, "wait_for", str(gates[0])),
                    request(2, "wait_for", str(gates[1])),
                    request(3, "record", str(ran), "leaving"),
                ]
            )
        )
        # A round trip on the same connection: the three calls were read.
        leaving.call("stats", "$/stats")
        stats = (await leaving.one())["result"]
        assert stats["workers"]["busy"] == 2
        assert stats["queued"] == 1
        await server.disconnect(leaving, abort=True)

        staying = await server.connect()
        assert server.pool.stats()["queued"] == 0
        staying.call("b", "record", str(ran), "staying")
    finally:
        for gate in gates:
            gate.touch()
    assert await staying.one() == result("b", "staying")
    await assertServes(staying, "after")
    # Stopping the pool drains it: both abandoned calls have finished.
    await server.pool.stopService()
    assert ran.read_text() == "staying\n"
    stats = server.pool.stats()
    assert (stats["completed"], stats["failed"]) == (4, 0)
    assert loggedErrors == []


@pytest_twisted.ensureDeferred
async def test_halfClose(server: Server, tmp_path: Path) -> None:
    """
    A client that sends its calls and shuts down its sending side (as
    C{printf ... | nc} does) still gets every answer, queued calls included;
    then the server closes the connection.
    """
    gate = tmp_path / "gate"
    try:
        client = await server.connect()
        client.sendRaw(
            b"".join(
                _jsonrpc.line(message)
                for message in [
                    request(1, "wait_for", str(gate)),
                    request(2, "wait_for", str(gate)),
                    request(3, "add", 1, 2),
                ]
            )
        )
        client.sendRaw(b'{"function":"echo","args":["seed"]}\n')
        assert client.transport is not None
        client.transport.loseWriteConnection()
    finally:
        gate.touch()
    replies = await client.next(4)
    assert "seed" in replies
    assert sorted((r["id"], r["result"]) for r in replies if isinstance(r, dict)) == [
        (1, str(gate)),
        (2, str(gate)),
        (3, 3),
    ]
    await client.closed
    await client.server.whenClosed().addTimeout(SAFETY, reactor)


@pytest_twisted.ensureDeferred
async def test_halfCloseAnswersALastLineWithoutNewline(server: Server) -> None:
    """
    Over a real socket, the bytes a client sends after its last C{\\n},
    then FIN, are its last line and are answered: a JSON-RPC call, or (on
    another connection) a Workerman-dialect line, as the FAQ's PHP caller
    sends it (C{send()} of the bare JSON, no C{\\n}, before closing).
    """
    client = await server.connect()
    client.sendRaw(_jsonrpc.line(request(1, "add", 1, 1)))
    client.sendRaw(_jsonrpc.line(request(2, "add", 2, 2))[:-1])
    assert client.transport is not None
    client.transport.loseWriteConnection()
    replies = await client.next(2)
    assert sorted(replies, key=lambda r: r["id"]) == [result(1, 2), result(2, 4)]
    await client.closed
    seed = await server.connect()
    seed.sendRaw(b'{"function":"add","args":{"a":2,"b":40}}')
    assert seed.transport is not None
    seed.transport.loseWriteConnection()
    assert await seed.one() == 42
    await seed.closed


@pytest_twisted.ensureDeferred
async def test_hugeBatchRefusedWhileOthersAreServed(server: Server) -> None:
    """
    A 5 MB batch of 80,000 calls is answered at once with one -32004 (the
    limit is 1000 requests) and runs nothing, while another connection's
    call is answered as usual; both connections stay usable.
    """
    client = await server.connect()
    other = await server.connect()
    items = b",".join(
        b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":["x"]}' % i
        for i in range(80_000)
    )
    assert 4 * 1024 * 1024 < len(items) < LIMIT
    completed = server.pool.stats()["completed"]
    client.sendRaw(b"[" + items + b"]\n")
    other.call("meanwhile", "add", 1, 2)
    assert await other.one() == result("meanwhile", 3)
    reply = await client.one()
    assertError(reply, None, -32004, {"limit": 1000})
    assert server.pool.stats()["completed"] == completed + 1
    await assertServes(client, "after")
    await assertServes(other, "other after")


@pytest_twisted.ensureDeferred
async def test_batchesAtTheLimitPipelined(server: Server) -> None:
    """
    Five batches of 1000 calls written at once on one connection (5000
    calls, five times its in-flight share) are each answered in full, one
    array per batch: each waits on the connection until the one before
    has made room.
    """
    client = await server.connect()
    client.sendRaw(
        b"".join(
            _jsonrpc.line([request(f"{b}-{i}", "add", b, i) for i in range(1000)])
            for b in range(5)
        )
    )
    batches = await client.next(5)
    for replies in batches:
        assert isinstance(replies, list) and len(replies) == 1000
        (batch,) = {r["id"].split("-")[0] for r in replies}
        assert sorted(r["result"] for r in replies) == [
            int(batch) + i for i in range(1000)
        ]
    await assertServes(client, "after")


@pytest_twisted.ensureDeferred
async def test_pipelined(server: Server) -> None:
    """
    200 calls written at once on one connection are all answered, each
    exactly once with its own result.
    """
    client = await server.connect()
    client.sendRaw(
        b"".join(_jsonrpc.line(request(i, "add", i, 1000)) for i in range(200))
    )
    replies = await client.next(200)
    assert sorted(replies, key=lambda r: r["id"]) == [
        result(i, i + 1000) for i in range(200)
    ]
    await assertServes(client, "after")
    assert len(client.received) == 202


@pytest_twisted.ensureDeferred
async def test_workerExits(server: Server) -> None:
    """
    A task that ends its worker process (C{os._exit}) is answered -32002
    with the exit code; the pool replaces the worker and later calls, on
    this and another connection, work.
    """
    client = await server.connect()
    other = await server.connect()
    client.call("dies", "die", 7)
    assertError(await client.one(), "dies", -32002, {"exitCode": 7})
    await assertServes(client, "after")
    await assertServes(other, "other")
    await server.pool.whenReady()
    assert len(server.pool.workers) == 2
    assert server.pool.stats()["restarts"] == 1
    client.sendRaw(b"".join(_jsonrpc.line(request(i, "echo", i)) for i in range(4)))
    assert sorted(r["id"] for r in await client.next(4)) == [0, 1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_bigEcho(server: Server) -> None:
    """
    A 5 MB argument makes the round trip through the server and a worker
    intact.
    """
    client = await server.connect()
    value = "0123456789abcdé\u2603" * (5 * 1024 * 1024 // 19 + 1)
    assert len(value.encode()) >= 5 * 1024 * 1024
    client.call("big", "echo", value)
    reply = await client.one()
    assert reply["id"] == "big"
    assert reply["result"] == value
    await assertServes(client, "after")


@pytest_twisted.ensureDeferred
async def test_seedCaller(server: Server) -> None:
    """
    The Workerman FAQ's caller: connect, send one C{{"function", "args"}}
    line, read one line with the bare result, close.
    """
    client = await server.connect()
    client.sendRaw(b'{"function":"add","args":{"a":2,"b":40}}\n')
    assert await client.one() == 42
    client.sendRaw(b'{"function":"boom","args":["no"]}\n')
    reply = await client.one()
    assert reply["error"]["code"] == -32000
    assert reply["error"]["data"] == {"type": "ValueError", "message": "no"}


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":[1]}}',
        b'{"jsonrpc":"2.0","id":5,"method":"$/cancelRequest","params":[{"id":5}]}',
        b'{"jsonrpc":"1.0","id":1e400}',
        b'{"jsonrpc":"1.0","id":"\\ud800"}',
    ],
    ids=["cancel-array-id", "cancel-object-by-position", "inf-id", "surrogate-id"],
)
@pytest_twisted.ensureDeferred
async def test_awkwardIdsKeepTheConnection(
    line: bytes, server: Server, tmp_path: Path
) -> None:
    """
    A line naming an id the server cannot use never costs the client its
    connection, nor the call it has running: the running call is answered,
    and the connection serves the next call. (Regression: each of these
    raised out of dataReceived and Twisted dropped the connection.)
    """
    gate = tmp_path / "gate"
    try:
        client = await server.connect()
        client.call("running", "wait_for", str(gate))
        client.sendRaw(line + b"\n")
        client.call("stats", "$/stats")
        before = await client.until("stats")
    finally:
        gate.touch()
    assert before[-1]["result"]["connections"] >= 1
    assert (await client.until("running"))[-1] == result("running", str(gate))
    await assertServes(client, "after")
