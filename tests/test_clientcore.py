"""
Unit tests of L{taskservice._clientcore.ClientCore}, the client side of the
task protocol without I/O: driven by hand through a recording shell, with no
reactor, no transport and no Deferred. The Twisted shell over it,
L{taskservice.client.TaskClientProtocol}, is tested in L{tests.test_client}
and L{tests.test_auth}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from taskservice._clientcore import ClientCore, CoreState, copyError
from taskservice.errors import (
    InvalidParams,
    MethodNotFound,
    ServerLost,
    TaskFailed,
    TaskServiceError,
    TimedOut,
    Unauthorised,
    Unreachable,
)

SECRET = "core-secret-1f2e"


class Shell:
    """
    A L{ClientShell} that records what the core asks of it; handles are
    strings naming the calls.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.closed = 0
        self.outcomes: list[tuple[str, str, Any]] = []
        self.acceptedTimes = 0
        self.errors: list[str] = []

    def sendLine(self, line: bytes) -> None:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        self.lines.append(line)

    def closeConnection(self) -> None:
        self.closed += 1

    def callSucceeded(self, handle: str, result: Any) -> None:
        self.outcomes.append(("result", handle, result))

    def callFailed(self, handle: str, error: TaskServiceError) -> None:
        self.outcomes.append(("error", handle, error))

    def callProgressed(self, handle: str, update: dict[str, Any]) -> None:
        self.outcomes.append(("progress", handle, update))

    def accepted(self) -> None:
        self.acceptedTimes += 1

    def logError(self, template: str, **fields: Any) -> None:
        self.errors.append(template.format(**fields))

    def sent(self) -> list[Any]:
        """
        The messages sent since the last look, decoded.
        """
        lines, self.lines = self.lines, []
        return [json.loads(line) for line in lines]


def connected(**kwargs: Any) -> tuple[ClientCore[str], Shell]:
    shell = Shell()
    core: ClientCore[str] = ClientCore(shell, **kwargs)
    core.connectionMade()
    return core, shell


def test_idsAndOutOfOrderAnswers() -> None:
    """
    Each call gets the next id and goes out at once; answers in any order
    reach the right handle, errors as the exception of their code.
    """
    core, shell = connected()
    assert core.state is CoreState.OPEN
    assert [core.request("echo", ["a"], "first"), core.request("nope", None, "x")] == [
        1,
        2,
    ]
    assert core.request("add", (1, 2), "tuple", timeout=2.5) == 3
    assert shell.sent() == [
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["a"]},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "id": 3, "method": "add", "params": [1, 2], "timeout": 2.5},
    ]
    assert core.inFlight == 3
    core.receiveLine(b'{"jsonrpc":"2.0","id":3,"result":3}')
    core.receiveLine(
        b'[{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not'
        b' found","data":"nope"}},{"jsonrpc":"2.0","id":1,"result":"a"}]'
    )
    (tupled, (kind, handle, error), first) = shell.outcomes
    assert tupled == ("result", "tuple", 3)
    assert (kind, handle, type(error), error.data) == (
        "error",
        "x",
        MethodNotFound,
        "nope",
    )
    assert first == ("result", "first", "a")
    assert core.inFlight == 0


def test_errorObjectsBecomeTheirExceptions() -> None:
    """
    The error object's code picks the exception class; message and data
    are kept, an unknown code is kept on a plain L{TaskServiceError}.
    """
    core, shell = connected()
    for handle in ("task", "time", "params", "odd"):
        core.request("f", [], handle)
    core.receiveData(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"ValueError: x",'
        b'"data":{"type":"ValueError","message":"x"}}}\n'
        b'{"jsonrpc":"2.0","id":2,"error":{"code":-32001,"message":"timed out",'
        b'"data":{"timeout":1}}}\n'
        b'{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"invalid"}}\n'
        b'{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"odd"}}\n'
    )
    errors = {handle: error for _, handle, error in shell.outcomes}
    assert isinstance(errors["task"], TaskFailed)
    assert (errors["task"].remoteType, errors["task"].remoteMessage) == (
        "ValueError",
        "x",
    )
    assert isinstance(errors["time"], TimedOut)
    assert errors["time"].data == {"timeout": 1}
    assert isinstance(errors["params"], InvalidParams)
    assert type(errors["odd"]) is TaskServiceError
    assert (errors["odd"].code, errors["odd"].message) == (-1, "odd")


def test_progressRoutedToItsCall() -> None:
    """
    C{$/progress} reaches its call without its id, any number of times;
    progress for no call of ours, or malformed, is dropped quietly.
    """
    core, shell = connected()
    core.request("count", [2], "a")
    core.request("count", [2], "b")
    core.receiveLine(
        b'{"jsonrpc":"2.0","method":"$/progress","params":{"id":2,"done":1,"total":2}}'
    )
    for params in (b'{"id":9}', b'{"id":[1]}', b"[1]", b'{"id":true}'):
        core.receiveLine(
            b'{"jsonrpc":"2.0","method":"$/progress","params":%s}' % params
        )
    core.receiveLine(b'{"jsonrpc":"2.0","id":2,"result":"done"}')
    assert shell.outcomes == [
        ("progress", "b", {"done": 1, "total": 2}),
        ("result", "b", "done"),
    ]
    assert shell.errors == []


def test_cancelAndAbandon() -> None:
    """
    Cancelling sends C{$/cancelRequest} naming the call; abandoning adds
    C{onlyIfQueued}. Either way the core reports no outcome for the call,
    ignores its one late answer quietly, and says whether it was in flight.
    """
    core, shell = connected()
    core.request("sleep", [10], "cancelled")
    core.request("sleep", [10], "abandoned")
    core.request("echo", [1], "kept")
    shell.sent()
    assert core.cancel(1) and core.abandon(2)
    assert not core.cancel(1) and not core.abandon(99)
    assert shell.sent() == [
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}},
        {
            "jsonrpc": "2.0",
            "method": "$/cancelRequest",
            "params": {"id": 2, "onlyIfQueued": True},
        },
    ]
    core.receiveData(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"cancelled"}}\n'
        b'{"jsonrpc":"2.0","id":2,"result":10}\n'
        b'{"jsonrpc":"2.0","id":3,"result":1}\n'
    )
    assert shell.outcomes == [("result", "kept", 1)]
    assert shell.errors == []
    core.receiveLine(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"x"}}')
    assert len(shell.errors) == 1


def test_garbageIsLoggedAndHarmless() -> None:
    """
    Undecodable lines and messages that are not objects are logged; the call
    in flight is answered afterwards as usual.
    """
    core, shell = connected()
    core.request("echo", [1], "a")
    core.receiveData(b'not json\n[1,2]\n"x"\n\n{"id":true,"result":1}\n')
    core.receiveData(b'{"jsonrpc":"2.0","id":1,"result":1}\n')
    assert shell.outcomes == [("result", "a", 1)]
    assert len(shell.errors) == 5


def test_notConnected() -> None:
    """
    Before the connection is made a call is refused with L{Unreachable} and
    not sent; unencodable params raise L{TypeError}, nothing sent either.
    """
    shell = Shell()
    core: ClientCore[str] = ClientCore(shell)
    assert core.state is CoreState.IDLE
    with pytest.raises(Unreachable):
        core.request("echo", [1], "a")
    core.connectionMade()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        core.request("echo", [object()], "a")
    assert shell.lines == [] and core.inFlight == 0


def test_authFirstThenPipelinedCalls() -> None:
    """
    With a token, C{$/auth} carrying it is the first line; calls go right
    behind it without waiting, and are answered once it is accepted.
    """
    core, shell = connected(token=SECRET)
    assert core.state is CoreState.AUTHENTICATING and not core.ready
    core.request("add", [1, 2], "sum")
    assert shell.sent() == [
        {"jsonrpc": "2.0", "id": 1, "method": "$/auth", "params": {"token": SECRET}},
        {"jsonrpc": "2.0", "id": 2, "method": "add", "params": [1, 2]},
    ]
    core.receiveData(
        b'{"jsonrpc":"2.0","id":1,"result":true}\n{"jsonrpc":"2.0","id":2,"result":3}\n'
    )
    assert (core.state, core.ready) == (CoreState.OPEN, True)
    assert shell.acceptedTimes == 1
    assert shell.outcomes == [("result", "sum", 3)]
    assert SECRET not in repr(vars(core))


def test_authWithoutTokenToleratesOldServers() -> None:
    """
    Asked to authenticate without a token, the core sends C{$/auth} without
    params; a server that has no C{$/auth} (-32601) accepts it then.
    """
    core, shell = connected(authenticate=True)
    assert shell.sent() == [{"jsonrpc": "2.0", "id": 1, "method": "$/auth"}]
    core.receiveLine(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"not found"}}'
    )
    assert core.ready and shell.acceptedTimes == 1


@pytest.mark.parametrize(
    ("answer", "data"),
    [
        (
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"unauthorised",'
            b'"data":"wrong or missing token"}}',
            "wrong or missing token",
        ),
        (
            b'{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"no"}}',
            None,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"not found"}}',
            {"reason": "the task server did not accept $/auth"},
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"result":false}',
            {"reason": "the task server did not accept $/auth"},
        ),
    ],
)
def test_refusal(answer: bytes, data: Any) -> None:
    """
    A -32005 to C{$/auth} (by id, or with id null), or, with a token, any
    answer but C{true}: every call in flight fails with L{Unauthorised}, the
    connection is closed, later calls are refused with a fresh copy of the
    refusal, and late answers are ignored.
    """
    core, shell = connected(token=SECRET)
    core.request("add", [1, 1], "a")
    core.request("add", [2, 2], "b")
    core.receiveLine(answer)
    assert core.state is CoreState.REFUSED and not core.ready
    assert [(kind, handle) for kind, handle, _ in shell.outcomes] == [
        ("error", "a"),
        ("error", "b"),
    ]
    errors = [error for _, _, error in shell.outcomes]
    assert all(isinstance(e, Unauthorised) and e.data == data for e in errors)
    assert errors[0] is not errors[1]
    assert shell.closed == 1
    with pytest.raises(Unauthorised) as later:
        core.request("add", [3, 3], "c")
    assert later.value is not core.refusal
    core.receiveLine(b'{"jsonrpc":"2.0","id":2,"result":2}')
    core.connectionLost("Connection was closed cleanly.")
    assert len(shell.outcomes) == 2
    with pytest.raises(Unauthorised):
        core.request("add", [3, 3], "d")
    assert not any(SECRET in error for error in shell.errors)


def test_otherNullIdErrorIsNoRefusal() -> None:
    """
    Another error with id null while C{$/auth} is pending (a line of ours
    over the server's limit, say) is not taken for its answer.
    """
    core, shell = connected(token=SECRET)
    core.request("add", [1, 1], "a")
    core.receiveData(
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32004,"message":"too large"}}\n'
        b'{"jsonrpc":"2.0","id":1,"result":true}\n'
        b'{"jsonrpc":"2.0","id":2,"result":2}\n'
    )
    assert core.ready and core.refusal is None
    assert shell.outcomes == [("result", "a", 2)]


def test_connectionLostFailsEveryCall() -> None:
    """
    A lost connection fails every call in flight with its own L{ServerLost}
    carrying the reason; later calls are refused with L{Unreachable}.
    """
    core, shell = connected()
    for handle in "abc":
        core.request("sleep", [1], handle)
    core.connectionLost("Connection lost.")
    assert core.state is CoreState.LOST and core.lostReason == "Connection lost."
    assert [handle for _, handle, _ in shell.outcomes] == ["a", "b", "c"]
    for _, _, error in shell.outcomes:
        assert isinstance(error, ServerLost)
        assert error.message == "connection to the task server lost"
        assert error.data == {"reason": "Connection lost."}
    assert len({id(error) for _, _, error in shell.outcomes}) == 3
    with pytest.raises(Unreachable):
        core.request("echo", [1], "d")


def test_lostBeforeAuthGuessesWhy() -> None:
    """
    Lost before C{$/auth} was answered, the reason gets a guess at the
    cause (a TLS port, or not a task server), unless it already explains
    itself; once accepted, C{ready} stays true after the loss.
    """
    core, _ = connected(authenticate=True)
    core.connectionLost("Connection was closed cleanly.")
    assert core.lostReason == (
        "Connection was closed cleanly. (before the server answered $/auth: a TLS"
        " port, which needs tls:, or not a task server?)"
    )
    core, _ = connected(authenticate=True)
    core.connectionLost("certificate verify failed", explained=True)
    assert core.lostReason == "certificate verify failed"
    core, _ = connected(authenticate=True)
    core.receiveLine(b'{"jsonrpc":"2.0","id":1,"result":true}')
    core.connectionLost("Connection lost.")
    assert core.lostReason == "Connection lost." and core.ready


def test_overlongResponseClosesTheConnection() -> None:
    """
    Fed bytes, the core splits them itself; a response over its line limit
    is logged and the connection closed.
    """
    core, shell = connected(maxLineLength=64)
    core.request("echo", ["x" * 100], "a")
    core.receiveData(b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * 100)
    assert shell.closed == 1
    assert shell.errors == ["a response longer than 64 bytes; closing the connection"]


def test_reentrantCallFromAnOutcome() -> None:
    """
    A shell may call the core again while it reports an outcome (a callback
    making the next call): the new call goes out, and the batch being read
    is still delivered in full.
    """

    class Chaining(Shell):
        def callSucceeded(self, handle: str, result: Any) -> None:
            super().callSucceeded(handle, result)
            if handle == "a":
                core.request("echo", [2], "next")

    shell = Chaining()
    core: ClientCore[str] = ClientCore(shell)
    core.connectionMade()
    core.request("echo", [1], "a")
    core.request("echo", [1], "b")
    shell.sent()
    core.receiveLine(b'[{"id":1,"result":1},{"id":2,"result":1}]')
    assert shell.sent() == [
        {"jsonrpc": "2.0", "id": 3, "method": "echo", "params": [2]}
    ]
    assert [handle for _, handle, _ in shell.outcomes] == ["a", "b"]


def test_copyError() -> None:
    """
    A copy of an error is a new exception of the same class, code, message
    and data.
    """
    error = TaskServiceError("odd", {"x": 1})
    error.code = -1
    copy = copyError(error)
    assert copy is not error
    assert (type(copy), copy.code, copy.message, copy.data) == (
        TaskServiceError,
        -1,
        "odd",
        {"x": 1},
    )


@pytest.mark.integration
def test_noTwistedImported() -> None:
    """
    The wire module, the splitter and the client core load no Twisted (a
    blocking or asyncio program must not), and importing the Twisted
    client or the gateway loads neither the server nor the pool nor the
    worker. Each in a fresh interpreter.
    """
    script = textwrap.dedent(
        """
        import sys
        import {modules}
        forbidden = {forbidden!r}
        print(repr(sorted(
            name for name in sys.modules
            if name in forbidden or name.split(".")[0] in forbidden
        )))
        """
    )
    cases = [
        (
            "taskservice.wire, taskservice._clientcore, taskservice.errors",
            ["twisted"],
        ),
        (
            "taskservice.client, taskservice.gateway, taskservice.balancer",
            ["taskservice.server", "taskservice.pool", "taskservice.worker"],
        ),
    ]
    for modules, forbidden in cases:
        result = subprocess.run(
            [sys.executable, "-c", script.format(modules=modules, forbidden=forbidden)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]", (modules, result.stdout)
