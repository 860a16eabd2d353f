"""
The blocking client's connection (L{taskservice.sync}): one socket, the
L{ClientCore} over it, and the thread of its own that owns the socket; and
what a caller's thread waits on for its call's progress and outcome. No
Twisted.
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
from typing import Any

from taskservice._auth import Token
from taskservice._clientbase import (
    ERROR,
    LIVE,
    PROGRESS,
    RESULT,
    describeConnectError,
    logError,
)
from taskservice._clientcore import ClientCore
from taskservice._endpoints import displayName
from taskservice._sockets import SocketTarget
from taskservice.errors import TaskServiceError

_READ_SIZE = 256 * 1024
_WRITE_SIZE = 1024 * 1024


class Call:
    """
    One call in flight, as the core names it: the queue its caller's
    thread waits on, fed by the I/O thread.
    """

    __slots__ = ("events", "progress")

    def __init__(self, progress: bool) -> None:
        self.events: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.progress = progress


class Expired(Exception):
    """A call's deadline passed before its next event."""


class Connection:
    """
    One socket to a task server, the L{ClientCore} over it, and the thread
    that owns the socket: it reads (feeding the core) and writes what the
    callers queued, so no two threads ever use the socket (a TLS socket
    must not be read and written concurrently). L{lock} guards the core and
    the queue of bytes to write.
    """

    def __init__(self, target: SocketTarget, token: Token | None) -> None:
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
        self.core: ClientCore[Call] = ClientCore(self, authenticate=True, token=token)
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
        return self.core.state in LIVE and self.pid == os.getpid()

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

    def callSucceeded(self, handle: Call, result: Any) -> None:
        handle.events.put((RESULT, result))

    def callFailed(self, handle: Call, error: TaskServiceError) -> None:
        handle.events.put((ERROR, error))

    def callProgressed(self, handle: Call, update: dict[str, Any]) -> None:
        if handle.progress:
            handle.events.put((PROGRESS, update))

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


class Pending:
    """A call sent: wait for its progress and its outcome, or give it up."""

    __slots__ = ("_call", "_connection", "_requestId")

    def __init__(self, connection: Connection, requestId: int, call: Call) -> None:
        self._connection = connection
        self._requestId = requestId
        self._call = call

    def next(self, deadline: float | None) -> tuple[int, Any]:
        """
        The next event: C{(PROGRESS, update)}, C{(RESULT, value)} or
        C{(ERROR, exception)}.

        @raise Expired: C{deadline} (a C{time.monotonic()}) passed first.
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Expired()
        try:
            return self._call.events.get(timeout=remaining)
        except queue.Empty:
            raise Expired() from None

    def giveUp(self) -> None:
        self._connection.cancel(self._requestId)
