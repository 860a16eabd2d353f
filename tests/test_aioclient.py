"""
Unit tests of L{taskservice.aio.Client} against the scripted fake server of
L{tests.fakeserver} (a real loopback socket), each in an event loop of its
own: concurrent calls on one connection, progress, a connection lost
mid-call and reconnection, timeouts and task cancellation that send
C{$/cancelRequest}, 10 MB lines.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from taskservice.aio import Client
from taskservice.errors import ServerLost, TaskFailed, TimedOut, Unreachable
from tests.fakeserver import Peer, echoing, fakeServer


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def cancelOf(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "$/cancelRequest",
        "params": {"id": request["id"]},
    }


def test_concurrentCallsOneConnection() -> None:
    """
    A hundred calls gathered at once each get their own answer, over one
    connection.
    """

    async def main(endpoint: str) -> list[Any]:
        async with Client(endpoint) as client:
            return await asyncio.gather(*(client.call("echo", i) for i in range(100)))

    with fakeServer(echoing) as server:
        assert run(main(server.endpoint)) == [[i] for i in range(100)]
    assert server.connections == 1


def test_progressErrorsAndLoss() -> None:
    """
    Progress reaches on_progress; -32000 raises TaskFailed; a connection
    lost mid-call fails the call with ServerLost, and the next call
    connects again.
    """
    seen: list[dict[str, Any]] = []

    def first(peer: Peer) -> None:
        peer.acceptAuth()
        request = peer.readRequest("send_mail")
        peer.progress(request, done=1, total=1)
        peer.reply(request, {"sent": 1})
        peer.error(peer.readRequest("fail"), -32000, "ValueError: boom")
        peer.readRequest("sleep")  # then drop the connection

    async def main(endpoint: str) -> None:
        async with Client(endpoint) as client:
            assert await client.call(
                "send_mail", to="a@x", on_progress=seen.append
            ) == {"sent": 1}
            with pytest.raises(TaskFailed):
                await client.call("fail")
            with pytest.raises(ServerLost):
                await client.call("sleep", 10)
            assert await client.call("echo", "again") == ["again"]

    with fakeServer(first, echoing) as server:
        run(main(server.endpoint))
    assert seen == [{"done": 1, "total": 1}]
    assert server.connections == 2


def test_timeoutAndCancellationSendCancel() -> None:
    """
    A call past its timeout raises TimedOut, and a task cancelled while
    awaiting a call raises CancelledError; each sends $/cancelRequest for
    its call.
    """
    requests: list[dict[str, Any]] = []

    def script(peer: Peer) -> None:
        peer.acceptAuth()
        slow = peer.readRequest("sleep")
        assert slow["timeout"] == 0.2
        assert peer.read() == cancelOf(slow)
        other = peer.readRequest("sleep")
        assert peer.read() == cancelOf(other)
        requests.extend([slow, other])
        peer.rest()

    async def main(endpoint: str) -> None:
        async with Client(endpoint) as client:
            with pytest.raises(TimedOut):
                await client.call("sleep", 5, timeout=0.2)
            task = asyncio.ensure_future(client.call("sleep", 5))
            while client._protocol is None or client._protocol.core.inFlight == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with fakeServer(script) as server:
        run(main(server.endpoint))
    assert len(requests) == 2


def test_tenMegabyteLinesAndUnreachable() -> None:
    """
    10 MB each way goes through (no stream reader's 64 KiB line limit);
    nothing listening is Unreachable with the reason.
    """
    big = "y" * 10_000_000

    async def main(endpoint: str) -> None:
        async with Client(endpoint) as client:
            assert await client.call("echo", big) == [big]

    with fakeServer(echoing) as server:
        run(main(server.endpoint))
        endpoint = server.endpoint

    async def unreachable() -> None:
        async with Client(endpoint) as client:
            with pytest.raises(Unreachable) as failed:
                await client.call("echo", 1)
            assert "refused" in failed.value.data["reason"].lower()

    run(unreachable())


def test_oneLoopAtATime() -> None:
    """
    A client used again after its event loop ended connects in the new
    one; used from a second loop while its first runs, it says so.
    """
    with fakeServer(echoing) as server:
        client = Client(server.endpoint)
        assert run(client.call("echo", 1)) == [1]
        assert run(client.call("echo", 2)) == [2]
        # The first loop's connection was ended when the second began.
        first = server._threads[0]
        first.join(10)
        assert not first.is_alive()

        async def fromAnotherLoop() -> None:
            other: list[BaseException] = []

            def inThread() -> None:
                try:
                    asyncio.run(client.call("echo", 3))
                except BaseException as e:
                    other.append(e)

            thread = threading.Thread(target=inThread)
            thread.start()
            await asyncio.to_thread(thread.join, 30)
            assert len(other) == 1 and isinstance(other[0], RuntimeError), other
            await client.close()

        async def main() -> None:
            assert await client.call("echo", 4) == [4]
            await fromAnotherLoop()

        run(main())
