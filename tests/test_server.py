"""
Unit tests for L{taskservice.server}: the task protocol over a
L{StringTransport}, with a real L{ProcessPool} whose workers are
L{taskservice.testing.FakeWorker}s on a L{FakeProcessReactor} (and its
clock), running the tasks of L{tests.tasks} in-process or driven by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from taskservice import _jsonrpc
from taskservice._lines import DEFAULT_MAX_LINE
from taskservice.pool import DEFAULT_MAX_QUEUE, DEFAULT_TIMEOUT, ProcessPool
from taskservice.server import (
    DEFAULT_MAX_IN_FLIGHT,
    TaskServerFactory,
    TaskServerProtocol,
)
from taskservice.testing import FakeProcessReactor, FakeWorker
from taskservice.wire import DEFAULT_MAX_BATCH
from tests import tasks
from tests.badinput import ANY_DATA, BadInput, badInputs

TASKS = "tests.tasks"
_case = SynchronousTestCase()


class Client:
    """
    One connection to the server under test, over a L{StringTransport}.
    """

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.protocol: TaskServerProtocol = server.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", port)
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sendRaw(self, data: bytes) -> None:
        """
        Deliver C{data} as received from the network.
        """
        self.protocol.dataReceived(data)

    def send(self, *messages: Any) -> None:
        """
        Deliver each message as one JSON line, all in one chunk.
        """
        self.sendRaw(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    def call(self, requestId: Any, method: str, *args: Any, **named: Any) -> None:
        """
        Send a JSON-RPC request.
        """
        self.send(request(requestId, method, *args, **named))

    def lines(self) -> list[bytes]:
        """
        The lines written since the last look (and forget them).
        """
        data = self.transport.value()
        self.transport.clear()
        assert not data or data.endswith(b"\n"), data
        return data.split(b"\n")[:-1]

    def replies(self) -> list[Any]:
        """
        The messages written since the last look (and forget them).
        """
        return [json.loads(line) for line in self.lines()]

    def disconnect(self) -> None:
        """
        The client vanishes.
        """
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Server:
    """
    A L{TaskServerFactory} and its pool of fake workers (already ready).
    """

    def __init__(
        self,
        *,
        size: int = 2,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        maxLineLength: int = DEFAULT_MAX_LINE,
        defaultTimeout: float = DEFAULT_TIMEOUT,
        includeTracebacks: bool = False,
        maxInFlight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.reactor = FakeProcessReactor()
        self.pool = ProcessPool(
            self.reactor,
            [TASKS],
            size=size,
            maxQueue=maxQueue,
            defaultTimeout=defaultTimeout,
            includeTracebacks=includeTracebacks,
        )
        self.pool.startService()
        self.reactor.readyAll()
        _case.successResultOf(self.pool.whenReady())
        self.factory = TaskServerFactory(
            self.pool, maxLineLength=maxLineLength, maxInFlight=maxInFlight
        )
        self._ports = iter(range(40000, 50000))

    def connect(self) -> Client:
        return Client(self, next(self._ports))

    def runAll(self) -> None:
        """
        Every worker runs the calls waiting on it, until none is left.
        """
        self.reactor.runAllCalls(self.pool.registry)

    def pending(self) -> list[tuple[FakeWorker, dict[str, Any]]]:
        """
        Every call a live worker holds and has not answered.
        """
        return [(w, call) for w in self.reactor.alive for call in w.calls]

    def holder(self, task: str, *args: Any, **kwargs: Any) -> tuple[FakeWorker, int]:
        """
        The worker holding the unanswered call of C{task} with C{args} and
        C{kwargs}, and the call's id in the pool.
        """
        found = [
            (worker, call["cid"])
            for worker, call in self.pending()
            if call["task"] == task
            and call["args"] == list(args)
            and call["kwargs"] == kwargs
        ]
        assert len(found) == 1, (task, args, kwargs, self.pending())
        return found[0]

    def dispatched(self) -> list[tuple[str, list[Any]]]:
        """
        Every call ever sent to any worker, as C{(task, args)}.
        """
        return [
            (message["task"], message["args"])
            for worker in self.reactor.workers
            for message in worker.messages
            if message.get("op") == "call"
        ]

    def replace(self) -> None:
        """
        Let killed workers exit and their replacements say they are ready.
        """
        self.reactor.reapAll()
        self.reactor.readyAll()


def request(requestId: Any, method: str, *args: Any, **named: Any) -> dict[str, Any]:
    """
    A JSON-RPC request, with params by position (C{args}) or by name.
    """
    params: Any = named if named else list(args)
    return {"jsonrpc": "2.0", "id": requestId, "method": method, "params": params}


def notification(method: str, *args: Any, **named: Any) -> dict[str, Any]:
    """
    A JSON-RPC notification, with params by position or by name.
    """
    message = request(None, method, *args, **named)
    del message["id"]
    return message


def result(requestId: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": requestId, "result": value}


def assertError(
    reply: Any, requestId: Any, code: int, data: Any = ANY_DATA
) -> dict[str, Any]:
    """
    C{reply} is a JSON-RPC error response for C{requestId} with C{code}, a
    non-empty message and (when given) exactly C{data}. Returns the error.
    """
    assert reply.keys() == {"jsonrpc", "id", "error"}, reply
    assert reply["jsonrpc"] == "2.0"
    assert reply["id"] == requestId
    error = reply["error"]
    assert error["code"] == code, reply
    assert isinstance(error["message"], str) and error["message"]
    if data is not ANY_DATA:
        assert error.get("data") == data, reply
    return error


@pytest.fixture
def server() -> Server:
    return Server()


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


# -- calls and replies --------------------------------------------------------


def test_echoRoundTrip(server: Server, loggedErrors: list[LogEvent]) -> None:
    """
    A request runs in a worker and is answered with one compact line.
    """
    client = server.connect()
    client.call(1, "echo", {"text": "héllo", "n": [1, 2.5, None]})
    assert client.lines() == []
    server.runAll()
    assert client.lines() == [
        '{"jsonrpc":"2.0","id":1,"result":{"text":"héllo","n":[1,2.5,null]}}'.encode()
    ]
    assert loggedErrors == []


def test_namedParams(server: Server) -> None:
    """
    Params by name reach the task as keyword arguments.
    """
    client = server.connect()
    client.send(
        {"jsonrpc": "2.0", "id": "n", "method": "add", "params": {"b": 2, "a": 40}}
    )
    server.runAll()
    assert client.replies() == [result("n", 42)]


def test_crlfLines(server: Server) -> None:
    """
    Lines ending in C{\\r\\n} are accepted.
    """
    client = server.connect()
    client.sendRaw(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["x"]}\r\n')
    server.runAll()
    assert client.replies() == [result(1, "x")]


def test_emptyLinesIgnored(server: Server) -> None:
    """
    Blank lines are ignored: no reply, no error.
    """
    client = server.connect()
    client.sendRaw(b"\n\r\n  \n")
    assert client.lines() == []


def test_outOfOrder(server: Server) -> None:
    """
    Calls in flight at once are answered as they finish, matched by id:
    the second one first when its worker answers first.
    """
    client = server.connect()
    client.call("first", "add", 1, 2)
    client.call("second", "add", 3, 4)
    firstWorker, firstCid = server.holder("add", 1, 2)
    secondWorker, secondCid = server.holder("add", 3, 4)
    assert firstWorker is not secondWorker
    secondWorker.reply(7, cid=secondCid)
    assert client.replies() == [result("second", 7)]
    firstWorker.reply(3, cid=firstCid)
    assert client.replies() == [result("first", 3)]


def test_manyInFlight(server: Server) -> None:
    """
    More calls than workers: the extra ones queue, and every call is
    answered exactly once with its own result, whatever the order.
    """
    client = server.connect()
    client.send(*[request(i, "echo", f"v{i}") for i in range(6)])
    assert len(server.pending()) == 2
    answered: list[Any] = []
    while server.pending():
        # Always answer the most recently dispatched call first.
        worker, call = server.pending()[-1]
        worker.reply(call["args"][0].upper(), cid=call["cid"])
        answered += client.replies()
    assert sorted(answered, key=lambda r: r["id"]) == [
        result(i, f"V{i}") for i in range(6)
    ]


def test_notificationRunsWithoutReply(server: Server) -> None:
    """
    A notification runs (the worker gets it) but nothing is written back,
    not even for its failure.
    """
    client = server.connect()
    client.send(notification("echo", "quiet"), notification("boom"))
    assert ("echo", ["quiet"]) in server.dispatched()
    server.runAll()
    assert client.lines() == []
    assert server.pool.completed == 1
    assert server.pool.failed == 1


def test_notificationUnknownMethod(server: Server) -> None:
    """
    A notification of an unknown method is not answered either.
    """
    client = server.connect()
    client.send(notification("nosuch"), notification("$/nosuch"))
    assert client.lines() == []


# -- batches ----------------------------------------------------------------------


def test_batch(server: Server) -> None:
    """
    A batch is answered with one array line: one response per request (in
    any order), none for notifications, errors for invalid items.
    """
    client = server.connect()
    client.send(
        [
            request(1, "echo", "a"),
            notification("echo", "n"),
            request(2, "add", 1, 1),
            {"jsonrpc": "2.0", "id": 3, "method": 5},
            request(4, "nosuch"),
            request(5, "boom"),
        ]
    )
    server.runAll()
    (line,) = client.lines()
    replies = json.loads(line)
    assert isinstance(replies, list)
    byId = {r["id"]: r for r in replies}
    assert len(replies) == len(byId) == 5
    assert byId[1] == result(1, "a")
    assert byId[2] == result(2, 2)
    assertError(byId[3], 3, -32600)
    assertError(byId[4], 4, -32601)
    assertError(byId[5], 5, -32000)
    assert ("echo", ["n"]) in server.dispatched()


def test_batchWaitsForAll(server: Server) -> None:
    """
    Nothing of a batch is written until all its calls are answered.
    """
    client = server.connect()
    client.send([request(1, "echo", "a"), request(2, "echo", "b")])
    worker, cid = server.holder("echo", "b")
    worker.reply("b", cid=cid)
    assert client.lines() == []
    worker, cid = server.holder("echo", "a")
    worker.reply("a", cid=cid)
    (line,) = client.lines()
    assert sorted(json.loads(line), key=lambda r: r["id"]) == [
        result(1, "a"),
        result(2, "b"),
    ]


def test_batchOfNotifications(server: Server) -> None:
    """
    A batch of notifications only runs them and answers nothing at all.
    """
    client = server.connect()
    client.send([notification("echo", 1), notification("echo", 2)])
    server.runAll()
    assert client.lines() == []
    assert server.pool.completed == 2


def test_batchOverTheLimitRefusedWhole(server: Server) -> None:
    """
    A batch of more than C{maxBatch} requests (default 1000) is answered
    with one -32004 error (id null, the limit in C{data}) and none of it
    runs; the connection carries on, and a batch at the limit runs.
    """
    client = server.connect()
    client.send([request(i, "echo", i) for i in range(DEFAULT_MAX_BATCH + 1)])
    (reply,) = client.replies()
    error = assertError(reply, None, -32004, {"limit": DEFAULT_MAX_BATCH})
    assert str(DEFAULT_MAX_BATCH + 1) in error["message"]
    assert server.dispatched() == []
    assert server.factory.refused["too_large"] == 1
    client.send([request(i, "echo", i) for i in range(DEFAULT_MAX_BATCH)])
    server.runAll()
    (line,) = client.lines()
    assert len(json.loads(line)) == DEFAULT_MAX_BATCH


def test_batchLimitIsAtMostMaxInFlight() -> None:
    """
    A batch may not hold more requests than the connection may have in
    flight (it could never run whole): with C{maxInFlight=2}, a batch of
    three is refused with C{{"limit": 2}}, whatever C{maxBatch} says.
    """
    server = Server(maxInFlight=2)
    client = server.connect()
    client.send([request(i, "echo", i) for i in range(3)])
    (reply,) = client.replies()
    assertError(reply, None, -32004, {"limit": 2})
    client.send([request(i, "echo", i) for i in range(2)])
    server.runAll()
    (line,) = client.lines()
    assert sorted(r["id"] for r in json.loads(line)) == [0, 1]


def test_batchSmallerMaxBatch() -> None:
    """
    The factory's C{maxBatch} bounds a batch below C{maxInFlight}.
    """
    server = Server()
    server.factory.maxBatch = 2
    client = server.connect()
    client.send([request(i, "echo", i) for i in range(3)])
    (reply,) = client.replies()
    assertError(reply, None, -32004, {"limit": 2})


def test_batchItemsCountAgainstMaxInFlight() -> None:
    """
    Each request of a batch takes one of the connection's C{maxInFlight}:
    a batch that does not fit in what is left waits on the connection
    (nothing of it reaches the pool) until earlier calls finish, and lines
    after it wait behind it; each item gives its place back as it finishes.
    """
    server = Server(maxInFlight=3, size=4)
    client = server.connect()
    client.call("single", "echo", "s")
    client.send([request(i, "echo", f"b{i}") for i in range(3)])
    client.call("after", "echo", "a")
    assert server.dispatched() == [("echo", ["s"])]
    worker, cid = server.holder("echo", "s")
    worker.reply("s", cid=cid)
    assert client.replies() == [result("single", "s")]
    assert sorted(args[0] for _, args in server.dispatched()) == ["b0", "b1", "b2", "s"]
    # One item done: its place goes to the call waiting behind the batch,
    # before the batch is answered.
    worker, cid = server.holder("echo", "b1")
    worker.reply("b1", cid=cid)
    assert ("echo", ["a"]) in server.dispatched()
    assert client.lines() == []
    server.runAll()
    replies = client.replies()
    assert result("after", "a") in replies
    (batch,) = [r for r in replies if isinstance(r, list)]
    assert sorted(r["result"] for r in batch) == ["b0", "b1", "b2"]


def test_halfCloseWaitsForTheBatchReply(server: Server) -> None:
    """
    A client that half-closes after a batch gets the batch's reply before
    the server closes, even though each item gave its place back earlier.
    """
    client = server.connect()
    client.send([request(1, "echo", "a"), request(2, "echo", "b")])
    client.protocol.readConnectionLost()
    worker, cid = server.holder("echo", "a")
    worker.reply("a", cid=cid)
    assert not client.transport.disconnecting
    worker, cid = server.holder("echo", "b")
    worker.reply("b", cid=cid)
    (line,) = client.lines()
    assert sorted(r["id"] for r in json.loads(line)) == [1, 2]
    assert client.transport.disconnecting


# -- the Workerman FAQ dialect ------------------------------------------------


def test_seedAnsweredBareInOrder(server: Server) -> None:
    """
    Seed calls are answered with the bare JSON result, in the order they
    came, even when the second finishes first.
    """
    client = server.connect()
    client.send(
        {"function": "echo", "args": {"value": {"sent": 1}}},
        {"function": "add", "args": [2, 3]},
    )
    addWorker, addCid = server.holder("add", 2, 3)
    addWorker.reply(5, cid=addCid)
    assert client.lines() == []
    echoWorker, echoCid = server.holder("echo", value={"sent": 1})
    echoWorker.reply({"sent": 1}, cid=echoCid)
    assert client.lines() == [b'{"sent":1}', b"5"]


def test_seedError(server: Server) -> None:
    """
    A failed seed call is answered C{{"error": {...}}}: a task's exception,
    an unknown function, wrong arguments.
    """
    client = server.connect()
    client.send(
        {"function": "boom", "args": {"message": "no"}},
        {"function": "nosuch", "args": {}},
        {"function": "add", "args": [1]},
    )
    server.runAll()
    failed, unknown, wrongArgs = client.replies()
    assert failed == {
        "error": {
            "code": -32000,
            "message": failed["error"]["message"],
            "data": {"type": "ValueError", "message": "no"},
        }
    }
    assert unknown.keys() == {"error"} and unknown["error"]["code"] == -32601
    assert wrongArgs.keys() == {"error"} and wrongArgs["error"]["code"] == -32602


def test_seedGetsNoProgress(server: Server) -> None:
    """
    The seed dialect has no progress notifications: only the result line.
    """
    client = server.connect()
    client.send({"function": "steps", "args": [3]})
    server.runAll()
    assert client.lines() == [b"3"]


# -- progress, stats, cancel --------------------------------------------------


def test_progress(server: Server) -> None:
    """
    Progress the task reports reaches the caller as C{$/progress}
    notifications naming the request id, before the result.
    """
    client = server.connect()
    client.call(7, "steps", 3)
    server.runAll()
    assert client.replies() == [
        {
            "jsonrpc": "2.0",
            "method": "$/progress",
            "params": {"done": n, "total": 3, "id": 7},
        }
        for n in (1, 2, 3)
    ] + [result(7, 3)]


def test_progressDrivenByHand(server: Server) -> None:
    """
    Each progress frame from the worker is written at once, with its extra
    fields and the right id when several calls run.
    """
    client = server.connect()
    client.call("a", "echo", "a")
    client.call("b", "echo", "b")
    worker, cid = server.holder("echo", "b")
    worker.progress({"done": 1, "total": 2, "note": "half"}, cid=cid)
    assert client.replies() == [
        {
            "jsonrpc": "2.0",
            "method": "$/progress",
            "params": {"done": 1, "total": 2, "note": "half", "id": "b"},
        }
    ]


def test_stats(server: Server) -> None:
    """
    C{$/stats} reports workers by state, the queue, counters, uptime, the
    task names and the open connections.
    """
    client = server.connect()
    server.connect()
    client.call(1, "echo", 1)
    client.call(2, "boom")
    server.runAll()
    client.replies()
    server.reactor.advance(12.5)
    client.call(3, "echo", "busy")
    client.call(4, "$/stats")
    (reply,) = client.replies()
    assert reply["id"] == 4
    stats = reply["result"]
    # The documented fields; the pool may report more.
    workers = stats["workers"]
    assert (workers["size"], workers["idle"], workers["busy"]) == (2, 1, 1)
    assert workers["starting"] == 0
    assert (stats["queued"], stats["maxQueue"]) == (0, DEFAULT_MAX_QUEUE)
    assert (stats["completed"], stats["failed"]) == (1, 1)
    assert stats["restarts"] == 0
    assert stats["uptime"] == 12.5
    assert stats["tasks"] == sorted(server.pool.registry)
    assert stats["connections"] == 2
    assert "echo" in reply["result"]["tasks"]


def test_statsConnectionsCount(server: Server) -> None:
    """
    The connection count goes down when a client leaves.
    """
    first = server.connect()
    second = server.connect()
    second.disconnect()
    first.call(1, "$/stats")
    (reply,) = first.replies()
    assert reply["result"]["connections"] == 1


def test_cancelQueued(server: Server) -> None:
    """
    C{$/cancelRequest} of a queued call answers it -32800 at once, exactly
    once, and it never reaches a worker.
    """
    client = server.connect()
    client.call("r1", "echo", "r1")
    client.call("r2", "echo", "r2")
    client.call("q", "echo", "q")
    assert server.pool.stats()["queued"] == 1
    client.send(notification("$/cancelRequest", id="q"))
    replies = client.replies()
    assert len(replies) == 1
    assertError(replies[0], "q", -32800)
    assert server.pool.stats()["queued"] == 0
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == ["r1", "r2"]
    assert ("echo", ["q"]) not in server.dispatched()
    client.send(notification("$/cancelRequest", id="q"))
    assert client.lines() == []


def test_cancelByPosition(server: Server) -> None:
    """
    The id to cancel may also be given as the only positional param.
    """
    client = server.connect()
    client.send(request(1, "echo", 1), request(2, "echo", 2), request(3, "echo", 3))
    client.send(notification("$/cancelRequest", 3))
    (reply,) = client.replies()
    assertError(reply, 3, -32800)


def test_cancelRunning(server: Server, loggedErrors: list[LogEvent]) -> None:
    """
    C{$/cancelRequest} of a running call kills its worker and answers -32800
    once; a late answer from the dying worker is ignored; a replacement
    worker is started once the killed one is reaped, and serves calls.
    """
    client = server.connect()
    client.call("r", "echo", "r")
    worker, cid = server.holder("echo", "r")
    client.send(request("c", "$/cancelRequest", id="r"))
    replies = client.replies()
    assert len(replies) == 2
    assertError(replies[0], "r", -32800)
    assert replies[1] == result("c", None)
    assert worker.killed
    worker.reply("too late", cid=cid)
    assert client.lines() == []
    assert len(server.reactor.workers) == 2
    server.replace()
    assert not worker.alive
    assert len(server.reactor.workers) == 3
    assert len(server.reactor.alive) == 2
    assert client.lines() == []
    client.send(*[request(i, "echo", i) for i in range(4)])
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == [0, 1, 2, 3]
    assert server.pool.stats()["restarts"] == 1
    assert loggedErrors == []


def test_cancelOnlyOwnCalls(server: Server) -> None:
    """
    A cancel names a call of the same connection: another connection's call
    with the same id is not touched.
    """
    mine = server.connect()
    other = server.connect()
    other.call(1, "echo", "other")
    mine.send(notification("$/cancelRequest", id=1))
    server.runAll()
    assert mine.lines() == []
    assert other.replies() == [result(1, "other")]


def test_cancelUnknownId(server: Server) -> None:
    """
    Cancelling an id that is not in flight is a no-op (the request form
    answers null).
    """
    client = server.connect()
    client.send(notification("$/cancelRequest", id=99))
    client.send(request(1, "$/cancelRequest", id=99))
    assert client.replies() == [result(1, None)]


def test_cancelWithoutId(server: Server) -> None:
    """
    C{$/cancelRequest} without an id to cancel is -32602.
    """
    client = server.connect()
    client.send({"jsonrpc": "2.0", "id": 1, "method": "$/cancelRequest", "params": {}})
    client.send({"jsonrpc": "2.0", "id": 2, "method": "$/cancelRequest"})
    first, second = client.replies()
    assertError(first, 1, -32602)
    assertError(second, 2, -32602)


@pytest.mark.parametrize(
    "params",
    [{"id": [1]}, {"id": {"a": 1}}, [{"id": 1}], [[1]]],
    ids=["array-id", "object-id", "object-by-position", "array-by-position"],
)
def test_cancelUnhashableId(params: Any, server: Server) -> None:
    """
    C{$/cancelRequest} naming something that cannot be an id is -32602 as
    a request (nothing as a notification); calls in flight carry on and the
    connection stays usable. (Regression: the unhashable id raised
    TypeError out of dataReceived.)
    """
    client = server.connect()
    client.call("running", "echo", "x")
    client.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": params})
    client.send(
        {"jsonrpc": "2.0", "id": 1, "method": "$/cancelRequest", "params": params}
    )
    (reply,) = client.replies()
    assertError(reply, 1, -32602)
    server.runAll()
    client.call(2, "echo", "after")
    server.runAll()
    assert client.replies() == [result("running", "x"), result(2, "after")]


def test_cancelReachesAConnectionAtItsLimit() -> None:
    """
    A client at its in-flight limit can still cancel one of its calls: the
    cancel is acted on at once (and frees the call's worker and slot), and a
    call waiting behind the limit can be cancelled before it ever runs.
    """
    server = Server(maxInFlight=2)
    client = server.connect()
    client.send(request(1, "echo", 1), request(2, "echo", 2), request(3, "echo", 3))
    assert len(server.dispatched()) == 2, "the third waits on the connection"
    client.send(notification("$/cancelRequest", id=1))
    client.send(notification("$/cancelRequest", id=3))
    replies = client.replies()
    assert sorted(r["id"] for r in replies) == [1, 3]
    for reply in replies:
        assertError(reply, reply["id"], -32800)
    assert len(server.dispatched()) == 2, "the cancelled waiting call never ran"


def test_unknownBuiltin(server: Server) -> None:
    """
    An unknown method in the reserved C{$/} namespace is -32601.
    """
    client = server.connect()
    client.call(1, "$/x")
    (reply,) = client.replies()
    assertError(reply, 1, -32601)
    assert server.dispatched() == []


def test_duplicateInFlightId(server: Server) -> None:
    """
    A second call with the id of one still in flight is -32600 (echoing the
    id) and does not run; the first is still answered; once it is, the id
    may be used again.
    """
    client = server.connect()
    client.call(5, "echo", "first")
    client.call(5, "echo", "second")
    (reply,) = client.replies()
    assertError(reply, 5, -32600)
    assert ("echo", ["second"]) not in server.dispatched()
    server.runAll()
    assert client.replies() == [result(5, "first")]
    client.call(5, "echo", "again")
    server.runAll()
    assert client.replies() == [result(5, "again")]


def test_sameIdOnTwoConnections(server: Server) -> None:
    """
    Ids are per connection: two clients may both use id 1.
    """
    first = server.connect()
    second = server.connect()
    first.call(1, "echo", "one")
    second.call(1, "echo", "two")
    server.runAll()
    assert first.replies() == [result(1, "one")]
    assert second.replies() == [result(1, "two")]


# -- bad input ---------------------------------------------------------------------

LIMIT = 4096
BAD_INPUTS = badInputs(LIMIT)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[bad.name for bad in BAD_INPUTS])
def test_badInput(bad: BadInput, loggedErrors: list[LogEvent]) -> None:
    """
    Each kind of bad input gets its documented error; a valid call in the
    same chunk right after it, and one sent later, on the same connection,
    are answered; another connection is not disturbed; nothing unexpected
    is logged.
    """
    server = Server(maxLineLength=LIMIT)
    client = server.connect()
    other = server.connect()
    other.call("o1", "echo", "before")
    client.sendRaw(bad.line + b"\n" + _jsonrpc.line(request("ok", "echo", "after")))
    server.runAll()
    replies = client.replies()
    assert len(replies) == 2, replies
    assertError(replies[0], bad.replyId, bad.code, bad.data)
    assert replies[1] == result("ok", "after")
    client.call("later", "add", 1, 2)
    other.call("o2", "echo", "still")
    server.runAll()
    assert client.replies() == [result("later", 3)]
    assert other.replies() == [result("o1", "before"), result("o2", "still")]
    assert loggedErrors == []
    assert not client.transport.disconnecting


def test_lineTooLongInPieces(loggedErrors: list[LogEvent]) -> None:
    """
    An overlong line arriving in many chunks is answered -32004 once (with
    the limit, and the id that leads the line), and the connection carries
    on after its newline.
    """
    server = Server(maxLineLength=LIMIT)
    client = server.connect()
    client.sendRaw(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["')
    for _ in range(10):
        client.sendRaw(b"x" * 1000)
    client.sendRaw(b'"]}\n' + _jsonrpc.line(request(2, "echo", "ok")))
    server.runAll()
    replies = client.replies()
    assert len(replies) == 2
    assertError(replies[0], 1, -32004, {"limit": LIMIT})
    assert replies[1] == result(2, "ok")
    assert server.dispatched() == [("echo", ["ok"])]


def test_lineAtTheLimit() -> None:
    """
    A request line of exactly the limit is served.
    """
    server = Server(maxLineLength=LIMIT)
    client = server.connect()
    head = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["'
    tail = b'"]}'
    line = head + b"y" * (LIMIT - len(head) - len(tail)) + tail
    assert len(line) == LIMIT
    client.sendRaw(line + b"\n")
    server.runAll()
    (reply,) = client.replies()
    assert reply["id"] == 1 and len(reply["result"]) == LIMIT - len(head) - len(tail)


def test_clientVanishes(server: Server, loggedErrors: list[LogEvent]) -> None:
    """
    A client that goes away mid-task: its queued calls are dropped without
    ever reaching a worker; its running calls finish and their results are
    discarded without error; other clients' calls run as usual.
    """
    leaving = server.connect()
    staying = server.connect()
    leaving.send(
        request(1, "echo", "a1"),
        request(2, "echo", "a2"),
        request(3, "record", "/nonexistent/a3", "a3"),
        [request(4, "echo", "a4"), request(5, "echo", "a5")],
        {"function": "echo", "args": ["a6"]},
    )
    staying.call("b", "echo", "b1")
    assert server.pool.stats()["queued"] == 5
    leaving.disconnect()
    assert server.pool.stats()["queued"] == 1
    assert leaving.lines() == []
    running = [server.holder("echo", "a1"), server.holder("echo", "a2")]
    for worker, cid in running:
        worker.reply("done", cid=cid)
    server.runAll()
    assert leaving.lines() == []
    assert staying.replies() == [result("b", "b1")]
    assert sorted(args[0] for task, args in server.dispatched()) == ["a1", "a2", "b1"]
    assert server.pool.stats()["workers"]["idle"] == 2
    assert loggedErrors == []
    staying.call("b2", "echo", "b2")
    server.runAll()
    assert staying.replies() == [result("b2", "b2")]


def test_clientVanishesDuringProgress(server: Server) -> None:
    """
    Progress and results for a client that left are dropped quietly.
    """
    leaving = server.connect()
    leaving.call(1, "steps", 3)
    leaving.disconnect()
    server.runAll()
    assert leaving.lines() == []
    assert server.pool.completed == 1


# -- failures ------------------------------------------------------------------------


def test_overloaded() -> None:
    """
    Past C{maxQueue} waiting calls, a call is refused at once with -32003
    and a retry-after hint; the others still run, and calls are accepted
    again once the queue empties.
    """
    server = Server(maxQueue=1)
    client = server.connect()
    client.send(request(1, "echo", 1), request(2, "echo", 2), request(3, "echo", 3))
    client.call(4, "echo", 4)
    (reply,) = client.replies()
    error = assertError(reply, 4, -32003)
    retryAfter = error["data"]["retryAfter"]
    assert isinstance(retryAfter, int | float) and retryAfter > 0
    assert ("echo", [4]) not in server.dispatched()
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == [1, 2, 3]
    client.call(5, "echo", 5)
    server.runAll()
    assert client.replies() == [result(5, 5)]


def test_noQueueStillRunsOnIdleWorkers() -> None:
    """
    C{maxQueue=0} means no call may wait: a call that an idle worker can
    take at once still runs; only one that would have to wait is refused.
    (Regression: every call was refused.)
    """
    server = Server(maxQueue=0)
    client = server.connect()
    client.send(request(1, "echo", 1), request(2, "echo", 2), request(3, "echo", 3))
    (reply,) = client.replies()
    assertError(reply, 3, -32003)
    server.runAll()
    assert sorted(client.replies(), key=lambda r: r["id"]) == [
        result(1, 1),
        result(2, 2),
    ]


@pytest.mark.parametrize(
    ("method", "deadline", "defaultTimeout"),
    [("short", tasks.SHORT_TIMEOUT, 100.0), ("echo", 10.0, 10.0)],
    ids=["task-deadline", "pool-default"],
)
def test_timeout(
    method: str, deadline: float, defaultTimeout: float, loggedErrors: list[LogEvent]
) -> None:
    """
    A call still running at its deadline is answered -32001 with the
    deadline, its worker is killed (a late answer is ignored) and replaced,
    and other calls go on.
    """
    server = Server(defaultTimeout=defaultTimeout)
    client = server.connect()
    client.call("slow", method, "v")
    worker, cid = server.holder(method, "v")
    server.reactor.advance(deadline - 0.01)
    assert client.lines() == []
    assert worker.transport.signals == []
    server.reactor.advance(0.01)
    (reply,) = client.replies()
    assertError(reply, "slow", -32001, {"timeout": deadline})
    assert worker.killed
    worker.reply("late", cid=cid)
    assert client.lines() == []
    server.replace()
    assert len(server.reactor.alive) == 2
    client.send(request(1, "echo", 1), request(2, "echo", 2))
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == [1, 2]
    assert loggedErrors == []


def test_answeredBeforeDeadline() -> None:
    """
    A call answered in time leaves no timer behind, and its worker is not
    killed later.
    """
    server = Server()
    client = server.connect()
    client.call(1, "short", "v")
    worker, _ = server.holder("short", "v")
    server.runAll()
    assert client.replies() == [result(1, "v")]
    assert server.reactor.getDelayedCalls() == []
    server.reactor.advance(tasks.SHORT_TIMEOUT * 2)
    assert not worker.killed


@pytest.mark.parametrize(
    ("how", "data"),
    [({"signal": 9}, {"signal": 9}), ({"exitCode": 3}, {"exitCode": 3})],
    ids=["signal", "exit-code"],
)
def test_workerDies(how: dict[str, int], data: dict[str, int], server: Server) -> None:
    """
    A worker that dies mid-task: its call is answered -32002 saying how it
    died, the call on the other worker is unaffected, and a replacement
    worker serves the next calls.
    """
    client = server.connect()
    client.call("dies", "echo", "dies")
    client.call("lives", "echo", "lives")
    worker, _ = server.holder("echo", "dies")
    worker.exit(**how)
    (reply,) = client.replies()
    assertError(reply, "dies", -32002, data)
    assert len(server.reactor.workers) == 3
    server.reactor.readyAll()
    server.runAll()
    assert client.replies() == [result("lives", "lives")]
    client.send(request(1, "echo", 1), request(2, "echo", 2))
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == [1, 2]


def test_taskRaises(server: Server) -> None:
    """
    A task's exception is -32000 with its type and message, and no
    traceback unless asked for.
    """
    client = server.connect()
    client.call(1, "boom", "kaput")
    server.runAll()
    (reply,) = client.replies()
    error = assertError(reply, 1, -32000, {"type": "ValueError", "message": "kaput"})
    assert "ValueError" in error["message"]


def test_taskRaisesWithTraceback() -> None:
    """
    With C{includeTracebacks=True}, the error data carries the traceback.
    """
    server = Server(includeTracebacks=True)
    client = server.connect()
    client.call(1, "boom", "kaput")
    server.runAll()
    (reply,) = client.replies()
    data = assertError(reply, 1, -32000)["data"]
    assert data["type"] == "ValueError"
    assert data["message"] == "kaput"
    assert "Traceback (most recent call last)" in data["traceback"]
    assert "ValueError: kaput" in data["traceback"]


def test_taskRaisesDrivenByHand(server: Server) -> None:
    """
    An error frame from the worker is relayed with its type and message.
    """
    client = server.connect()
    client.call(1, "echo", "x")
    worker, cid = server.holder("echo", "x")
    worker.raise_("KeyError", "'missing'", cid=cid)
    (reply,) = client.replies()
    assertError(reply, 1, -32000, {"type": "KeyError", "message": "'missing'"})


# -- half-close --------------------------------------------------------------------


def test_halfCloseAnswersPending(server: Server) -> None:
    """
    A client that half-closes still gets every pending answer (JSON-RPC and
    seed); then the server closes the connection.
    """
    client = server.connect()
    client.call(1, "echo", "one")
    client.send({"function": "echo", "args": ["two"]})
    client.call(3, "echo", "three")
    client.protocol.readConnectionLost()
    assert not client.transport.disconnecting
    worker, cid = server.holder("echo", "one")
    worker.reply("one", cid=cid)
    assert client.replies() == [result(1, "one")]
    assert not client.transport.disconnecting
    server.runAll()
    lines = client.lines()
    assert sorted(lines) == sorted([b'"two"', _jsonrpc.line(result(3, "three"))[:-1]])
    assert client.transport.disconnecting


def test_halfCloseWithNothingPending(server: Server) -> None:
    """
    Half-closing with nothing in flight closes the connection at once.
    """
    client = server.connect()
    client.call(1, "$/stats")
    client.protocol.readConnectionLost()
    assert client.transport.disconnecting


def test_halfCloseAnswersALastLineWithoutNewline(server: Server) -> None:
    """
    The bytes a client sends after its last C{\\n} before half-closing are
    its last line, and are answered (JSON-RPC here); then the server
    closes. (They were dropped silently.)
    """
    client = server.connect()
    client.sendRaw(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["one"]}\n')
    client.sendRaw(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":["last"]}')
    client.protocol.readConnectionLost()
    server.runAll()
    assert sorted(r["id"] for r in client.replies()) == [1, 2]
    assert client.transport.disconnecting


def test_halfCloseAnswersALastSeedLineWithoutNewline(server: Server) -> None:
    """
    The Workerman dialect's last line without its C{\\n} (or with C{\\r}
    alone) is answered too, in its turn.
    """
    client = server.connect()
    client.sendRaw(b'{"function":"echo","args":["first"]}\n')
    client.sendRaw(b'{"function":"echo","args":["last"]}\r')
    client.protocol.readConnectionLost()
    server.runAll()
    assert client.lines() == [b'"first"', b'"last"']
    assert client.transport.disconnecting


def test_halfCloseAnswersABadLastLine(server: Server) -> None:
    """
    A last line that is not JSON is answered with a parse error, as it
    would be with its C{\\n}.
    """
    client = server.connect()
    client.sendRaw(b'{"jsonrpc":"2.0","id":1,')
    client.protocol.readConnectionLost()
    (reply,) = client.replies()
    assertError(reply, None, -32700)
    assert client.transport.disconnecting


def test_halfCloseAfterAnOverlongLine() -> None:
    """
    The rest of a line already answered as too long is not a line of its
    own at half-close: the client gets the one -32004.
    """
    server = Server(maxLineLength=64)
    client = server.connect()
    client.sendRaw(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["' + b"x" * 100)
    (reply,) = client.replies()
    assertError(reply, 1, -32004)
    client.sendRaw(b'"]}')
    client.protocol.readConnectionLost()
    assert client.lines() == []
    assert client.transport.disconnecting


def test_carriageReturnAloneEndsNoLine(server: Server) -> None:
    """
    Lines separated by C{\\r} alone are one line: answered with one parse
    error that says a C{\\r} does not end a line (and the connection stays
    usable), as JSON Lines frames them.
    """
    client = server.connect()
    client.sendRaw(
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}\r'
        b'{"jsonrpc":"2.0","id":2,"method":"echo","params":[2]}\r\n'
    )
    (reply,) = client.replies()
    error = assertError(reply, None, -32700)
    assert "\\r alone does not end" in error["data"], error
    client.call(3, "echo", 3)
    server.runAll()
    assert client.replies() == [result(3, 3)]


# -- bugs ------------------------------------------------------------------------


def _outcome(reply: dict[str, Any]) -> tuple[Any, str, Any]:
    if "error" in reply:
        return (reply["id"], "error", reply["error"]["code"])
    return (reply["id"], "result", reply["result"])


@pytest.mark.parametrize(
    ("line", "acceptable"),
    [
        (
            b'{"jsonrpc":"2.0","id":1e400,"method":"echo","params":[1]}',
            {(None, "error", -32700), (None, "error", -32600)},
        ),
        (
            b'{"jsonrpc":"2.0","id":"\\ud800","method":"echo","params":[1]}',
            {("\ud800", "result", 1), (None, "error", -32600)},
        ),
        (
            b'{"jsonrpc":"1.0","id":1e400}',
            {(None, "error", -32700), (None, "error", -32600)},
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}', {(1, "error", -32601)}),
    ],
    ids=["inf-id", "surrogate-id", "invalid-with-inf-id", "surrogate-method"],
)
def test_unusualIds(
    line: bytes, acceptable: set[tuple[Any, str, Any]], loggedErrors: list[LogEvent]
) -> None:
    """
    An id or method that JSON allows but that is awkward to echo (a number
    too large for a float, a lone surrogate) gets exactly one fitting reply
    (the id echoed as sent, or a clear error with a null id), and the
    connection carries on. (Regression: the reply was lost, or an exception
    escaped dataReceived.)
    """
    server = Server()
    client = server.connect()
    client.sendRaw(line + b"\n" + _jsonrpc.line(request("ok", "echo", "after")))
    server.runAll()
    replies = client.replies()
    assert len(replies) == 2, replies
    (other,) = [r for r in replies if r["id"] != "ok"]
    assert _outcome(other) in acceptable, other
    assert result("ok", "after") in replies
    assert loggedErrors == []


def _nested(depth: int) -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":['
        + b"[" * depth
        + b"]" * depth
        + b"]}"
    )


def _deepestParsed() -> int:
    """
    The deepest nesting L{_jsonrpc.parseLine} decodes when called here.
    """
    low, high = 1, 100_000
    while low < high:
        middle = (low + high + 1) // 2
        if isinstance(_jsonrpc.parseLine(_nested(middle)), _jsonrpc.Request):
            low = middle
        else:
            high = middle - 1
    return low


def test_deepButDecodableParams() -> None:
    """
    Params nested as deep as the decoder allows (at any depth near its
    limit) get exactly one reply, a result or an error, never an exception
    or a stuck worker. (Regression: near the limit, a RecursionError while
    re-encoding escaped dataReceived and left a worker BUSY forever, or the
    reply was dropped silently.)
    """
    deepest = _deepestParsed()
    for depth in range(max(1, deepest - 60), deepest + 2):
        server = Server()
        client = server.connect()
        client.sendRaw(_nested(depth) + b"\n")
        server.runAll()
        replies = client.replies()
        assert len(replies) == 1, (depth, replies)
        (reply,) = replies
        if reply["id"] is None:
            # Too deep for the decoder at the server's stack depth.
            assertError(reply, None, -32700)
        else:
            assert reply["id"] == 1
            assert "result" in reply or "error" in reply
        assert server.pool.stats()["workers"]["idle"] == 2, depth
