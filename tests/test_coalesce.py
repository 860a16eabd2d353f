"""
L{taskservice._coalesce}: writes gathered during a reactor pass and sent at
its end, on real loopback sockets and a real child process's pipe.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import abstract, process, reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport

from taskservice import _coalesce

pytestmark = pytest.mark.integration


def test_twistedTransportsAreKnown() -> None:
    """
    The installed Twisted's TCP transports and process pipes keep their
    buffers as the module expects; if a Twisted release changes that, this
    fails (and the module writes through transport.write instead).
    """
    assert _coalesce._kinds.sockets == (tcp.Server, tcp.Client)
    assert _coalesce._kinds.pipes == (process.ProcessWriter,)


def test_otherTransportsAreWrittenAtOnce() -> None:
    transport = StringTransport()
    _coalesce.write(transport, b"now")
    assert transport.value() == b"now"
    assert not _coalesce.coalesces(transport)


class Receiver(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(bytes(self.received))


async def connectedPair() -> tuple[Any, Receiver, Any]:
    """
    A loopback connection: the server side's protocol (whose transport the
    test writes to), the client side's receiver, and the listening port.
    """
    accepted: Deferred[Protocol] = Deferred()

    class Sender(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Sender)
    )
    receiver = Receiver()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        Factory.forProtocol(lambda: receiver)
    )
    sender = await accepted
    return sender, receiver, port


@pytest_twisted.ensureDeferred
async def test_writesOfAPassLeaveTogetherInOrder() -> None:
    """
    What is written in one pass waits (nothing reaches the socket or
    Twisted's buffer), then leaves in order once the pass is over.
    """
    sender, receiver, port = await connectedPair()
    transport = sender.transport
    assert _coalesce.coalesces(transport)
    chunks = [b"%d," % i for i in range(200)]
    for chunk in chunks:
        _coalesce.write(transport, chunk)
    assert not transport._tempDataBuffer and transport.dataBuffer == b""
    await deferLater(reactor, 0.05, lambda: None)
    assert bytes(receiver.received) == b"".join(chunks)
    _coalesce.flush(transport)
    transport.loseConnection()
    await receiver.closed
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_flushBeforeClosing() -> None:
    """
    flush() sends what waits at once, so closing right after loses nothing.
    """
    sender, receiver, port = await connectedPair()
    _coalesce.write(sender.transport, b"last words")
    _coalesce.flush(sender.transport)
    sender.transport.loseConnection()
    assert await receiver.closed == b"last words"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_whatTheKernelRefusesIsLeftToTwisted() -> None:
    """
    More than the socket takes at once: the rest goes to Twisted's buffer
    and still arrives whole, in order, behind later writes' bytes.
    """
    sender, receiver, port = await connectedPair()
    big = bytes(range(256)) * (16 * 1024 * 4)  # 16 MiB
    _coalesce.write(sender.transport, big)
    await deferLater(reactor, 0, lambda: None)
    _coalesce.write(sender.transport, b"after")
    await deferLater(reactor, 0, lambda: None)
    _coalesce.flush(sender.transport)
    sender.transport.loseConnection()
    assert await receiver.closed == big + b"after"
    await port.stopListening()


class Echo(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[bytes] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: object) -> None:
        self.ended.callback(bytes(self.output))


@pytest_twisted.ensureDeferred
async def test_pipe() -> None:
    """
    A child's stdin pipe: the writes of a pass leave in one write, in order.
    """
    echo = Echo()
    child = reactor.spawnProcess(
        echo,
        sys.executable,
        [
            sys.executable,
            "-c",
            "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())",
        ],
        env=None,
    )
    pipe = child.pipes[0]
    assert _coalesce.coalesces(pipe)
    chunks = [b"frame %d;" % i for i in range(100)]
    for chunk in chunks:
        _coalesce.write(pipe, chunk)
    await deferLater(reactor, 0, lambda: None)
    _coalesce.write(pipe, b"end")
    _coalesce.flush(pipe)
    child.closeStdin()
    assert await echo.ended == b"".join(chunks) + b"end"


@pytest_twisted.ensureDeferred
async def test_abortDropsWhatWaits() -> None:
    """
    abortConnection() means nothing more is sent, gathered bytes included.
    """
    sender, receiver, port = await connectedPair()
    _coalesce.write(sender.transport, b"never")
    sender.transport.abortConnection()
    assert await receiver.closed == b""
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancelledFlushIsScheduledAgain() -> None:
    """
    If the end-of-pass flush is cancelled from outside (a test's cleanup),
    the next write schedules another: nothing stays gathered for good.
    """
    sender, receiver, port = await connectedPair()
    _coalesce.write(sender.transport, b"one,")
    _coalesce._pending.scheduled.cancel()
    _coalesce.write(sender.transport, b"two")
    await deferLater(reactor, 0.05, lambda: None)
    assert bytes(receiver.received) == b"one,two"
    _coalesce.flush(sender.transport)
    sender.transport.loseConnection()
    await receiver.closed
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_stoppingAClientSendsWhatWaits() -> None:
    """
    A TaskClient stopped in the same pass as a cancel still sends the
    cancel before closing.
    """
    from taskservice.client import TaskClient

    lines: list[bytes] = []
    closed: Deferred[None] = Deferred()

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            lines.extend(data.splitlines())

        def connectionLost(self, reason: object = None) -> None:
            closed.callback(None)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Recorder)
    )
    client = TaskClient(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
    client.startService()
    pending = client.request("echo", ["x"], timeout=None)
    pending.addErrback(lambda _: None)
    await deferLater(reactor, 0.1, lambda: None)

    def cancelAndStop() -> Deferred[None]:
        pending.cancel()
        return client.stopService()

    await deferLater(reactor, 0, cancelAndStop)
    await closed
    assert any(b"$/cancelRequest" in line for line in lines), lines
    await port.stopListening()


class _Reader(abstract.FileDescriptor):
    """
    A reader of one descriptor, for checking what the reactor watches.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.received = bytearray()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.received += os.read(self.fd, 65536)


@pytest_twisted.ensureDeferred
async def test_writeToALostPipeLeavesItsOldDescriptorAlone() -> None:
    """
    A write gathered for a pipe whose reader went away in the same pass is
    dropped: handing it to Twisted would make the dead ProcessWriter stop
    "reading" its old descriptor number, which the kernel may have given to
    a new pipe by then, and the reactor would stop watching that one (a
    worker's results pipe, say: its answers and its exit never seen).
    """
    lost: Deferred[None] = Deferred()

    class Owner:
        def childConnectionLost(self, name: str, reason: object) -> None:
            os.close(writer.fd)
            lost.callback(None)

    readEnd, writeEnd = os.pipe()
    writer = process.ProcessWriter(reactor, Owner(), "commands", writeEnd)
    assert _coalesce.coalesces(writer)
    os.close(readEnd)  # the worker died: the reactor sees the pipe broken
    await lost
    # A new pipe gets the old descriptor number, and the reactor watches it.
    newRead, newWrite = os.pipe()
    if writeEnd in (newRead, newWrite):
        moved = os.dup(newRead), os.dup(newWrite)
        os.close(newRead)
        os.close(newWrite)
        newRead, newWrite = moved
    os.dup2(newRead, writeEnd)
    os.close(newRead)
    reader = _Reader(writeEnd)
    reader.startReading()
    try:
        _coalesce.write(writer, b"a call for the dead worker")
        await deferLater(reactor, 0, lambda: None)
        await deferLater(reactor, 0, lambda: None)
        assert any(r is reader for r in reactor.getReaders())
        os.write(newWrite, b"still read")
        for _ in range(100):
            if reader.received:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert bytes(reader.received) == b"still read"
    finally:
        reader.stopReading()
        os.close(writeEnd)
        os.close(newWrite)
