"""
Unit tests of the hot path's lean lane (issue 15), on the in-memory
FakeProcessReactor: a call with a sink and no Deferred, one deadline timer
per pool, worker results spliced into replies as the worker wrote them, and
the JSON fast paths behind them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from taskservice import _json, _jsonrpc
from taskservice._call import Call
from taskservice._jsonrpc import Request
from taskservice._session import Session
from taskservice._sessionhost import SessionConfig
from taskservice.errors import MethodNotFound, TimedOut
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor
from taskservice.wire import NO_OPTIONS, CallOptions
from tests.test_session import FakeHost

_case = SynchronousTestCase()


class Sink:
    """
    A L{taskservice._call.CallSink} that keeps what it hears.
    """

    def __init__(self) -> None:
        self.done: list[Call] = []
        self.progress: list[tuple[Call, Any]] = []

    def callDone(self, call: Call) -> None:
        self.done.append(call)

    def callProgress(self, call: Call, update: dict[str, Any]) -> None:
        self.progress.append((call, update))


def readyPool(size: int = 2, **kwargs: Any) -> tuple[FakeProcessReactor, ProcessPool]:
    reactor = FakeProcessReactor()
    kwargs.setdefault("defaultTimeout", 10.0)
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=size, **kwargs)
    pool.startService()
    reactor.readyAll()
    return reactor, pool


def test_leanCallEndsInItsSinkWithTheWorkersBytes() -> None:
    """
    L{ProcessPool.start} runs a call with no Deferred: its sink hears of its
    end, with the result's JSON as the worker wrote it; the value is
    decoded only when read.
    """
    reactor, pool = readyPool()
    sink = Sink()
    call = pool.start("add", (1, 2), {}, NO_OPTIONS, sink, "tag")
    worker = next(w for w in reactor.workers if w.calls)
    cid = worker.calls[0]["cid"]
    worker.protocol.childDataReceived(
        4, _frame(b'{"op":"result","cid":%d,"result":[3, 4]}' % cid)
    )
    assert sink.done == [call]
    assert call.tag == "tag"
    assert call.resultBytes == b"[3, 4]"
    assert call.outcome is not None and call.outcome.value == [3, 4]
    assert call._deferred is None, "no Deferred was made for it"
    assert pool.completed == 1


def test_leanCallRefusedAtOnceIsToldBeforeStartReturns() -> None:
    """
    A call refused at submission (no such task) ends in its sink before
    L{ProcessPool.start} returns, with the error the Deferred would carry.
    """
    reactor, pool = readyPool()
    sink = Sink()
    call = pool.start("no.such.task", (), {}, NO_OPTIONS, sink)
    assert sink.done == [call]
    assert call.outcome is not None
    assert isinstance(call.outcome.error, MethodNotFound)


def test_leanCallCancelOnlyIfQueued() -> None:
    """
    C{call.cancel(onlyIfQueued=True)} removes a queued call and spares a
    running one; C{call.cancel()} ends a running call as cancelling its
    Deferred would.
    """
    reactor, pool = readyPool(size=1, pipeline=1)
    sink = Sink()
    running = pool.start("add", (1, 1), {}, NO_OPTIONS, sink)
    queued = pool.start("add", (2, 2), {}, NO_OPTIONS, sink)
    running.cancel(onlyIfQueued=True)
    assert _error(running) is None
    queued.cancel(onlyIfQueued=True)
    assert isinstance(_error(queued), CancelledError)
    running.cancel()
    assert isinstance(_error(running), CancelledError)
    assert sink.done == [queued, running]


def test_oneDeadlineTimerForAllRunningCalls() -> None:
    """
    Running calls share one timer, set for the earliest deadline: a call
    with a later deadline adds none; one with an earlier deadline moves it.
    Each call still times out at its own deadline, and the timer goes once
    no call runs.
    """
    reactor, pool = readyPool(size=3)
    first = pool.submit("add", [1, 1], timeout=5.0)
    second = pool.submit("add", [2, 2], timeout=8.0)
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(1.0)
    third = pool.submit("add", [3, 3], timeout=2.0)
    [timer] = reactor.getDelayedCalls()
    assert timer.getTime() == pytest.approx(3.0)
    reactor.advance(2.0)
    _case.failureResultOf(third, TimedOut)
    _case.assertNoResult(first)
    _case.assertNoResult(second)
    reactor.advance(2.0)
    _case.failureResultOf(first, TimedOut)
    _case.assertNoResult(second)
    reactor.advance(3.0)
    _case.failureResultOf(second, TimedOut)
    for worker in reactor.workers:
        if worker.killed:
            worker.reap()
    sweeps = [c for c in reactor.getDelayedCalls() if "Deadlines._sweep" in repr(c)]
    assert sweeps == []


def test_sessionLaneSplicesTheResultAndAnswersTheDialect() -> None:
    """
    A session whose host has C{startCall} runs task calls on the lean lane:
    the reply carries the worker's result bytes as they are, with the id;
    a FAQ-dialect line gets the bare bytes; both in the pool's counts.
    """
    reactor, pool = readyPool(size=1)

    class LaneHost(FakeHost):
        def __init__(self) -> None:
            super().__init__()
            self.raw: list[bytes] = []

        def send(self, data: bytes) -> None:
            self.raw.append(data)
            super().send(data)

        def startCall(self, request: Request, sink: Any, tag: Any) -> Call:
            return pool.start(
                request.method, request.args, request.kwargs, request.options, sink, tag
            )

    host = LaneHost()
    session = Session(host, SessionConfig(maxInFlight=10))
    session.messageReceived(b'{"jsonrpc":"2.0","id":"a","method":"add","params":[1,2]}')
    assert host.started == [], "not through host.call"
    [worker] = reactor.workers
    cid = worker.calls[0]["cid"]
    worker.calls.pop(0)
    worker.protocol.childDataReceived(
        4, _frame(b'{"op":"result","cid":%d,"result":{"x": 1}}' % cid)
    )
    assert host.raw == [b'{"jsonrpc":"2.0","id":"a","result":{"x": 1}}']
    session.messageReceived(b'{"function":"add","args":[2,2]}')
    worker.reply(4)
    assert host.raw[1:] == [b"4"]
    assert session.outstanding == 0
    assert pool.completed == 2


def _error(call: Call) -> BaseException | None:
    """
    The error C{call} ended with; L{None} while it has no outcome.
    """
    return None if call.outcome is None else call.outcome.error


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


LINES = [
    b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}',
    b'{"jsonrpc":"2.0","method":"echo"}',
    b'{"jsonrpc":"2.0","id":null,"method":"m","params":{"a":[1,{"b":null}]}}',
    b'{"jsonrpc":"2.0","id":"x\\u00e9","method":"m","params":[123456789012345678901234567890]}',
    b'{"jsonrpc":"2.0","id":1.5,"method":"m","params":[]}',
]


@pytest.mark.parametrize("line", LINES)
def test_plainRequestGivesWhatLoadsGives(line: bytes) -> None:
    """
    The fast decoding of a common request line finds the method, id and
    params that decoding it whole finds.
    """
    found = _json.plainRequest(line)
    assert found is not None
    whole = _json.loads(line)
    method, requestId, params = found
    assert method == whole["method"]
    assert (requestId is _json.NO_ID) == ("id" not in whole)
    if "id" in whole:
        assert requestId == whole["id"] and type(requestId) is type(whole["id"])
    assert (params is _json.NO_ID) == ("params" not in whole)
    if "params" in whole:
        assert params == whole["params"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":true,"method":"m"}',
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":3}',
        b'{"jsonrpc":"2.0","id":1,"method":"m","timeout":2}',
        b'{"jsonrpc":"2.0","id":1,"method":7}',
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":["\\ud800"]}',
        b'{"method":"m","jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1e400]}',
    ],
)
def test_plainRequestLeavesTheRestToTheWholeDecoding(line: bytes) -> None:
    """
    Anything but the common form is left to the whole decoding (and its
    checks): parseLine answers it as it always did.
    """
    assert _json.plainRequest(line) is None


def test_parseLineUsesTheFastPathWithTheSameRequest() -> None:
    """
    parseLine's request for a common line is the one the whole decoding
    would build, timeout-free.
    """
    request = _jsonrpc.parseLine(b'{"jsonrpc":"2.0","id":7,"method":"m","params":[1]}')
    assert request == Request("m", (1,), {}, 7, False)
    request = _jsonrpc.parseLine(b'{"jsonrpc":"2.0","id":7,"method":"m","timeout":2}')
    assert isinstance(request, Request) and request.options == CallOptions(timeout=2)


def test_resultFrameAndDecodedEncoding() -> None:
    """
    A worker's result frame gives its call id and the result's bytes
    untouched; other frames are left to L{_json.loads}. dumpsDecoded's
    bytes decode to the value given, lone surrogates and huge integers
    included.
    """
    assert _json.resultFrame(b'{"op":"result","cid":3,"result":{"a": [1]}}') == (
        3,
        b'{"a": [1]}',
    )
    assert _json.resultFrame(b'{"op":"error","cid":3,"error":{}}') is None
    assert _json.resultFrame(b'{"op":"result","cid":"3","result":1}') is None
    for value in [{"a": (1, 2)}, ["\ud800"], [10**40], {"f": 1e16}]:
        encoded = _json.dumpsDecoded(value)
        assert _json.loads(encoded) == json.loads(json.dumps(value))


def test_aCallStartedByATimeoutKeepsTheEarlierDeadline() -> None:
    """
    A call dispatched while the deadline timer sweeps (by a caller told of
    a timeout) does not push back an earlier deadline of a call still
    running.
    """
    reactor, pool = readyPool(size=4)
    first = pool.submit("add", [1, 1], timeout=1.0)
    second = pool.submit("add", [2, 2], timeout=5.0)
    later: list[Any] = []

    def timedOut(failure: Any) -> None:
        later.append(pool.submit("add", [3, 3], timeout=10.0))

    first.addErrback(timedOut)
    reactor.advance(1.0)
    assert len(later) == 1
    reactor.advance(4.0)
    _case.failureResultOf(second, TimedOut)
    _case.assertNoResult(later[0])
    reactor.advance(6.0)
    _case.failureResultOf(later[0], TimedOut)
