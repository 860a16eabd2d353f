"""
Writes gathered during one reactor pass and sent, directly, at its end.

C{transport.write} on a Twisted socket or pipe only buffers: the bytes go
out on a later reactor pass, when the descriptor is found writable. For the
task server's small replies and the pool's small call frames that costs, per
write, registering the descriptor for writing and unregistering it again
(C{epoll_ctl} twice; four times for a pipe, whose reading Twisted also turns
off and on), and a whole extra reactor pass: six C{epoll_ctl} and four
C{epoll_wait} per sequential call, measured with strace.

L{write} instead collects what is written to a transport during the current
pass and, once the pass is over (a C{callLater(0)}, which runs before the
reactor polls again), sends each transport's bytes in one system call: a
pipe's frames still go to the worker in one write, a connection's replies in
one send. Only what the kernel does not take is handed to Twisted, which
then buffers, reports errors and pauses producers as it always does.

That reads the buffer attributes of Twisted's C{FileDescriptor}, which are
not public API. It is done only for the plain TCP transports and process
pipes, only if their classes have those attributes (checked at import), and
everything else (TLS, UNIX sockets, the test suite's in-memory transports)
is written at once with C{transport.write}, as before.

L{closeNow} closes a TCP connection whose peer has half-closed, when nothing
waits to be sent, without the extra reactor pass (a writable event, an empty
C{send}) that C{loseConnection} takes: it does what C{loseConnection} itself
does for a connection already shut for writing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import abstract, main, process, tcp
from twisted.python.failure import Failure

_BUFFER = ("connected", "disconnecting", "_writeDisconnected", "dataBuffer", "offset")


def _hasBuffer(cls: type) -> bool:
    """
    Whether C{cls} keeps its unsent bytes as this module reads them: the
    class attributes of L{abstract.FileDescriptor} and the list its
    constructor makes.
    """
    return (
        issubclass(cls, abstract.FileDescriptor)
        and all(hasattr(cls, name) for name in _BUFFER)
        and "_tempDataBuffer" in abstract.FileDescriptor.__init__.__code__.co_names
    )


def _closesAtOnce(cls: type) -> bool:
    """
    Whether C{cls} closes as L{closeNow} expects: C{loseConnection} of a
    connection shut for writing stops reading and writing and calls
    C{connectionLost} at once, which closes the socket (orderly: its unsent
    bytes still go, then the FIN), and the producer is an attribute.
    """
    lose = abstract.FileDescriptor.loseConnection.__code__.co_names
    lost = getattr(cls, "connectionLost", None)
    return (
        _hasBuffer(cls)
        and all(hasattr(cls, name) for name in ("producer", "_aborting", "TLS"))
        and {"_writeDisconnected", "stopReading", "stopWriting", "connectionLost"}
        <= set(lose)
        and lost is tcp.Connection.connectionLost
        and "_closeSocket" in lost.__code__.co_names
    )


class _Kinds:
    """
    The transport classes whose writes are gathered (sockets and pipes),
    and those L{closeNow} closes.
    """

    sockets: tuple[type, ...] = ()
    pipes: tuple[type, ...] = ()
    closing: tuple[type, ...] = ()


_kinds = _Kinds()


def enable() -> None:
    """
    Gather writes on Twisted's TCP transports and process pipes (if they
    are as this module expects).
    """
    _kinds.sockets = tuple(c for c in (tcp.Server, tcp.Client) if _hasBuffer(c))
    _kinds.pipes = tuple(c for c in (process.ProcessWriter,) if _hasBuffer(c))
    _kinds.closing = tuple(c for c in (tcp.Server,) if _closesAtOnce(c))


def disable() -> None:
    """
    Write everything at once with C{transport.write}, and close with
    C{loseConnection} (for tests).
    """
    _kinds.sockets = _kinds.pipes = _kinds.closing = ()


class _Pending:
    """
    What is waiting for the end of the pass, by transport.
    """

    def __init__(self) -> None:
        self.chunks: dict[Any, list[bytes]] = {}
        self.scheduled: Any = None


_pending = _Pending()


def coalesces(transport: Any) -> bool:
    """
    Whether writes to C{transport} (a socket transport or a process pipe)
    are gathered until the end of the pass.
    """
    kind = type(transport)
    return kind in _kinds.sockets or kind in _kinds.pipes


def write(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} (a TCP transport, or a process's
    C{ProcessWriter}): at the end of this reactor pass for those this module
    handles, else now.
    """
    if not coalesces(transport):
        transport.write(data)
        return
    chunks = _pending.chunks.get(transport)
    if chunks is None:
        _pending.chunks[transport] = [data]
    else:
        chunks.append(data)
    scheduled = _pending.scheduled
    if scheduled is None or not scheduled.active():
        # (Not active: cancelled from outside, say by a test's cleanup.)
        _pending.scheduled = transport.reactor.callLater(0, flushAll)


def flush(transport: Any) -> None:
    """
    Send what waits for C{transport} now: before closing it, or writing to
    it some other way.
    """
    chunks = _pending.chunks.pop(transport, None)
    if chunks:
        _send(transport, b"".join(chunks))


def flushAll() -> None:
    """
    Send everything written during the pass.
    """
    _pending.scheduled = None
    chunks, _pending.chunks = _pending.chunks, {}
    for transport, data in chunks.items():
        _send(transport, b"".join(data))


_DONE = Failure(main.CONNECTION_DONE)
"""The reason a closed connection gives (shared, as Twisted shares its own)."""


def closeNow(transport: Any) -> bool:
    """
    Close C{transport}, a TCP connection whose peer has half-closed (its
    end of input was read), at once if nothing waits to be sent (here, or
    in Twisted's buffer) and no producer is registered; return whether it
    did. Else (or for another kind of transport) nothing is done: use
    C{loseConnection}, which sends what waits first.

    Loss-free: the socket is closed the orderly way (the kernel still sends
    what it holds, then the FIN), and since the peer's end of input was
    read, no unread byte is left whose presence would make the kernel reset
    the connection instead. C{connectionLost} runs before this returns.
    """
    if (
        type(transport) not in _kinds.closing
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or transport._aborting
        or transport.TLS
        or transport.producer is not None
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or transport in _pending.chunks
    ):
        return False
    # What loseConnection does for a connection already shut for writing.
    transport.stopReading()
    transport.stopWriting()
    transport.connectionLost(_DONE)
    return True


def _send(transport: Any, data: bytes) -> None:
    if (
        not transport.connected
        or transport._writeDisconnected
        or getattr(transport, "_aborting", False)
    ):
        # Lost, shut for writing, or aborted: nothing more may be sent, and
        # Twisted would drop it too. Not handed to it: a lost pipe's
        # ProcessWriter.write() first stops reading its old descriptor
        # number, and the kernel may have given that number to a new pipe
        # (another worker's results) since, which the reactor would then
        # stop watching for good.
        return
    if (
        not transport.disconnecting
        and not getattr(transport, "TLS", False)
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            if type(transport) in _kinds.pipes:
                sent = os.write(transport.fd, data)
            else:
                sent = transport.socket.send(data)
        except OSError:
            # Would block, or failed: Twisted buffers it, or meets the
            # error and reports it its own way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


enable()
