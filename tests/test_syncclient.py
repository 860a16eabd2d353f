"""
Unit tests of L{taskservice.sync.Client} against a scripted fake server on a
real loopback socket (L{tests.fakeserver}): multiplexing threads over one
connection, progress, errors, a connection lost mid-call, reconnection,
client-side timeouts and interrupts that cancel, tokens, 10 MB lines. The
real server is in L{tests.test_clients_integration}.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from taskservice.errors import (
    ServerLost,
    TaskFailed,
    TimedOut,
    Unauthorised,
    Unreachable,
)
from taskservice.sync import Client
from tests.fakeserver import Peer, echoing, fakeServer


def test_threadsShareOneConnection() -> None:
    """
    Eight threads calling at once through one client get their own
    answers, over a single connection.
    """
    with fakeServer(echoing) as server, Client(server.endpoint) as client:
        results: dict[int, list[Any]] = {}

        def calls(n: int) -> None:
            results[n] = [client.call("echo", n, i) for i in range(20)]

        threads = [threading.Thread(target=calls, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {n: [[n, i] for i in range(20)] for n in range(8)}
    assert server.connections == 1


def test_progressThenResult() -> None:
    """
    Progress updates reach on_progress, in the calling thread, without the
    request id; then the result is returned. The request's params are
    positional or named as given.
    """
    seen: list[tuple[dict[str, Any], int]] = []

    def script(peer: Peer) -> None:
        peer.acceptAuth()
        request = peer.readRequest("send_mail")
        assert request["params"] == {"to": ["a@example.com"]}
        peer.progress(request, done=1, total=2)
        peer.progress(request, done=2, total=2)
        peer.reply(request, {"sent": 2})
        peer.rest()

    with fakeServer(script) as server, Client(server.endpoint) as client:
        result = client.call(
            "send_mail",
            to=["a@example.com"],
            on_progress=lambda u: seen.append((u, threading.get_ident())),
        )
    assert result == {"sent": 2}
    me = threading.get_ident()
    assert seen == [({"done": 1, "total": 2}, me), ({"done": 2, "total": 2}, me)]


def test_errorsRaisedConnectionKept() -> None:
    """
    A task's error is raised as its class (TaskFailed for -32000); the
    connection carries on for the next call.
    """

    def script(peer: Peer) -> None:
        peer.acceptAuth()
        peer.error(peer.readRequest("fail"), -32000, "ValueError: boom")
        peer.reply(peer.readRequest("echo"), "after")
        peer.rest()

    with fakeServer(script) as server, Client(server.endpoint) as client:
        with pytest.raises(TaskFailed, match="boom"):
            client.call("fail", "boom")
        assert client.call("echo", "after") == "after"
    assert server.connections == 1


def test_lostMidCallThenReconnect() -> None:
    """
    The server closing the connection while a call is in flight fails that
    call at once with ServerLost (saying why); the next call connects again
    and is answered.
    """

    def dropping(peer: Peer) -> None:
        peer.acceptAuth()
        peer.readRequest("sleep")

    with (
        fakeServer(dropping, echoing) as server,
        Client(server.endpoint) as client,
    ):
        with pytest.raises(ServerLost) as lost:
            client.call("sleep", 10)
        assert "closed the connection" in lost.value.data["reason"]
        assert client.call("echo", "back") == ["back"]
    assert server.connections == 2


def test_unreachable() -> None:
    """
    Nothing listening: the call fails with Unreachable and the reason.
    """
    with fakeServer(echoing) as server:
        endpoint = server.endpoint
    client = Client(endpoint)
    with pytest.raises(Unreachable) as failed:
        client.call("echo", 1)
    assert "refused" in failed.value.data["reason"].lower()
    client.close()


def test_timeoutCancels() -> None:
    """
    timeout= is sent as the request's deadline; when it passes unanswered
    the client sends $/cancelRequest for the call and raises TimedOut; the
    late answer is ignored and the connection carries on.
    """
    cancelled = threading.Event()

    def script(peer: Peer) -> None:
        peer.acceptAuth()
        request = peer.readRequest("sleep")
        assert request["timeout"] == 0.2
        cancel = peer.read()
        assert cancel == {
            "jsonrpc": "2.0",
            "method": "$/cancelRequest",
            "params": {"id": request["id"]},
        }
        cancelled.set()
        peer.error(request, -32800, "cancelled")
        peer.reply(peer.readRequest("echo"), "still here")
        peer.rest()

    with fakeServer(script) as server, Client(server.endpoint) as client:
        with pytest.raises(TimedOut) as timedOut:
            client.call("sleep", 5, timeout=0.2)
        assert timedOut.value.data == {"timeout": 0.2}
        assert client.call("echo", "x") == "still here"
    assert cancelled.is_set()


def test_interruptCancels() -> None:
    """
    An exception while waiting (here a KeyboardInterrupt from on_progress,
    as Ctrl-C raises it) cancels the call and propagates; closing the
    client right after still sends the cancel.
    """

    def script(peer: Peer) -> None:
        peer.acceptAuth()
        request = peer.readRequest("send_mail")
        peer.progress(request, done=1, total=9)
        assert peer.rest() == [
            {
                "jsonrpc": "2.0",
                "method": "$/cancelRequest",
                "params": {"id": request["id"]},
            }
        ]

    def interrupt(update: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with fakeServer(script) as server:
        client = Client(server.endpoint)
        with pytest.raises(KeyboardInterrupt):
            client.call("send_mail", to="a@example.com", on_progress=interrupt)
        client.close()


def test_tokenAndRefusal(tmp_path: Any) -> None:
    """
    token_file's token goes in $/auth; a refusal fails the call with
    Unauthorised.
    """
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o600)

    def accepting(peer: Peer) -> None:
        peer.acceptAuth("s3cret")
        peer.reply(peer.readRequest("echo"), 1)
        peer.rest()

    def refusing(peer: Peer) -> None:
        auth = peer.readRequest("$/auth")
        peer.error(auth, -32005, "unauthorised")

    with (
        fakeServer(accepting) as server,
        Client(server.endpoint, token_file=str(path)) as client,
    ):
        assert client.call("echo", 1) == 1
    with (
        fakeServer(refusing) as server,
        Client(server.endpoint, token="x") as client,
        pytest.raises(Unauthorised),
    ):
        client.call("echo", 1)


def test_tenMegabyteLines() -> None:
    """
    A 10 MB request and its 10 MB answer go through, beside a small call
    from another thread.
    """
    big = "x" * 10_000_000
    with fakeServer(echoing) as server, Client(server.endpoint) as client:
        small: list[Any] = []
        other = threading.Thread(target=lambda: small.append(client.call("echo", 1)))
        other.start()
        assert client.call("echo", big) == [big]
        other.join(30)
        assert small == [[1]]


def test_closedClient() -> None:
    """
    A closed client fails calls with Unreachable; a bad endpoint is a
    ValueError at once.
    """
    with fakeServer(echoing) as server:
        client = Client(server.endpoint)
        assert client.call("echo", 1) == [1]
        client.close()
        with pytest.raises(Unreachable, match="closed"):
            client.call("echo", 1)
    with pytest.raises(ValueError, match="tcp:, tls: and unix:"):
        Client("ssl:127.0.0.1:1")


def test_forkedChildConnectsAnew() -> None:
    """
    A child forked after the client connected (a pre-fork web server's
    worker) makes its own connection; the parent's keeps working.
    """
    with fakeServer(echoing) as server, Client(server.endpoint) as client:
        assert client.call("echo", "parent") == ["parent"]
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                ok = client.call("echo", "child", timeout=20) == ["child"]
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.call("echo", "parent again") == ["parent again"]
    assert server.connections == 2
