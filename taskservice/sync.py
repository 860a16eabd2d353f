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

import contextlib
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

from taskservice._auth import Token
from taskservice._clientbase import (
    CLOSE_WAIT,
    DEFAULT_ENDPOINT,
    clientToken,
    describeConnectError,
    isFollowingError,
    logError,
    unreachable,
)
from taskservice._clientcore import ClientCore, CoreState
from taskservice._endpoints import displayName
from taskservice._sockets import parseEndpoint
from taskservice.errors import (
    TaskServiceError,
    TimedOut,
    Unreachable,
)
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

ProgressCallback = Callable[[dict[str, Any]], object]

_READ_SIZE = 256 * 1024
_WRITE_SIZE = 1024 * 1024
_RESULT, _ERROR, _PROGRESS = 0, 1, 2
_LIVE = (CoreState.OPEN, CoreState.AUTHENTICATING)


class _Call:
    """
    One call in flight, as the core names it: the queue its caller's
    thread waits on, fed by the I/O thread.
    """

    __slots__ = ("events", "progress")

    def __init__(self, progress: bool) -> None:
        self.events: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.progress = progress


class _Expired(Exception):
    pass


class _Connection:
    """
    One socket to a task server, the L{ClientCore} over it, and the thread
    that owns the socket: it reads (feeding the core) and writes what the
    callers queued, so no two threads ever use the socket (a TLS socket
    must not be read and written concurrently). L{lock} guards the core and
    the queue of bytes to write.
    """

    def __init__(self, client: Client) -> None:
        target = client._target
        self._sock = target.connect()
        self._sock.setblocking(False)
        self._direct = not isinstance(self._sock, ssl.SSLSocket)
        self._wakeIn, self._wakeOut = socket.socketpair()
        self._wakeIn.setblocking(False)
        self._wakeOut.setblocking(False)
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self._out: deque[memoryview] = deque()
        self._closing = False
        self.ended = threading.Event()
        self.core: ClientCore[_Call] = ClientCore(
            self, authenticate=True, token=client._token
        )
        with self.lock:
            self.core.connectionMade()
        self._thread = threading.Thread(
            target=self._run,
            name=f"taskservice.sync {displayName(target.description)}",
            daemon=True,
        )
        self._thread.start()

    @property
    def live(self) -> bool:
        """Usable: open (or authenticating), and this process's own."""
        return self.core.state in _LIVE and self.pid == os.getpid()

    def forsake(self) -> None:
        """
        In a child forked while this connection was open: close this
        process's copies of its sockets (the parent's stay open; the I/O
        thread did not survive the fork).
        """
        for sock in (self._sock, self._wakeIn, self._wakeOut):
            with contextlib.suppress(OSError):
                sock.close()

    # -- callers' side ------------------------------------------------------

    def cancel(self, requestId: int) -> None:
        """Cancel a call (the core sends C{$/cancelRequest})."""
        with self.lock:
            self.core.cancel(requestId)

    def close(self, wait: float) -> None:
        """
        Close once what was queued is written (at most C{wait} seconds,
        then at once).
        """
        with self.lock:
            self._closing = True
            self._wake()
        if not self.ended.wait(wait):
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self.ended.wait(wait)

    # -- the core's ClientShell (called with lock held) -----------------------

    def sendLine(self, line: bytes) -> None:
        if not self._out:
            if self._direct:
                # Nothing queued: send from this thread, without waking the
                # I/O thread (a plain socket may be written by one thread
                # while another reads it; a TLS socket may not).
                try:
                    sent = self._sock.send(line)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the I/O thread sees the connection end
                if sent == len(line):
                    return
                line = line[sent:]
            self._wake()
        self._out.append(memoryview(line))

    def closeConnection(self) -> None:
        self._closing = True
        self._wake()

    def callSucceeded(self, handle: _Call, result: Any) -> None:
        handle.events.put((_RESULT, result))

    def callFailed(self, handle: _Call, error: TaskServiceError) -> None:
        handle.events.put((_ERROR, error))

    def callProgressed(self, handle: _Call, update: dict[str, Any]) -> None:
        if handle.progress:
            handle.events.put((_PROGRESS, update))

    def accepted(self) -> None:
        pass

    logError = staticmethod(logError)

    # -- the I/O thread ----------------------------------------------------------

    def _wake(self) -> None:
        # (BlockingIOError: a wake-up is pending already; OSError: the
        # thread is gone.)
        with contextlib.suppress(OSError):
            self._wakeOut.send(b"\0")

    def _run(self) -> None:
        sock = self._sock
        selector = selectors.DefaultSelector()
        selector.register(self._wakeIn, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        writing = False
        reason, explained = "the task server closed the connection", False
        try:
            while True:
                with self.lock:
                    want = bool(self._out)
                    if not want and self._closing:
                        reason, explained = "closed by the client", True
                        break
                if want != writing:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE * want)
                    selector.modify(sock, events)
                    writing = want
                ready: list[tuple[object, int]]
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    # Decrypted bytes that select() cannot see.
                    ready = [(sock, selectors.EVENT_READ)]
                else:
                    ready = [(key.fileobj, mask) for key, mask in selector.select()]
                for fileobj, mask in ready:
                    if fileobj is self._wakeIn:
                        self._drainWakeUps()
                        continue
                    if mask & selectors.EVENT_READ and not self._read():
                        return
                    if mask & selectors.EVENT_WRITE:
                        self._write()
        except OSError as e:
            reason, explained = describeConnectError(e), isinstance(e, ssl.SSLError)
        finally:
            selector.close()
            sock.close()
            self._wakeIn.close()
            self._wakeOut.close()
            with self.lock:
                self._out.clear()
                self.core.connectionLost(reason, explained=explained)
            self.ended.set()

    def _drainWakeUps(self) -> None:
        try:
            while self._wakeIn.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _read(self) -> bool:
        try:
            data = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        if not data:
            return False
        with self.lock:
            self.core.receiveData(data)
        return True

    def _write(self) -> None:
        with self.lock:
            chunk = self._out[0]
        try:
            sent = self._sock.send(chunk[:_WRITE_SIZE])
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        with self.lock:
            if sent == len(chunk):
                self._out.popleft()
            else:
                self._out[0] = chunk[sent:]


class _Pending:
    """A call sent: wait for its progress and its outcome, or give it up."""

    __slots__ = ("_call", "_connection", "_requestId")

    def __init__(self, connection: _Connection, requestId: int, call: _Call) -> None:
        self._connection = connection
        self._requestId = requestId
        self._call = call

    def next(self, deadline: float | None) -> tuple[int, Any]:
        """
        The next event: C{(_PROGRESS, update)}, C{(_RESULT, value)} or
        C{(_ERROR, exception)}.

        @raise _Expired: C{deadline} (a C{time.monotonic()}) passed first.
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise _Expired()
        try:
            return self._call.events.get(timeout=remaining)
        except queue.Empty:
            raise _Expired() from None

    def giveUp(self) -> None:
        self._connection.cancel(self._requestId)


class Client:
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

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: Token | str | None = None,
        token_file: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._target = parseEndpoint(endpoint)
        self._token = clientToken(token, token_file)
        self._lock = threading.Lock()
        self._connection: _Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<taskservice.sync.Client {displayName(self.endpoint)}>"

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
                if kind == _PROGRESS:
                    assert on_progress is not None
                    on_progress(value)
                elif kind == _RESULT:
                    return value
                else:
                    raise value
        except _Expired:
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
    ) -> _Pending:
        call = _Call(progress)
        for attempt in (1, 2):
            connection = self._connected()
            with connection.lock:
                if connection.live or attempt == 2:
                    requestId = connection.core.request(
                        method, params, call, timeout=timeout
                    )
                    return _Pending(connection, requestId, call)
            # Lost between connecting and sending: the call was not sent.
        raise AssertionError("unreachable")  # pragma: no cover

    def _connected(self) -> _Connection:
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
                    connection = _Connection(self)
                except OSError as e:
                    raise unreachable(e) from None
                self._connection = connection
            return connection

    # -- durable jobs -------------------------------------------------------------

    def submit(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        at: str | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """
        Submit a durable job (C{$/submit}, see docs/jobs) and return its
        L{Job} once the server has it on disk. C{params} are the task's, as
        they go on the wire; the options left L{None} are the server's.
        """
        answer = self.request(
            SUBMIT,
            submitParams(
                method,
                params,
                {
                    "key": key,
                    "delay": delay,
                    "at": at,
                    "retries": retries,
                    "backoff": backoff,
                    "timeout": timeout,
                },
            ),
        )
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


class Job:
    """
    A durable job, by id (from L{Client.submit} or L{Client.attach}).

    @ivar id: the job's id: keep it, the job outlives this process.
    @ivar existing: C{True} when C{submit} found a job holding its key.
    """

    def __init__(self, client: Client, job_id: str, *, existing: bool = False) -> None:
        self.client = client
        self.id = job_id
        self.existing = existing

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

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
                except _Expired:
                    raise TimeoutError(
                        f"job {self.id} did not end within {timeout} s"
                    ) from None
                if kind == _PROGRESS:
                    yield value
                    continue
                ended = True
                if kind == _ERROR and isFollowingError(value):
                    raise value
                return
        finally:
            if not ended:
                pending.giveUp()
