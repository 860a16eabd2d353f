"""
Unit tests of the task server's own refusals (C{taskservice_refused_total}
and C{$/stats}'s C{refused}): each kind of message the server answers with
an error itself, before the pool, driven through the protocol of
L{tests.test_server} (a L{StringTransport}, fake workers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from taskservice import _jsonrpc
from taskservice._auth import PRE_AUTH_MAX_LINE, Token
from taskservice.metrics import MetricsResource, makeRegistry
from taskservice.server import REFUSALS
from tests.test_gateway import render
from tests.test_metrics import scrape
from tests.test_server import Client, Server, notification, request, result

LIMIT = 4096
SECRET = "s3cret-token"
REASONS = tuple(REFUSALS.values())


class Metered:
    """
    A task server of fake workers and a registry of its and its pool's
    metrics.
    """

    def __init__(self, token: str | None = None) -> None:
        self.server = Server(maxLineLength=LIMIT)
        if token is not None:
            self.server.factory.token = Token(token)
        self.registry: CollectorRegistry = makeRegistry(
            pool=self.server.pool, server=self.server.factory, processMetrics=False
        )

    def refused(self) -> dict[str, float | None]:
        """
        C{taskservice_refused_total} by reason, as scraped.
        """
        return {
            reason: self.registry.get_sample_value(
                "taskservice_refused_total", {"reason": reason}
            )
            for reason in REASONS
        }

    def poolCalls(self) -> float:
        """
        Every call the pool counted, whatever its task and outcome.
        """
        return sum(
            sample.value
            for family in self.registry.collect()
            if family.name == "taskservice_calls"
            for sample in family.samples
            if sample.name == "taskservice_calls_total"
        )


def errorCode(reply: Any) -> int:
    """
    The error code of a reply: a JSON-RPC error response, a batch of one,
    or a Workerman-dialect C{{"error": ...}}.
    """
    if isinstance(reply, list):
        (reply,) = reply
    assert isinstance(reply, dict) and "error" in reply, reply
    code = reply["error"]["code"]
    assert isinstance(code, int)
    return code


def checkAnswers(client: Client, server: Server) -> None:
    """
    The connection still serves a good call.
    """
    client.call("good", "add", 1, 2)
    server.runAll()
    assert client.replies() == [result("good", 3)]


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


@dataclass(frozen=True)
class Refusal:
    """
    A message the server answers with an error itself: C{data} (sent after
    C{before}, on an authenticated connection when the server has a
    C{token}), its reason and its error code.
    """

    name: str
    data: bytes
    reason: str
    code: int
    before: tuple[bytes, ...] = ()
    token: str | None = field(default=None)


RPC = b'{"jsonrpc":"2.0","id":1,'
REFUSED = [
    Refusal("not-json", RPC + b'"method":"echo"', "parse_error", -32700),
    Refusal("not-utf8", RPC + b'"method":"ech\xff"}', "parse_error", -32700),
    Refusal("scalar", b"42", "invalid_request", -32600),
    Refusal("empty-batch", b"[]", "invalid_request", -32600),
    Refusal("no-jsonrpc", b'{"id":1,"method":"echo"}', "invalid_request", -32600),
    Refusal(
        "bad-timeout", RPC + b'"method":"echo","timeout":-1}', "invalid_request", -32600
    ),
    Refusal("batch-item", b"[42]", "invalid_request", -32600),
    Refusal("seed-dialect", b'{"function":42}', "invalid_request", -32600),
    Refusal(
        "duplicate-id",
        line(request(1, "echo", "again")),
        "invalid_request",
        -32600,
        before=(line(request(1, "echo", "first")),),
    ),
    Refusal(
        "unknown-builtin", line(request(1, "$/nosuch")), "method_not_found", -32601
    ),
    Refusal(
        "unknown-builtin-seed",
        b'{"function":"$/nosuch","args":[]}',
        "method_not_found",
        -32601,
    ),
    Refusal(
        "cancel-without-id",
        line(request(1, "$/cancelRequest")),
        "invalid_params",
        -32602,
    ),
    Refusal(
        "line-too-long",
        RPC + b'"method":"echo","params":["' + b"x" * LIMIT + b'"]}',
        "too_large",
        -32004,
    ),
    Refusal(
        "wrong-token-when-open",
        line(request(1, "$/auth", token="wrong")),
        "unauthorised",
        -32005,
        before=(line(request("a", "$/auth", token=SECRET)),),
        token=SECRET,
    ),
]


@pytest.mark.parametrize("refusal", REFUSED, ids=[r.name for r in REFUSED])
def test_refusedByReason(refusal: Refusal) -> None:
    """
    Each kind of message the server answers with an error itself is
    answered with its code and counted once under its reason (the others
    unchanged), never by the pool; the connection still serves calls.
    """
    metered = Metered(refusal.token)
    server = metered.server
    client = server.connect()
    client.sendRaw(b"".join(refusal.before))
    client.replies()
    refused = metered.refused()
    assert refused == dict.fromkeys(REASONS, 0.0)
    poolCalls = metered.poolCalls()
    client.sendRaw(refusal.data.rstrip(b"\n") + b"\n")
    (reply,) = client.replies()
    assert errorCode(reply) == refusal.code
    refused[refusal.reason] = 1.0
    assert metered.refused() == refused
    assert metered.poolCalls() == poolCalls
    server.runAll()
    client.replies()
    checkAnswers(client, server)
    assert metered.refused() == refused


def test_unknownBuiltinNotificationIsCounted() -> None:
    """
    A notification of an unknown C{$/} method is refused without a reply,
    and counted all the same.
    """
    metered = Metered()
    client = metered.server.connect()
    client.send(notification("$/nosuch"))
    assert client.replies() == []
    assert metered.refused()["method_not_found"] == 1.0


def test_batchCountsEachRefusedItem() -> None:
    """
    In a batch, each item the server refuses is counted, and the items that
    reach the pool are not.
    """
    metered = Metered()
    server = metered.server
    client = server.connect()
    client.send([42, request(1, "$/nosuch"), request(2, "add", 1, 2), "x"])
    server.runAll()
    (replies,) = client.replies()
    assert [errorCode([r]) if "error" in r else r["result"] for r in replies] == [
        -32600,
        -32601,
        3,
        -32600,
    ]
    refused = metered.refused()
    assert (refused["invalid_request"], refused["method_not_found"]) == (2.0, 1.0)
    assert metered.poolCalls() == 1.0


@pytest.mark.parametrize(
    "data",
    [
        line(request(1, "nosuch")),
        line(request(1, "add", 1)),
        line(request(1, "echo", value=1, extra=2)),
    ],
    ids=["unknown-task", "missing-args", "unknown-kwarg"],
)
def test_poolRefusalsAreNotCounted(data: bytes) -> None:
    """
    Calls the pool refuses (an unknown task, params that do not fit) are
    counted by the pool (C{taskservice_calls_total}, outcome C{invalid}),
    not as the server's refusals: no call is counted twice.
    """
    metered = Metered()
    client = metered.server.connect()
    client.sendRaw(data)
    metered.server.runAll()
    (reply,) = client.replies()
    assert errorCode(reply) in (-32601, -32602)
    assert metered.refused() == dict.fromkeys(REASONS, 0.0)
    assert metered.poolCalls() == 1.0


def test_unauthorisedBeforeAuth() -> None:
    """
    A connection refused before C{$/auth} counts once as C{unauthorised},
    even with an overlong line right behind the refused one (which is not
    answered either); other connections still serve calls.
    """
    metered = Metered(SECRET)
    server = metered.server
    client = server.connect()
    client.sendRaw(b"{nope\n" + b"x" * (PRE_AUTH_MAX_LINE + 1) + b"\n")
    (reply,) = client.replies()
    assert errorCode(reply) == -32005
    assert client.transport.disconnecting
    assert metered.refused() == {**dict.fromkeys(REASONS, 0.0), "unauthorised": 1.0}
    other = server.connect()
    other.send(request("a", "$/auth", token=SECRET))
    assert other.replies() == [result("a", True)]
    checkAnswers(other, server)
    assert metered.refused()["unauthorised"] == 1.0


def test_overlongLineBeforeAuth() -> None:
    """
    Before C{$/auth}, an overlong line is refused as C{unauthorised} (what
    it is answered), not C{too_large}.
    """
    metered = Metered(SECRET)
    client = metered.server.connect()
    client.sendRaw(b"x" * (PRE_AUTH_MAX_LINE + 1))
    (reply,) = client.replies()
    assert errorCode(reply) == -32005
    assert metered.refused() == {**dict.fromkeys(REASONS, 0.0), "unauthorised": 1.0}


def test_refusedInStats() -> None:
    """
    C{$/stats} holds the refusals by reason, every reason from the start.
    """
    metered = Metered()
    client = metered.server.connect()
    client.sendRaw(b"{nope\n")
    client.replies()
    client.call(1, "$/stats")
    (reply,) = client.replies()
    assert reply["result"]["refused"] == {
        **dict.fromkeys(REASONS, 0),
        "parse_error": 1,
    }


def test_refusedFamilyInMetricsText() -> None:
    """
    C{/metrics} serves C{taskservice_refused_total} with a series for every
    reason from the start (at zero), so that rate() sees the first one.
    """
    metered = Metered()
    families = scrape(render(MetricsResource(metered.registry), b""))
    family = families["taskservice_refused"]
    assert family.type == "counter"
    assert {
        s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")
    } == (dict.fromkeys(REASONS, 0.0))
    client = metered.server.connect()
    client.sendRaw(_jsonrpc.line(request(1, "$/nosuch")))
    families = scrape(render(MetricsResource(metered.registry), b""))
    [sample] = [
        s
        for s in families["taskservice_refused"].samples
        if s.name == "taskservice_refused_total"
        and s.labels == {"reason": "method_not_found"}
    ]
    assert sample.value == 1.0


def test_reasonNames() -> None:
    """
    The reasons are the documented error names, in snake case.
    """
    assert REASONS == (
        "parse_error",
        "invalid_request",
        "method_not_found",
        "invalid_params",
        "too_large",
        "unauthorised",
    )
