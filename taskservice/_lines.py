"""
Newline-delimited framing with a length limit that never drops the connection.

Twisted's C{LineReceiver} hands an overlong line to C{lineLengthExceeded}
together with every line buffered after it and, by default, disconnects; its
buffer is re-split per line. This protocol discards only the overlong line,
reports it once through L{LineProtocol.lineTooLong}, and keeps going with the
next line; it buffers in a C{bytearray} so a 10 MB line costs linear time.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol

DEFAULT_MAX_LINE = 16 * 1024 * 1024


class LineProtocol(Protocol):
    """
    Calls L{lineReceived} with each C{\\n}-terminated line (without the
    delimiter) and L{lineTooLong} once for each line over L{maxLineLength}.
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
        self._buffer = bytearray()
        self._discarding = False
        self.tooLongPrefix = b""
        """The start of the last overlong line (its first 256 bytes)."""

    def dataReceived(self, data: bytes) -> None:
        if (
            not self._buffer
            and not self._discarding
            and len(data) <= self.maxLineLength
            and data.find(b"\n") == len(data) - 1 >= 0
        ):
            # The common case, a read holding exactly one whole line: no
            # buffering.
            self.lineReceived(data[:-1])
            return
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1 :]
        buffer = self._buffer
        searchFrom = len(buffer)
        buffer += data
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", searchFrom)
                if end < 0:
                    break
                line = bytes(buffer[start:end])
                start = searchFrom = end + 1
                # A \r before the \n does not count against the limit,
                # which a line may change (read each time).
                if len(line) - line.endswith(b"\r") > self.maxLineLength:
                    self.tooLongPrefix = line[:256]
                    self.lineTooLong()
                else:
                    self.lineReceived(line)
        finally:
            if start:
                del buffer[:start]
        # (A trailing \r may be the end of a line whose \n is on its way.)
        if len(buffer) - buffer.endswith(b"\r") > self.maxLineLength:
            self.tooLongPrefix = bytes(buffer[:256])
            buffer.clear()
            self._discarding = True
            self.lineTooLong()

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
