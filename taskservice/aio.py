"""
An asyncio client of the task protocol, for FastAPI, aiohttp or Starlette
handlers and any other asyncio program::

    from taskservice.aio import Client

    async with Client("tcp:127.0.0.1:12345") as client:
        await client.call("fib", 30)                       # 832040
        await client.call("send_mail", to=["a@example.com"], on_progress=print)
        job = await client.submit("send_mail", {"to": addresses})
        async for update in job.progress():
            ...

One L{Client} is one connection, multiplexed: any number of tasks call
through it at once, and it is made again by the first call after it was
lost. No Twisted is imported: an C{asyncio.Protocol} feeds the bytes to
L{taskservice._clientcore}, which splits lines itself (no stream reader and
its 64 KiB line limit). Cancelling the task awaiting a call sends
C{$/cancelRequest}.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

from taskservice._aioprotocol import Call, ClientProtocol, connect
from taskservice._auth import Token
from taskservice._clientbase import (
    CLOSE_WAIT,
    DEFAULT_ENDPOINT,
    ERROR,
    PROGRESS,
    ClientBase,
    JobBase,
    SubmitOptions,
    isFollowingError,
)
from taskservice._clientcore import ProgressCallback
from taskservice.errors import TimedOut, Unreachable
from taskservice.wire import (
    ATTACH,
    CANCEL_JOB,
    JOB,
    JOBS,
    STATS,
    SUBMIT,
    callParams,
    jobsParams,
    submitParams,
)

__all__ = ["DEFAULT_ENDPOINT", "Client", "Job"]


class Client(ClientBase):
    """
    An asyncio client of one task server over one multiplexed connection.

    @param endpoint: C{tcp:HOST:PORT}, C{unix:PATH} or C{tls:HOST:PORT:...}
        as for L{taskservice.client.TaskClient} (see docs/clients).
    @param token: the server's shared secret, or L{None}.
    @param token_file: read the token from this file instead.
    @raise ValueError: the endpoint or the token file cannot be used.

    A client belongs to the event loop of its first call. The connection
    is made by the first call, and made again by the first call after it
    was lost; calls in flight on a lost connection fail at once with
    L{taskservice.errors.ServerLost}, a call that cannot connect with
    L{taskservice.errors.Unreachable}.
    """

    _kind = "taskservice.aio.Client"

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: Token | str | None = None,
        token_file: str | None = None,
    ) -> None:
        super().__init__(endpoint, token=token, token_file=token_file)
        self._protocol: ClientProtocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """
        Close the connection once what was sent is written; calls still in
        flight fail with L{taskservice.errors.ServerLost}, later calls with
        L{Unreachable}.
        """
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return
        protocol.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(protocol.lost), CLOSE_WAIT)
        except TimeoutError:
            protocol.transport.abort()

    # -- calls --------------------------------------------------------------------

    async def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        Call C{method} with positional or keyword arguments (not both:
        L{TypeError}) and return its result.

        @param timeout: seconds the call may take: sent as its deadline, and
            waited for at most; past it the call is cancelled and
            L{taskservice.errors.TimedOut} raised.
        @param on_progress: called with each progress update (a dict such as
            C{{"done": 3, "total": 10}}); if it raises, the call is
            cancelled and raises that.
        @raise taskservice.errors.TaskServiceError: the call's error.

        Cancelling the awaiting task cancels the call (C{$/cancelRequest}).
        """
        return await self.request(
            method, callParams(args, kwargs), timeout=timeout, on_progress=on_progress
        )

    async def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """
        L{call} with C{params} as they go on the wire (a list, a dict or
        L{None}).
        """
        call = await self._send(method, params, timeout, on_progress)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(call.future)
        except TimeoutError:
            call.protocol.core.cancel(call.requestId)
            raise TimedOut("timed out", {"timeout": timeout}) from None
        except asyncio.CancelledError:
            call.protocol.core.cancel(call.requestId)
            raise

    async def stats(self) -> dict[str, Any]:
        """The server's C{$/stats}."""
        result: dict[str, Any] = await self.request(STATS)
        return result

    async def _send(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        timeout: float | None,
        onProgress: ProgressCallback | None,
        iterate: bool = False,
    ) -> Call:
        protocol = await self._connected()
        call = Call(protocol, onProgress, asyncio.Queue() if iterate else None)
        call.requestId = protocol.core.request(method, params, call, timeout=timeout)
        return call

    async def _connected(self) -> ClientProtocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError(
                    "this taskservice.aio.Client belongs to another event loop:"
                    " make one per loop (in an app's startup, say)"
                )
            # First use, or its loop is gone (a test's, say): start afresh.
            if self._protocol is not None and self._protocol.transport is not None:
                # Its loop cannot close it any more: end the connection, so
                # that the server sees it go now rather than at collection.
                sock = self._protocol.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._loop, self._protocol, self._connecting = loop, None, None
        protocol = self._protocol
        if protocol is not None and protocol.live:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._closed:
                raise Unreachable("the client is closed")
            protocol = self._protocol
            if protocol is None or not protocol.live:
                protocol = await connect(self._target, self._token)
                self._protocol = protocol
            return protocol

    # -- durable jobs ---------------------------------------------------------------

    async def submit(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """
        Submit a durable job (C{$/submit}, see docs/jobs) and return its
        L{Job} once the server has it on disk.
        """
        answer = await self.request(SUBMIT, submitParams(method, params, options))
        return Job(self, answer["job"], existing=bool(answer.get("existing")))

    async def attach(self, job_id: str) -> Job:
        """
        The L{Job} of an id submitted earlier, by anyone.

        @raise taskservice.errors.JobNotFound: no job has this id.
        """
        await self.request(JOB, {"job": job_id})
        return Job(self, job_id)

    async def jobs(
        self,
        state: str | None = None,
        method: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The newest jobs, newest first (C{$/jobs}, see docs/jobs)."""
        params = jobsParams(state, method, limit)
        result: list[dict[str, Any]] = await self.request(JOBS, params)
        return result


class Job(JobBase):
    """
    A durable job, by id (from L{Client.submit} or L{Client.attach}).

    @ivar id: the job's id: keep it, the job outlives this process.
    @ivar existing: C{True} when C{submit} found a job holding its key.
    """

    def __init__(self, client: Client, job_id: str, *, existing: bool = False) -> None:
        super().__init__(job_id, existing=existing)
        self.client = client

    async def status(self) -> dict[str, Any]:
        """The job as it is now (C{$/job})."""
        result: dict[str, Any] = await self.client.request(JOB, {"job": self.id})
        return result

    async def cancel(self) -> dict[str, Any]:
        """Cancel the job (C{$/cancelJob}); its C{{"job", "state"}} after."""
        result: dict[str, Any] = await self.client.request(CANCEL_JOB, {"job": self.id})
        return result

    async def result(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Any:
        """
        Wait for the job's end (C{$/attach}) and return its result, or raise
        its error; C{on_progress} hears its progress meanwhile.

        @raise TimeoutError: it did not end within C{timeout} seconds; the
            job goes on (only the waiting stopped). So does cancelling the
            awaiting task.
        """
        call = await self.client._send(ATTACH, {"job": self.id}, None, on_progress)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(call.future)
        except BaseException:
            call.protocol.core.cancel(call.requestId)
            raise

    async def progress(
        self, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """
        Iterate over the job's progress updates (the latest one first) until
        the job ends; then L{result} returns at once. Leaving the loop early
        stops following the job, not the job.

        @raise TimeoutError: the job did not end within C{timeout} seconds.
        @raise taskservice.errors.TaskServiceError: following it failed
            (L{taskservice.errors.JobNotFound}, a lost connection...); the
            job's own failure is raised by L{result}.
        """
        call = await self.client._send(ATTACH, {"job": self.id}, None, None, True)
        assert call.updates is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        ended = False
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    kind, value = await asyncio.wait_for(call.updates.get(), remaining)
                except TimeoutError:
                    raise TimeoutError(
                        f"job {self.id} did not end within {timeout} s"
                    ) from None
                if kind == PROGRESS:
                    yield value
                    continue
                ended = True
                if kind == ERROR and isFollowingError(value):
                    raise value
                return
        finally:
            if not ended:
                call.protocol.core.cancel(call.requestId)
