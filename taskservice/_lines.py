"""
Newline-delimited framing with a length limit that never drops the connection:
the Twisted shell over L{taskservice.wire.LineSplitter}.

Twisted's C{LineReceiver} hands an overlong line to C{lineLengthExceeded}
together with every line buffered after it and, by default, disconnects; its
buffer is re-split per line. This protocol discards only the overlong line,
reports it once through L{LineProtocol.lineTooLong}, and keeps going with the
next line; the splitting itself (linear buffering, C{\\r\\n}) is the
splitter's, which programs without Twisted use too.

A C{\\r} alone ends no line (as in JSON Lines: only C{\\n} does, and a C{\\r}
before it is tolerated). When the peer has sent all it will send,
L{LineProtocol.finishInput} delivers what is left as a last line.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol

from taskservice.wire import DEFAULT_MAX_LINE, LineSplitter, LineTooLong

__all__ = ["DEFAULT_MAX_LINE", "LineProtocol"]


class LineProtocol(Protocol):
    """
    Calls L{lineReceived} with each C{\\n}-terminated line (without the
    delimiter) and L{lineTooLong} once for each line over L{maxLineLength}.

    @ivar maxLineLength: the limit; a subclass may change it at any time, a
        line (C{$/auth}, say) included: it applies from the next line on.
    @ivar tooLongPrefix: the start of the last overlong line (its first 256
        bytes), for L{lineTooLong}.
    """

    maxLineLength: int = DEFAULT_MAX_LINE

    def makeConnection(self, transport: ITransport) -> None:
        # Replies and progress are small writes that must not wait for the
        # peer's delayed ACK (Nagle's algorithm costs 40 ms a round trip on
        # a connection that also carries other traffic).
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)

    def __init__(self) -> None:
        self._splitter = LineSplitter()
        self.tooLongPrefix = b""

    @property
    def _buffer(self) -> bytearray:
        """
        The start of a line awaiting its end (what tests check stays within
        the limit).
        """
        return self._splitter.buffered

    def dataReceived(self, data: bytes) -> None:
        splitter = self._splitter
        splitter.maxLength = self.maxLineLength
        whole = splitter.wholeLine(data)
        if whole is not None:
            # The common case: a read holding exactly one whole line.
            self.lineReceived(whole)
            return
        splitter.feed(data)
        while True:
            # Read each time: a line may change the limit.
            splitter.maxLength = self.maxLineLength
            line = splitter.nextLine()
            if line is None:
                return
            if isinstance(line, LineTooLong):
                self.tooLongPrefix = line.prefix
                self.lineTooLong()
            else:
                self.lineReceived(line)

    def finishInput(self) -> None:
        """
        The peer will send nothing more (it half-closed): the bytes it sent
        after its last C{\\n}, if any, are its last line. (The rest of a
        line already reported too long is not.)
        """
        line = self._splitter.finish()
        if line is not None:
            self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        raise NotImplementedError

    def lineTooLong(self) -> None:
        raise NotImplementedError

    def sendLine(self, line: bytes) -> None:
        """
        Write C{line} (which must already end with C{\\n}).
        """
        assert self.transport is not None
        self.transport.write(line)
