"""
Unit tests for L{taskservice._session}: the one JSON-RPC session that the
task server and the websocket gateway are transports for, driven directly
(messages in, encoded messages out) over an in-memory L{FakeHost}; no
transport, no pool, no reactor.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from taskservice._auth import Token
from taskservice._jsonrpc import Request
from taskservice._session import (
    HOLD_LIMIT,
    RETRY_AFTER,
    Access,
    Progress,
    Session,
    SessionConfig,
)
from taskservice.errors import MethodNotFound, TaskServiceError
from taskservice.wire import PRE_AUTH_MAX_LINE
from tests.badinput import ANY_DATA, badInputs

LIMIT = 4096


class FakeHost:
    """
    A L{taskservice._session.SessionHost} in memory: every task call waits
    until the test fires its Deferred (L{finish}); what is sent is kept
    decoded.
    """

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.calls: dict[str, tuple[Request, Progress | None, Deferred[Any]]] = {}
        self.started: list[str] = []
        self.jobRequests: list[Request] = []
        self.cancels: list[tuple[Deferred[Any], bool]] = []
        self.errors: list[tuple[int, bool, bool]] = []
        self.holds: list[bool] = []
        self.closed = 0
        self.refusedWhy: list[str] = []

    # SessionHost
    def send(self, data: bytes) -> None:
        assert not data.endswith(b"\n")
        self.sent.append(json.loads(data))

    def call(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        assert not request.method.startswith("$/")
        d: Deferred[Any] = Deferred()
        key = f"{request.method}{list(request.args)}"
        self.calls[key] = (request, onProgress, d)
        self.started.append(key)
        return d

    def stats(self) -> Deferred[Any]:
        return succeed({"workers": 2})

    def jobMethod(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        self.jobRequests.append(request)
        d: Deferred[Any] = Deferred()
        self.calls[request.method] = (request, onProgress, d)
        return d

    def cancel(self, call: Deferred[Any], onlyIfQueued: bool) -> None:
        self.cancels.append((call, onlyIfQueued))
        if not onlyIfQueued:
            call.cancel()

    def error(self, error: TaskServiceError, *, refused: bool, answered: bool) -> None:
        self.errors.append((int(error.code), refused, answered))

    def holdInput(self, hold: bool) -> None:
        self.holds.append(hold)

    def close(self) -> None:
        self.closed += 1

    def refuseConnection(self, why: str) -> None:
        self.refusedWhy.append(why)
        self.close()

    # for the tests
    def finish(self, key: str, result: Any) -> None:
        self.calls.pop(key)[2].callback(result)

    def take(self) -> list[Any]:
        sent, self.sent = self.sent, []
        return sent


def session(**rules: Any) -> tuple[Session, FakeHost]:
    host = FakeHost()
    rules.setdefault("maxInFlight", 10)
    rules.setdefault("maxLineLength", LIMIT)
    return Session(host, SessionConfig(**rules)), host


def send(s: Session, *messages: Any) -> None:
    for message in messages:
        s.messageReceived(json.dumps(message).encode())


def rpc(requestId: Any, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if requestId is not None:
        message["id"] = requestId
    if args or kwargs:
        message["params"] = kwargs or list(args)
    return message


def codes(replies: list[Any]) -> list[tuple[Any, Any]]:
    return [(r.get("id"), r.get("error", {}).get("code")) for r in replies]


# -- the error table -----------------------------------------------------------

SESSION_ERRORS = [
    bad
    for bad in badInputs(LIMIT)
    # (The others are the task registry's, behind the host.)
    if bad.code in (-32700, -32600, -32004) or bad.name == "unknown-builtin"
]


@pytest.mark.parametrize("refuseOverflow", [False, True])
@pytest.mark.parametrize("bad", SESSION_ERRORS, ids=lambda bad: bad.name)
def test_badInputGetsItsErrorAndTheSessionCarriesOn(
    bad: Any, refuseOverflow: bool
) -> None:
    """
    Each bad message of the shared table (tests/badinput.py) is answered
    with its error and id, counted as refused, under either overflow rule;
    a call after it runs and is answered.
    """
    s, host = session(refuseOverflow=refuseOverflow, dialect=not refuseOverflow)
    if len(bad.line) > LIMIT:
        s.messageTooLong(bad.line[:256])
    else:
        s.messageReceived(bad.line)
    [reply] = host.take()
    assert (reply["id"], reply["error"]["code"]) == (bad.replyId, bad.code)
    if bad.data is not ANY_DATA:
        assert reply["error"]["data"] == bad.data
    assert host.errors == [(bad.code, True, True)]
    send(s, rpc(2, "echo", 1))
    host.finish("echo[1]", 1)
    assert host.take() == [{"jsonrpc": "2.0", "id": 2, "result": 1}]


def test_duplicateIdInFlight() -> None:
    """
    A second call with the id of one in flight is -32600; the first is
    still answered, once.
    """
    s, host = session()
    send(s, rpc(1, "echo", 1), rpc(1, "echo", 2))
    assert codes(host.take()) == [(1, -32600)]
    host.finish("echo[1]", 1)
    assert host.take() == [{"jsonrpc": "2.0", "id": 1, "result": 1}]
    assert s.outstanding == 0


def test_callFailureIsItsWireError() -> None:
    """
    A call that fails with a L{TaskServiceError} is answered with it (not
    counted as refused); an unexpected exception is -32603.
    """
    s, host = session()
    send(s, rpc(1, "a"), rpc(2, "b"))
    host.calls.pop("a[]")[2].errback(MethodNotFound("method not found", "a"))
    host.calls.pop("b[]")[2].errback(ZeroDivisionError())
    assert codes(host.take()) == [(1, -32601), (2, -32603)]
    assert host.errors == [(-32601, False, True), (-32603, False, True)]


def test_unencodableResultIsAnInternalError() -> None:
    """
    A result that JSON cannot encode is -32603 with the call's id.
    """
    s, host = session()
    send(s, rpc(7, "echo"))
    host.finish("echo[]", {1, 2})
    assert codes(host.take()) == [(7, -32603)]


def test_progressIsNotifiedWithTheCallsId() -> None:
    """
    The host's progress callback writes C{$/progress} with the call's id;
    a notification gets no callback.
    """
    s, host = session()
    send(s, rpc("a", "work"), rpc(None, "quiet"))
    onProgress = host.calls["work[]"][1]
    assert onProgress is not None and host.calls["quiet[]"][1] is None
    onProgress({"done": 1})
    assert host.take() == [
        {"jsonrpc": "2.0", "method": "$/progress", "params": {"done": 1, "id": "a"}}
    ]


# -- batches -------------------------------------------------------------------


@pytest.mark.parametrize("refuseOverflow", [False, True])
def test_batchIsAnsweredInOneArray(refuseOverflow: bool) -> None:
    """
    A batch's calls, invalid members and notifications are answered in one
    array once all are done; notifications have no entry.
    """
    s, host = session(refuseOverflow=refuseOverflow, dialect=not refuseOverflow)
    send(s, [rpc(1, "a"), {"jsonrpc": "2.0", "id": 2}, rpc(None, "n"), rpc(3, "b")])
    assert host.take() == []
    host.finish("b[]", "B")
    host.finish("n[]", None)
    assert host.take() == []
    host.finish("a[]", "A")
    [batch] = host.take()
    assert [
        (r["id"], r.get("result"), r.get("error", {}).get("code")) for r in batch
    ] == [
        (1, "A", None),
        (2, None, -32600),
        (3, "B", None),
    ]
    assert s.outstanding == 0


def test_batchOfNotificationsIsNotAnswered() -> None:
    """
    A batch of notifications only gets no reply at all.
    """
    s, host = session()
    send(s, [rpc(None, "a"), rpc(None, "b")])
    host.finish("a[]", 1)
    host.finish("b[]", 2)
    assert host.take() == []


def test_batchOverTheBoundIsRefusedBeforeAnyRuns() -> None:
    """
    A batch of more than C{maxBatch} (or C{maxInFlight}) requests is -32004
    and none of it runs.
    """
    s, host = session(maxBatch=3, maxInFlight=10)
    send(s, [rpc(i, "echo", i) for i in range(4)])
    assert codes(host.take()) == [(None, -32004)]
    assert host.started == []
    s2, host2 = session(maxBatch=100, maxInFlight=2)
    send(s2, [rpc(i, "echo", i) for i in range(3)])
    assert codes(host2.take()) == [(None, -32004)]


def test_batchWaitsForRoomForAllOfIt() -> None:
    """
    Under the waiting rule a batch counts each request: it starts only
    when there is room for all of them, after what came before it.
    """
    s, host = session(maxInFlight=3)
    send(s, rpc(1, "a"), rpc(2, "b"))
    send(s, [rpc(3, "c"), rpc(4, "d")])
    send(s, rpc(5, "e"))
    assert host.started == ["a[]", "b[]"]
    host.finish("a[]", 1)
    assert host.started == ["a[]", "b[]", "c[]", "d[]"]
    host.finish("b[]", 2)
    assert host.started[-1] == "e[]"


# -- overflow ------------------------------------------------------------------


def test_waitingRuleKeepsOrderAndHoldsInput() -> None:
    """
    Past C{maxInFlight}, messages wait in order; past L{HOLD_LIMIT} bytes
    of them the host is asked to stop reading, and to resume below half.
    """
    s, host = session(maxInFlight=1)
    send(s, rpc(0, "first"))
    big = "x" * 1000
    count = HOLD_LIMIT // 1000 + 10
    for i in range(1, count):
        send(s, rpc(i, "echo", big))
    assert host.holds == [True]
    assert host.started == ["first[]"]
    host.finish("first[]", 0)
    for _ in range(count - 1):
        host.finish(host.started[-1], None)
    assert host.holds == [True, False]
    assert [r["id"] for r in host.take()] == list(range(count))


def test_refuseRuleAnswersOverloaded() -> None:
    """
    Under the refusing rule a call past the cap is -32003 with
    C{retryAfter} at once; a notification is dropped (counted, not
    answered); a cancel is never refused.
    """
    s, host = session(maxInFlight=1, refuseOverflow=True, dialect=False)
    send(s, rpc(1, "a"), rpc(2, "b"), rpc(None, "n"))
    [reply] = host.take()
    assert reply["id"] == 2
    assert reply["error"]["code"] == -32003
    assert reply["error"]["data"] == {"retryAfter": RETRY_AFTER, "limit": 1}
    assert host.errors == [(-32003, True, True), (-32003, True, False)]
    send(s, rpc(3, "$/cancelRequest", id=1))
    assert codes(host.take()) == [(1, -32800), (3, None)]
    assert s.outstanding == 0


# -- $/ routing ----------------------------------------------------------------


def test_statsAndJobMethodsGoToTheHost() -> None:
    """
    C{$/stats} is the host's stats; a job method goes to the host's
    C{jobMethod} with a progress callback; C{$/auth} without a token is
    C{true}.
    """
    s, host = session()
    send(s, rpc(1, "$/stats"), rpc(2, "$/attach", job="j1"), rpc(3, "$/auth"))
    assert host.take() == [
        {"jsonrpc": "2.0", "id": 1, "result": {"workers": 2}},
        {"jsonrpc": "2.0", "id": 3, "result": True},
    ]
    [job] = host.jobRequests
    assert job.method == "$/attach" and dict(job.kwargs) == {"job": "j1"}
    assert host.started == []
    host.finish("$/attach", {"state": "done"})
    assert host.take()[0]["result"] == {"state": "done"}


def test_authIsMethodNotFoundWhereNotAnswered() -> None:
    """
    Where the session does not answer C{$/auth} (the gateway), it is an
    unknown C{$/} method, as is any other.
    """
    s, host = session(refuseOverflow=True, dialect=False, answersAuth=False)
    send(s, rpc(1, "$/auth", token="t"), rpc(2, "$/nosuch"), rpc(None, "$/nosuch"))
    assert codes(host.take()) == [(1, -32601), (2, -32601)]
    assert host.errors[-1] == (-32601, True, False)


def test_jobMethodsAreNotInTheDialect() -> None:
    """
    A job method in the FAQ dialect is answered C{{"error": -32600}}.
    """
    s, host = session()
    s.messageReceived(b'{"function": "$/job", "args": [{"job": "x"}]}')
    assert host.take() == [
        {
            "error": {
                "code": -32600,
                "message": "invalid request",
                "data": "job methods are JSON-RPC only (no FAQ dialect)",
            }
        }
    ]


# -- cancel --------------------------------------------------------------------


def test_cancelRunningWaitingAndUnknown() -> None:
    """
    C{$/cancelRequest} cancels a running call (through the host), a call
    still waiting on the session (answered -32800 and never started), and
    ignores an unknown id; bad params are -32602.
    """
    s, host = session(maxInFlight=1)
    send(s, rpc(1, "run"), rpc(2, "wait"))
    send(s, rpc(10, "$/cancelRequest", id=2))
    assert codes(host.take()) == [(2, -32800), (10, None)]
    send(s, rpc(11, "$/cancelRequest", id=1))
    assert codes(host.take()) == [(1, -32800), (11, None)]
    assert host.started == ["run[]"]
    send(s, rpc(12, "$/cancelRequest", id=99), rpc(13, "$/cancelRequest", id=[1]))
    assert codes(host.take()) == [(12, None), (13, -32602)]


def test_cancelOnlyIfQueuedSparesRunningCallsButNotJobMethods() -> None:
    """
    With C{onlyIfQueued} the host is asked to cancel only if queued; a job
    method (an attach) is cancelled whatever the flag.
    """
    s, host = session()
    send(s, rpc(1, "run"), rpc(2, "$/attach", job="j"))
    send(s, rpc(3, "$/cancelRequest", id=1, onlyIfQueued=True))
    send(s, rpc(4, "$/cancelRequest", id=2, onlyIfQueued=True))
    assert [flag for _, flag in host.cancels] == [True, False]
    assert codes(host.take()) == [(3, None), (2, -32800), (4, None)]


def test_cancelInABatchReachesOnlyRunningCalls() -> None:
    """
    A cancel that waited its turn in a batch does not reach calls that
    arrived after it (still waiting): they run.
    """
    s, host = session(maxInFlight=1)
    send(s, rpc(1, "run"))
    send(s, [rpc(2, "$/cancelRequest", id=3)])
    send(s, rpc(3, "later"))
    host.finish("run[]", 1)
    assert host.take() == [
        {"jsonrpc": "2.0", "id": 1, "result": 1},
        [{"jsonrpc": "2.0", "id": 2, "result": None}],
    ]
    assert host.started == ["run[]", "later[]"]
    assert host.cancels == []
    host.finish("later[]", 3)
    assert host.take() == [{"jsonrpc": "2.0", "id": 3, "result": 3}]


# -- the FAQ dialect -------------------------------------------------------------


def test_dialectAnswersBareResultsInOrder() -> None:
    """
    Workerman FAQ lines are answered with bare results (or
    C{{"error": ...}}), in the order they came, whatever order the calls
    end in.
    """
    s, host = session()
    s.messageReceived(b'{"function": "slow", "args": []}')
    s.messageReceived(b'{"function": "fast", "args": []}')
    s.messageReceived(b'{"function": 3}')
    host.finish("fast[]", "F")
    assert host.take() == []
    host.finish("slow[]", "S")
    replies = host.take()
    assert replies[:2] == ["S", "F"]
    assert replies[2]["error"]["code"] == -32600


def test_dialectRefusedWhereItIsNotSpoken() -> None:
    """
    Without the dialect (the websocket) a FAQ line is -32600, id null.
    """
    s, host = session(refuseOverflow=True, dialect=False)
    s.messageReceived(b'{"function": "echo", "args": [1]}')
    assert codes(host.take()) == [(None, -32600)]
    with pytest.raises(ValueError):
        SessionConfig(maxInFlight=1, refuseOverflow=True, dialect=True)


# -- authentication --------------------------------------------------------------


def test_tokenGatesEverythingUntilAuth() -> None:
    """
    With a token the line limit is the pre-auth one until C{$/auth} with
    the right token opens the session; anything else first is -32005 and
    the connection is refused (and nothing more is read).
    """
    s, host = session(token=Token("secret"), maxLineLength=4 * PRE_AUTH_MAX_LINE)
    assert s.maxLineLength == PRE_AUTH_MAX_LINE
    send(s, rpc(1, "$/auth", token="secret"))
    assert s.access is Access.OPEN and s.maxLineLength == 4 * PRE_AUTH_MAX_LINE
    assert host.take() == [{"jsonrpc": "2.0", "id": 1, "result": True}]

    s2, host2 = session(token=Token("secret"))
    send(s2, rpc(1, "echo", 1), rpc(2, "$/auth", token="secret"))
    assert codes(host2.take()) == [(1, -32005)]
    assert s2.access is Access.REFUSED
    assert host2.refusedWhy == ["authenticate first: send $/auth with the token"]
    assert host2.started == []


def test_wrongTokenInTheDialectIsAnsweredInIt() -> None:
    """
    A FAQ-dialect C{$/auth} with a wrong token is answered C{{"error"}}.
    """
    s, host = session(token=Token("secret"))
    s.messageReceived(b'{"function": "$/auth", "args": {"token": "no"}}')
    assert host.take() == [
        {
            "error": {
                "code": -32005,
                "message": "unauthorised",
                "data": "wrong or missing token",
            }
        }
    ]


# -- the end ---------------------------------------------------------------------


def test_inputEndedClosesOnceAllIsAnswered() -> None:
    """
    After the peer's input ends the session closes once every call it sent
    is answered, waiting ones included.
    """
    s, host = session(maxInFlight=1)
    send(s, rpc(1, "a"), rpc(2, "b"))
    s.inputEnded()
    assert host.closed == 0
    host.finish("a[]", 1)
    assert host.closed == 0
    host.finish("b[]", 2)
    assert host.closed == 1
    assert [r["id"] for r in host.take()] == [1, 2]


def test_connectionLostDropsWaitingAndAnswersNothing() -> None:
    """
    When the peer goes, waiting calls are dropped, running ones are
    returned (for the host to abandon) and their results are not sent.
    """
    s, host = session(maxInFlight=1)
    send(s, rpc(1, "a"), rpc(2, "b"))
    running = s.connectionLost()
    assert running == [host.calls["a[]"][2]]
    host.finish("a[]", 1)
    assert host.take() == [] and host.started == ["a[]"]
    assert s.outstanding == 0


def test_hostErrorsAtOnceAreAnswered() -> None:
    """
    A host call that fails at once (a Deferred already failed) is answered
    and releases its count.
    """

    class Failing(FakeHost):
        def call(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
            return fail(MethodNotFound("method not found", request.method))

    host = Failing()
    s = Session(host, SessionConfig(maxInFlight=1))
    send(s, rpc(1, "x"), rpc(2, "y"))
    assert codes(host.take()) == [(1, -32601), (2, -32601)]
    assert s.outstanding == 0
