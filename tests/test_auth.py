"""
Unit tests of the shared-secret token: L{taskservice._auth}, C{$/auth} on
the task server (over a L{StringTransport}, with fake workers, see
L{tests.test_server}) and on the client (L{TaskClientProtocol} over a
L{StringTransport}, L{TaskClient} on a L{MemoryReactorClock}).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from taskservice._auth import PRE_AUTH_MAX_LINE, Token, readTokenFile
from taskservice.client import TaskClient, TaskClientProtocol
from taskservice.errors import Unauthorised, Unavailable
from tests.test_server import Client, Server, assertError, notification, request

SECRET = "s3cret-7f1c2a9e"
_case = SynchronousTestCase()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """
    Every event logged during the test.
    """
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def assertSecretNotIn(events: list[LogEvent], secret: str = SECRET) -> None:
    """
    C{secret} appears in no event: not in its text, its fields or its
    failure's traceback.
    """
    for event in events:
        text = formatEvent(event) + repr(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += failure.getTraceback()
        assert secret not in text, event


# -- the token itself ----------------------------------------------------------


def test_tokenHidesItself() -> None:
    """
    A Token compares its secret but never shows it: not in repr, str or
    formatting.
    """
    token = Token(SECRET)
    assert token.matches(SECRET)
    assert not token.matches(SECRET + "x")
    assert not token.matches(SECRET[:-1])
    assert not token.matches(None)
    assert not token.matches(1234)
    assert not token.matches("\ud800")
    assert token.reveal() == SECRET
    for shown in (repr(token), str(token), f"{token}", repr([token])):
        assert SECRET not in shown
    with pytest.raises(ValueError):
        Token("")


def test_tokenFileStripsWhitespace(tmp_path: Path) -> None:
    """
    A token file holds one secret; whitespace around it (a trailing newline,
    say) is not part of it.
    """
    path = tmp_path / "token"
    path.write_text(f"  {SECRET}\n\n")
    path.chmod(0o600)
    assert readTokenFile(str(path)).reveal() == SECRET


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"", "empty"),
        (b" \n\t\n", "empty"),
        (b"alpha-7\nbeta-8\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 5000, "larger than"),
    ],
)
def test_badTokenFiles(tmp_path: Path, content: bytes, complaint: str) -> None:
    """
    An empty or blank file, more than one line, non-UTF-8 bytes or an
    oversize file are refused, the message naming the file, never quoting
    its content.
    """
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError) as raised:
        readTokenFile(str(path))
    assert complaint in str(raised.value)
    assert str(path) in str(raised.value)
    assert "alpha-7" not in str(raised.value)


def test_missingTokenFile(tmp_path: Path) -> None:
    """
    A token file that does not exist (or is a directory) is refused,
    naming it.
    """
    with pytest.raises(ValueError, match="No such file"):
        readTokenFile(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"not a regular file|Is a directory"):
        readTokenFile(str(tmp_path))


def test_exposedTokenFileWarns(tmp_path: Path, logged: list[LogEvent]) -> None:
    """
    A token file readable by group or others is used, with a warning that
    names the file and its mode (not the token); a private one is silent.
    """
    path = tmp_path / "token"
    path.write_text(SECRET)
    path.chmod(0o600)
    readTokenFile(str(path))
    assert not [e for e in logged if "token file" in formatEvent(e)]
    path.chmod(0o644)
    assert readTokenFile(str(path)).reveal() == SECRET
    (warning,) = [e for e in logged if "token file" in formatEvent(e)]
    text = formatEvent(warning)
    assert str(path) in text and "0644" in text and "chmod 600" in text
    assertSecretNotIn(logged)


# -- the server ----------------------------------------------------------------


@pytest.fixture
def server() -> Server:
    """
    A task server (fake workers) that requires SECRET.
    """
    server = Server()
    server.factory.token = Token(SECRET)
    return server


def auth(requestId: Any = 1, token: Any = SECRET) -> dict[str, Any]:
    return request(requestId, "$/auth", token=token)


def closed(client: Client) -> bool:
    return bool(client.transport.disconnecting)


def test_authThenCall(server: Server, logged: list[LogEvent]) -> None:
    """
    $/auth with the token is answered true; then calls run as usual.
    """
    client = server.connect()
    client.send(auth())
    assert client.replies() == [{"jsonrpc": "2.0", "id": 1, "result": True}]
    client.call(2, "add", 1, 2)
    server.runAll()
    assert client.replies() == [{"jsonrpc": "2.0", "id": 2, "result": 3}]
    assert not closed(client)
    assertSecretNotIn(logged)


def test_callsPipelinedBehindAuth(server: Server) -> None:
    """
    Calls sent in the same chunk right behind $/auth are served, a line
    longer than the pre-auth limit included: the limit rises as soon as
    $/auth succeeds.
    """
    client = server.connect()
    big = "x" * (PRE_AUTH_MAX_LINE * 4)
    client.send(auth(), request(2, "add", 1, 2), request(3, "echo", big))
    server.runAll()
    replies = client.replies()
    assert replies[0] == {"jsonrpc": "2.0", "id": 1, "result": True}
    assert sorted(replies[1:], key=lambda r: r["id"]) == [
        {"jsonrpc": "2.0", "id": 2, "result": 3},
        {"jsonrpc": "2.0", "id": 3, "result": big},
    ]


REFUSALS: list[tuple[str, bytes, Any]] = [
    ("a call first", b'{"jsonrpc":"2.0","id":7,"method":"add","params":[1,2]}', 7),
    ("a notification first", b'{"jsonrpc":"2.0","method":"add","params":[1,2]}', None),
    ("$/stats first", b'{"jsonrpc":"2.0","id":"s","method":"$/stats"}', "s"),
    (
        "a batch (even holding $/auth)",
        b'[{"jsonrpc":"2.0","id":1,"method":"$/auth","params":{"token":"'
        + SECRET.encode()
        + b'"}}]',
        None,
    ),
    ("invalid JSON", b"{nope", None),
    ("a wrong token", json.dumps(auth(token=SECRET + "x")).encode(), 1),
    ("a token of the wrong case", json.dumps(auth(token=SECRET.upper())).encode(), 1),
    ("no token", b'{"jsonrpc":"2.0","id":1,"method":"$/auth"}', 1),
    ("a token by position", json.dumps(request(1, "$/auth", SECRET)).encode(), 1),
    ("a number as token", json.dumps(auth(token=1234)).encode(), 1),
    ("an empty token", json.dumps(auth(token="")).encode(), 1),
]


@pytest.mark.parametrize(
    ("case", "line", "requestId"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusals(
    server: Server, logged: list[LogEvent], case: str, line: bytes, requestId: Any
) -> None:
    """
    Before a successful $/auth, anything else (a call, a notification, a
    batch, garbage) and a wrong or missing token are answered -32005 (with
    the request's id when it had one, else null) and the connection is
    closed once the reply is written; lines already sent behind it are
    ignored and never run. The refusal is logged, without the token.
    (Closing stops the protocol being its transport's producer first: TLS
    transports do not close while they have one.)
    """
    client = server.connect()
    client.sendRaw(line + b"\n" + json.dumps(request(9, "add", 1, 1)).encode() + b"\n")
    server.runAll()
    (reply,) = client.replies()
    error = assertError(reply, requestId, -32005)
    assert error["message"] == "unauthorised"
    assert SECRET not in json.dumps(reply)
    assert closed(client)
    # No longer its transport's producer: a TLS transport would not close.
    assert client.transport.producer is None
    assert server.dispatched() == []
    assert any("refused" in formatEvent(e) for e in logged)
    assertSecretNotIn(logged)


def test_seedDialectRefused(server: Server) -> None:
    """
    The Workerman dialect before $/auth is answered in its own form,
    {"error": {...}} with -32005, and the connection closed.
    """
    client = server.connect()
    client.sendRaw(b'{"function":"add","args":[1,2]}\n')
    assert client.replies() == [
        {
            "error": {
                "code": -32005,
                "message": "unauthorised",
                "data": "authenticate first: send $/auth with the token",
            }
        }
    ]
    assert closed(client)


def test_seedDialectAuth(server: Server) -> None:
    """
    The Workerman dialect can authenticate too: {"function": "$/auth",
    "args": {"token": ...}} is answered with a bare true.
    """
    client = server.connect()
    client.sendRaw(
        b'{"function":"$/auth","args":{"token":"%s"}}\n' % SECRET.encode()
        + b'{"function":"add","args":[1,2]}\n'
    )
    server.runAll()
    assert client.replies() == [True, 3]
    assert not closed(client)


def test_overlongLineBeforeAuth(server: Server) -> None:
    """
    Before $/auth, a line (or unterminated data) longer than the pre-auth
    limit is refused at once: an unauthenticated peer cannot make the
    server buffer megabytes.
    """
    client = server.connect()
    client.sendRaw(b"x" * (PRE_AUTH_MAX_LINE + 1))
    (reply,) = client.replies()
    assertError(reply, None, -32005)
    assert closed(client)


def test_authNotification(server: Server) -> None:
    """
    $/auth sent as a notification opens the connection without a reply.
    """
    client = server.connect()
    client.send(notification("$/auth", token=SECRET))
    assert client.replies() == []
    client.call(1, "add", 2, 2)
    server.runAll()
    assert client.replies() == [{"jsonrpc": "2.0", "id": 1, "result": 4}]


def test_authAgainOnceOpen(server: Server) -> None:
    """
    Once open, $/auth checks the token again but changes nothing: the right
    one is true, a wrong one -32005, and the connection stays open (its
    calls in flight are still answered).
    """
    client = server.connect()
    client.send(auth())
    client.call(2, "add", 1, 1)
    client.send(auth(3), auth(4, token="wrong"))
    server.runAll()
    replies = {r["id"]: r for r in client.replies()}
    assert replies[3]["result"] is True
    assertError(replies[4], 4, -32005)
    assert replies[2]["result"] == 2
    assert not closed(client)


def test_noTokenConfigured() -> None:
    """
    Without a token, $/auth is answered true whatever it carries, so a
    client may always send it; calls need no $/auth.
    """
    server = Server()
    client = server.connect()
    client.call(1, "add", 1, 2)
    client.send(auth(2), auth(3, token="anything"), request(4, "$/auth"))
    server.runAll()
    assert sorted(client.replies(), key=lambda r: r["id"]) == [
        {"jsonrpc": "2.0", "id": 1, "result": 3},
        {"jsonrpc": "2.0", "id": 2, "result": True},
        {"jsonrpc": "2.0", "id": 3, "result": True},
        {"jsonrpc": "2.0", "id": 4, "result": True},
    ]


def test_tokenNotInRepr(server: Server) -> None:
    """
    Neither the factory's nor a protocol's attributes show the token.
    """
    client = server.connect()
    for thing in (server.factory, client.protocol):
        assert SECRET not in repr(thing)
        assert SECRET not in repr(vars(thing))


# -- the client protocol ---------------------------------------------------------


def connected(**kwargs: Any) -> tuple[TaskClientProtocol, StringTransport]:
    protocol = TaskClientProtocol(**kwargs)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def sent(transport: StringTransport) -> list[dict[str, Any]]:
    lines = transport.value().splitlines()
    transport.clear()
    return [json.loads(line) for line in lines]


def test_clientSendsAuthFirst() -> None:
    """
    With a token, the first line is $/auth carrying it; calls are sent right
    behind it without waiting, and answered once it is accepted.
    """
    protocol, transport = connected(token=SECRET)
    d = protocol.request("add", [1, 2])
    assert sent(transport) == [
        {"jsonrpc": "2.0", "id": 1, "method": "$/auth", "params": {"token": SECRET}},
        {"jsonrpc": "2.0", "id": 2, "method": "add", "params": [1, 2]},
    ]
    assert [protocol.ready] == [False]
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":1,"result":true}\n{"jsonrpc":"2.0","id":2,"result":3}\n'
    )
    assert protocol.ready
    assert _case.successResultOf(d) == 3


def test_clientAuthWithoutToken() -> None:
    """
    Asked to authenticate without a token, the client sends $/auth with no
    params; a server without $/auth (-32601) is fine then.
    """
    protocol, transport = connected(authenticate=True)
    assert sent(transport) == [{"jsonrpc": "2.0", "id": 1, "method": "$/auth"}]
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"not found"}}\n'
    )
    assert protocol.ready


def test_clientRefused(logged: list[LogEvent]) -> None:
    """
    When $/auth is refused, every call in flight fails with Unauthorised at
    once, the client closes the connection, later calls fail the same way
    at once, and late replies are ignored. The token is in no log event.
    """
    protocol, transport = connected(token=SECRET)
    calls = [protocol.request("add", [i, i]) for i in range(3)]
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"unauthorised",'
        b'"data":"wrong or missing token"}}\n'
    )
    for d in calls:
        error = _case.failureResultOf(d, Unauthorised).value
        assert error.data == "wrong or missing token"
    assert transport.disconnecting
    assert protocol.refusal is not None and not protocol.ready
    _case.failureResultOf(protocol.request("add", [1, 1]), Unauthorised)
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":2,"result":0}\n')
    protocol.connectionLost(Failure(ConnectionDone()))
    assertSecretNotIn(logged)
    assert SECRET not in repr(vars(protocol))


def test_clientRefusedWithNullId() -> None:
    """
    A -32005 with id null while $/auth is pending (the server refused a
    line it could not read) is a refusal too.
    """
    protocol, transport = connected(token=SECRET)
    d = protocol.request("add", [1, 1])
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"unauthorised"}}\n'
    )
    _case.failureResultOf(d, Unauthorised)


def test_clientOtherNullIdErrorIsNoRefusal() -> None:
    """
    Another error with id null while $/auth is pending (a line of ours over
    the server's limit, say) is not taken for the answer to $/auth.
    """
    protocol, transport = connected(token=SECRET)
    d = protocol.request("add", [1, 1])
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32004,"message":"too large"}}\n'
        b'{"jsonrpc":"2.0","id":1,"result":true}\n'
        b'{"jsonrpc":"2.0","id":2,"result":2}\n'
    )
    assert protocol.ready and protocol.refusal is None
    assert _case.successResultOf(d) == 2


def test_clientOtherAuthErrorWithToken() -> None:
    """
    With a token, any answer to $/auth but true (here: a server without
    $/auth) is a refusal: the calls fail with Unauthorised.
    """
    protocol, transport = connected(token=SECRET)
    d = protocol.request("add", [1, 1])
    protocol.dataReceived(
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"not found"}}\n'
    )
    error = _case.failureResultOf(d, Unauthorised).value
    assert "did not accept" in str(error.data)


# -- TaskClient: refusals back off ---------------------------------------------


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """
    Connects at once, to a StringTransport; each connection is either
    accepted or refused by hand.
    """

    def __init__(self) -> None:
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def refuse(self) -> None:
        protocol = self.protocols[-1]
        protocol.dataReceived(
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"unauthorised",'
            b'"data":"wrong or missing token"}}\n'
        )
        protocol.connectionLost(Failure(ConnectionDone()))

    def accept(self) -> None:
        self.protocols[-1].dataReceived(b'{"jsonrpc":"2.0","id":1,"result":true}\n')

    def drop(self) -> None:
        self.protocols[-1].connectionLost(Failure(ConnectionDone()))


def nextRetry(reactor: MemoryReactorClock) -> float:
    (call,) = reactor.getDelayedCalls()
    return float(call.getTime() - reactor.seconds())


def test_refusedClientBacksOff() -> None:
    """
    A TaskClient whose token is refused keeps reconnecting, backing off to
    its maximum delay instead of spinning (each refused connection counts as
    a failed attempt, though TCP connected); meanwhile calls fail at once
    with Unauthorised. An accepted connection resets the backoff and the
    calls go through.
    """
    reactor = MemoryReactorClock()
    endpoint = RefusingEndpoint()
    client = TaskClient(reactor, endpoint, token=SECRET, maxRetryDelay=5.0)
    client.startService()
    pipelined = client.call("add", 1, 1)
    reactor.advance(0)
    delays = []
    for _ in range(12):
        endpoint.refuse()
        delays.append(nextRetry(reactor))
        _case.failureResultOf(client.call("add", 1, 1), Unauthorised)
        reactor.advance(delays[-1])
    _case.failureResultOf(pipelined, Unauthorised)
    assert len(endpoint.protocols) == 13
    # backoffPolicy adds up to 1 s of jitter to min(0.1 * 1.5 ** n, 5).
    assert delays[0] < 1.3
    assert all(d >= 5.0 for d in delays[-3:]), delays
    endpoint.accept()
    d = client.call("add", 2, 2)
    endpoint.protocols[-1].dataReceived(b'{"jsonrpc":"2.0","id":2,"result":4}\n')
    assert _case.successResultOf(d) == 4
    endpoint.drop()
    assert nextRetry(reactor) < 1.3
    error = _case.failureResultOf(client.call("add", 1, 1), Unavailable).value
    assert error.message == "the task server is unreachable"
    _case.successResultOf(client.stopService())
    assert SECRET not in repr(vars(client))


def test_unprovenConnectionsBackOffToo() -> None:
    """
    A connection lost before $/auth was answered (as a TLS 1.3 server that
    refuses the client certificate after the handshake does) counts as a
    failed attempt too, and calls made meanwhile fail with Unavailable
    giving the reason.
    """
    reactor = MemoryReactorClock()
    endpoint = RefusingEndpoint()
    client = TaskClient(reactor, endpoint)
    client.startService()
    reactor.advance(0)
    delays = []
    for _ in range(12):
        endpoint.drop()
        delays.append(nextRetry(reactor))
        error = _case.failureResultOf(client.call("add", 1, 1), Unavailable).value
        assert error.data == {
            "reason": "Connection was closed cleanly. (before the server answered"
            " $/auth: a TLS port, which needs tls:, or not a task server?)"
        }
        reactor.advance(delays[-1])
    assert all(d >= 5.0 for d in delays[-3:]), delays
    stopped = client.stopService()
    endpoint.drop()
    _case.successResultOf(stopped)
