"""
A blocking client of the task protocol, for programs without a reactor
(Django or Flask views, scripts, the C{taskservice} command)::

    from taskservice.sync import Client

    client = Client("tcp:127.0.0.1:12345")
    client.call("fib", 30)                        # 832040
    client.call("send_mail", to=["a@example.com"], on_progress=print)
    job = client.submit("send_mail", {"to": addresses}, key="campaign-42")
    job.result(timeout=60)

One L{Client} is one connection, shared by every thread that calls through
it: calls are multiplexed (each thread waits for its own answer) and the
connection is made again on the next call after it was lost. No Twisted is
imported: a thread of the client's own owns the socket (it reads, and
writes what the callers queued), and L{taskservice._clientcore} keeps the
protocol.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

from taskservice._auth import Token
from taskservice._clientbase import (
    CLOSE_WAIT,
    DEFAULT_ENDPOINT,
    ERROR,
    PROGRESS,
    RESULT,
    ClientBase,
    JobBase,
    SubmitOptions,
    isFollowingError,
    unreachable,
)
from taskservice._clientcore import ProgressCallback
from taskservice._syncconnection import Call, Connection, Expired, Pending
from taskservice.errors import TaskServiceError, TimedOut, Unreachable
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
    A blocking, thread-safe client of one task server over one multiplexed
    connection.

    @param endpoint: C{tcp:HOST:PORT}, C{unix:PATH} or C{tls:HOST:PORT:...}
        as for L{taskservice.client.TaskClient} (see docs/clients).
    @param token: the server's shared secret, or L{None}.
    @param token_file: read the token from this file instead.
    @raise ValueError: the endpoint or the token file cannot be used.

    The connection is made by the first call, and made again by the first
    call after it was lost, or in a child process after C{fork()} (a
    pre-fork web server's workers each get their own). Calls in flight on
    a lost connection fail at once with L{taskservice.errors.ServerLost};
    a call that cannot connect fails with L{taskservice.errors.Unreachable}.
    """

    _kind = "taskservice.sync.Client"

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: Token | str | None = None,
        token_file: str | None = None,
    ) -> None:
        super().__init__(endpoint, token=token, token_file=token_file)
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """
        Close the connection once what was sent (a cancel, say) is written;
        calls still in flight fail with L{taskservice.errors.ServerLost}.
        Later calls fail with L{Unreachable}.
        """
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(CLOSE_WAIT)

    # -- calls ------------------------------------------------------------------

    def call(
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
        @param on_progress: called in this thread with each progress update
            (a dict such as C{{"done": 3, "total": 10}}).
        @raise taskservice.errors.TaskServiceError: the call's error (one
            class per code, see docs/protocol).

        Any exception while waiting (C{KeyboardInterrupt}, one raised by
        C{on_progress}) cancels the call (C{$/cancelRequest}) and
        propagates.
        """
        return self.request(
            method, callParams(args, kwargs), timeout=timeout, on_progress=on_progress
        )

    def request(
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
        pending = self._send(method, params, timeout, on_progress is not None)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                kind, value = pending.next(deadline)
                if kind == PROGRESS:
                    assert on_progress is not None
                    on_progress(value)
                elif kind == RESULT:
                    return value
                else:
                    raise value
        except Expired:
            pending.giveUp()
            raise TimedOut("timed out", {"timeout": timeout}) from None
        except TaskServiceError:
            raise
        except BaseException:
            pending.giveUp()
            raise

    def stats(self) -> dict[str, Any]:
        """The server's C{$/stats}."""
        result: dict[str, Any] = self.request(STATS)
        return result

    def _send(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        timeout: float | None,
        progress: bool,
    ) -> Pending:
        call = Call(progress)
        for attempt in (1, 2):
            connection = self._connected()
            with connection.lock:
                if connection.live or attempt == 2:
                    requestId = connection.core.request(
                        method, params, call, timeout=timeout
                    )
                    return Pending(connection, requestId, call)
            # Lost between connecting and sending: the call was not sent.
        raise AssertionError("unreachable")  # pragma: no cover

    def _connected(self) -> Connection:
        connection = self._connection
        if connection is not None and connection.live:
            return connection
        with self._lock:
            if self._closed:
                raise Unreachable("the client is closed")
            connection = self._connection
            if connection is not None and connection.pid != os.getpid():
                # Forked (a pre-fork web server's worker): connect anew.
                connection.forsake()
                connection = None
            if connection is None or not connection.live:
                try:
                    connection = Connection(self._target, self._token)
                except OSError as e:
                    raise unreachable(e) from None
                self._connection = connection
            return connection

    # -- durable jobs -------------------------------------------------------------

    def submit(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """
        Submit a durable job (C{$/submit}, see docs/jobs) and return its
        L{Job} once the server has it on disk. C{params} are the task's, as
        they go on the wire; the options left L{None} are the server's.
        """
        answer = self.request(SUBMIT, submitParams(method, params, options))
        return Job(self, answer["job"], existing=bool(answer.get("existing")))

    def attach(self, job_id: str) -> Job:
        """
        The L{Job} of an id submitted earlier, by anyone.

        @raise taskservice.errors.JobNotFound: no job has this id (never
            submitted to this server, or purged).
        """
        self.request(JOB, {"job": job_id})
        return Job(self, job_id)

    def jobs(
        self,
        state: str | None = None,
        method: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The newest jobs, newest first (C{$/jobs}, see docs/jobs)."""
        params = jobsParams(state, method, limit)
        result: list[dict[str, Any]] = self.request(JOBS, params)
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

    def status(self) -> dict[str, Any]:
        """The job as it is now (C{$/job}: state, attempts, progress...)."""
        result: dict[str, Any] = self.client.request(JOB, {"job": self.id})
        return result

    def cancel(self) -> dict[str, Any]:
        """Cancel the job (C{$/cancelJob}); its C{{"job", "state"}} after."""
        result: dict[str, Any] = self.client.request(CANCEL_JOB, {"job": self.id})
        return result

    def result(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Any:
        """
        Wait for the job's end (C{$/attach}) and return its result, or raise
        its error (L{taskservice.errors.TaskFailed},
        L{taskservice.errors.Cancelled}...). C{on_progress} hears its
        progress meanwhile, the latest first.

        @raise TimeoutError: it did not end within C{timeout} seconds; the
            job goes on (only the waiting stopped).
        """
        updates = self.progress(timeout)
        try:
            for update in updates:
                if on_progress is not None:
                    on_progress(update)
        finally:
            updates.close()  # stops following if on_progress raised
        # progress() ended: the job did; its outcome is one $/attach away.
        return self.client.request(ATTACH, {"job": self.id})

    def progress(
        self, timeout: float | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """
        Iterate over the job's progress updates (the latest one first) until
        the job ends; then L{result} returns at once. Leaving the loop early
        stops following the job, not the job.

        @raise TimeoutError: the job did not end within C{timeout} seconds.
        @raise taskservice.errors.TaskServiceError: following it failed
            (L{taskservice.errors.JobNotFound}, a lost connection...); the
            job's own failure is not raised here but by L{result}.
        """
        pending = self.client._send(ATTACH, {"job": self.id}, None, True)
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = False
        try:
            while True:
                try:
                    kind, value = pending.next(deadline)
                except Expired:
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
                pending.giveUp()
