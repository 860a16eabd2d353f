"""
L{taskservice._coalesce.closeNow}: a TCP connection whose peer half-closed
is closed at once, with nothing lost, when nothing waits to be sent; and
the task server closes such a connection that way (no extra reactor pass).
Real loopback sockets.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice import _coalesce
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory, TaskServerProtocol
from taskservice.testing import FakeProcessReactor

pytestmark = pytest.mark.integration


def test_installedTwistedClosesAsExpected() -> None:
    """
    The installed Twisted's server connections close as closeNow expects;
    if a Twisted release changes that, this fails (and closeNow declines,
    so the server uses loseConnection as before).
    """
    assert _coalesce._kinds.closing == (tcp.Server,)


def test_otherTransportsAreNotClosed() -> None:
    transport = StringTransport()
    assert not _coalesce.closeNow(transport)
    assert not transport.disconnecting


@implementer(IHalfCloseableProtocol)
class Caller(Protocol):
    """
    A client that sends its bytes, half-closes, and reads to the end.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.closed.called:
            self.closed.callback(bytes(self.received))


@implementer(IHalfCloseableProtocol)
class Answerer(Protocol):
    """
    On the client's end of input: write C{reply} (gathered), then try
    closeNow; record what happened.
    """

    reply = b"every answer\n"
    closedNow: bool | None = None
    lostBeforeReturn: bool | None = None
    lost = False

    def readConnectionLost(self) -> None:
        _coalesce.write(self.transport, self.reply)
        _coalesce.flush(self.transport)
        self.closedNow = _coalesce.closeNow(self.transport)
        self.lostBeforeReturn = self.lost
        if not self.closedNow:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


async def exchange(answerer: Answerer) -> bytes:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: answerer)
    )
    try:
        caller = Caller(b"a question")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: caller)
        )
        return await caller.closed
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_closedAtOnceWithNothingLost() -> None:
    """
    After the peer's end of input, with the reply sent: closed before
    closeNow returns (connectionLost already run), and the peer gets the
    whole reply, then an orderly end.
    """
    answerer = Answerer()
    assert await exchange(answerer) == answerer.reply
    assert answerer.closedNow is True
    assert answerer.lostBeforeReturn is True


@pytest_twisted.ensureDeferred
async def test_declinedWhileTwistedHoldsBytes() -> None:
    """
    A reply larger than the kernel takes at once leaves bytes in Twisted's
    buffer: closeNow declines, and loseConnection sends them all first.
    """
    answerer = Answerer()
    answerer.reply = bytes(range(256)) * (16 * 1024 * 4)  # 16 MiB
    assert await exchange(answerer) == answerer.reply
    assert answerer.closedNow is False
    assert answerer.lostBeforeReturn is False


@pytest_twisted.ensureDeferred
async def test_declinedWithAProducer() -> None:
    """
    A transport with a registered producer is left to loseConnection.
    """

    class WithProducer(Answerer):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.registerProducer(self, True)

        def readConnectionLost(self) -> None:
            Answerer.readConnectionLost(self)
            if not self.closedNow:
                self.transport.unregisterProducer()

        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    answerer = WithProducer()
    assert await exchange(answerer) == answerer.reply
    assert answerer.closedNow is False


class Recording(TaskServerProtocol):
    """
    The task server's protocol, noting whether the connection was already
    lost when its end-of-input handler returned.
    """

    lostInTheSameEvent: bool | None = None

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.lostInTheSameEvent = not self._connected


@pytest_twisted.ensureDeferred
async def test_taskServerClosesAHalfClosedConnectionAtOnce() -> None:
    """
    A client that sends a line and half-closes (C{printf ... | nc}) gets its
    answer, and the server's connection is closed within the event that
    read the end of input (no second reactor pass, no empty send).
    """
    pool = ProcessPool(FakeProcessReactor(), ["tests.tasks"], size=1)
    factory = TaskServerFactory(pool)
    protocols: list[Recording] = []

    def build(addr: Any) -> Recording:
        protocol = Recording(factory)
        protocols.append(protocol)
        return protocol

    factory.buildProtocol = build  # type: ignore[method-assign]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        caller = Caller(b"not json\n")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: caller)
        )
        reply = await caller.closed
    finally:
        await port.stopListening()
    assert b'"code":-32700' in reply and reply.endswith(b"\n")
    [protocol] = protocols
    assert protocol.lostInTheSameEvent is True
    assert not factory.protocols
