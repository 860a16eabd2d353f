"""
Unit tests of L{taskservice._clientbase.SubmitOptions}, the one list of
C{$/submit} options that the blocking, the asyncio and the Twisted
clients' C{submit()} take: the names are the protocol's, each one given
goes on the wire as given (one left L{None} is the server's default), and a
name that is not an option is a L{TypeError} naming it, before anything is
sent, with the connection kept for the next call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from taskservice import aio, sync
from taskservice._clientbase import SubmitOptions
from taskservice._jobclient import Job, submitJob
from taskservice.wire import SUBMIT, SUBMIT_OPTIONS
from tests.fakeserver import Peer, fakeServer

EVERY = {
    "key": "campaign-42",
    "delay": 1.5,
    "at": "2030-01-01T00:00:00+00:00",
    "retries": 3,
    "backoff": 0.5,
    "timeout": 9.0,
}
WIRE = {"method": "send_mail", "params": {"to": ["a@example.com"]}, **EVERY}


def test_namesAreTheProtocols() -> None:
    """
    SubmitOptions declares exactly the members of C{$/submit} besides the
    method and its params.
    """
    assert set(SubmitOptions.__annotations__) == SUBMIT_OPTIONS == set(EVERY)


def _script(peer: Peer) -> None:
    peer.acceptAuth()
    first = peer.readRequest(SUBMIT)
    assert first["params"] == WIRE
    peer.reply(first, {"job": "j1"})
    second = peer.readRequest(SUBMIT)
    assert second["params"] == {"method": "fib", "params": [3], "key": "k"}
    peer.reply(second, {"job": "j2", "existing": True})
    peer.rest()


def test_blockingClient() -> None:
    """
    sync.Client.submit sends every option given and leaves out the ones
    that are None; an unknown one raises TypeError naming it, and the
    connection carries on.
    """
    with fakeServer(_script) as server, sync.Client(server.endpoint) as client:
        job = client.submit("send_mail", {"to": ["a@example.com"]}, **EVERY)
        assert (job.id, job.existing) == ("j1", False)
        with pytest.raises(TypeError, match="priority"):
            client.submit("fib", [3], priority=1)  # type: ignore[call-arg]
        again = client.submit("fib", [3], key="k", delay=None)
        assert (again.id, again.existing, repr(again)) == ("j2", True, "<Job j2>")
    assert server.connections == 1


def test_asyncioClient() -> None:
    """
    aio.Client.submit does the same as the blocking client.
    """

    async def main(endpoint: str) -> None:
        async with aio.Client(endpoint) as client:
            job = await client.submit("send_mail", {"to": ["a@example.com"]}, **EVERY)
            assert (job.id, job.existing) == ("j1", False)
            with pytest.raises(TypeError, match="priority"):
                await client.submit("fib", [3], priority=1)  # type: ignore[call-arg]
            again = await client.submit("fib", [3], key="k", delay=None)
            assert (again.id, again.existing) == ("j2", True)

    with fakeServer(_script) as server:
        asyncio.run(asyncio.wait_for(main(server.endpoint), 60))
    assert server.connections == 1


class _Caller:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def request(self, method: str, params: Any = None, **options: Any) -> Deferred[Any]:
        self.sent.append((method, params))
        return succeed({"job": f"j{len(self.sent)}"})


def test_twistedSubmitJob() -> None:
    """
    The Twisted clients' submitJob takes the same options (and the
    handle's onProgress, which is not sent); an unknown one raises
    TypeError and sends nothing.
    """
    caller = _Caller()
    made: list[Job] = []
    submitJob(
        caller, "send_mail", {"to": ["a@example.com"]}, onProgress=print, **EVERY
    ).addCallback(made.append)
    with pytest.raises(TypeError, match="priority"):
        submitJob(caller, "fib", [3], priority=1)  # type: ignore[call-arg]
    assert caller.sent == [(SUBMIT, WIRE)]
    assert [job.id for job in made] == ["j1"]
