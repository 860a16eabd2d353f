"""
The asyncio client's connection (L{taskservice.aio}): an
C{asyncio.Protocol} that feeds the bytes to a L{ClientCore} and hands each
call's progress and outcome to its awaiting task, and how it is made. No
Twisted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskservice._auth import Token
from taskservice._clientbase import (
    ERROR,
    LIVE,
    PROGRESS,
    RESULT,
    describeConnectError,
    logError,
    unreachable,
)
from taskservice._clientcore import ClientCore, ProgressCallback
from taskservice._sockets import SocketTarget
from taskservice.errors import TaskServiceError


class Call:
    """
    One call in flight, as the core names it: a future for its outcome, or
    a queue of its progress and outcome when it is iterated.
    """

    __slots__ = ("future", "onProgress", "protocol", "requestId", "updates")

    requestId: int

    def __init__(
        self,
        protocol: ClientProtocol,
        onProgress: ProgressCallback | None,
        updates: asyncio.Queue[tuple[int, Any]] | None = None,
    ) -> None:
        self.protocol = protocol
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.onProgress = onProgress
        self.updates = updates


class ClientProtocol(asyncio.Protocol):
    """One connection: the asyncio shell over a L{ClientCore}."""

    def __init__(self, token: Token | None) -> None:
        self.core: ClientCore[Call] = ClientCore(self, authenticate=True, token=token)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    @property
    def live(self) -> bool:
        return self.core.state in LIVE

    # -- asyncio tells the core --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.core.connectionMade()

    def data_received(self, data: bytes) -> None:
        self.core.receiveData(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.core.connectionLost("the task server closed the connection")
        else:
            self.core.connectionLost(describeConnectError(exc))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- the core's ClientShell ----------------------------------------------

    def sendLine(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line)

    def closeConnection(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def callSucceeded(self, handle: Call, result: Any) -> None:
        if handle.updates is not None:
            handle.updates.put_nowait((RESULT, result))
        elif not handle.future.done():
            handle.future.set_result(result)

    def callFailed(self, handle: Call, error: TaskServiceError) -> None:
        if handle.updates is not None:
            handle.updates.put_nowait((ERROR, error))
        elif not handle.future.done():
            handle.future.set_exception(error)

    def callProgressed(self, handle: Call, update: dict[str, Any]) -> None:
        if handle.updates is not None:
            handle.updates.put_nowait((PROGRESS, update))
        elif handle.onProgress is not None and not handle.future.done():
            try:
                handle.onProgress(update)
            except Exception as e:
                # The callback's failure is the call's: cancel it.
                self.core.cancel(handle.requestId)
                handle.future.set_exception(e)

    def accepted(self) -> None:
        pass

    logError = staticmethod(logError)


async def connect(target: SocketTarget, token: Token | None) -> ClientProtocol:
    """
    A connection to C{target}, made within its timeout.

    @raise taskservice.errors.Unreachable: it could not be made.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(target.timeout):
            if target.path is not None:
                _, protocol = await loop.create_unix_connection(
                    lambda: ClientProtocol(token), target.path
                )
            else:
                assert target.address is not None
                host, port = target.address
                _, protocol = await loop.create_connection(
                    lambda: ClientProtocol(token),
                    host,
                    port,
                    ssl=target.sslContext,
                    server_hostname=target.serverHostname,
                )
    except (OSError, TimeoutError) as e:
        raise unreachable(e) from None
    return protocol
