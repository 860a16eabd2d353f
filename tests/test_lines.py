"""
Tests for L{taskservice._lines.LineProtocol}: newline framing with a length
limit that reports an overlong line once and keeps the connection usable.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from taskservice._lines import DEFAULT_MAX_LINE, LineProtocol

TOO_LONG = "<too long>"


class Collector(LineProtocol):
    """
    Records what L{LineProtocol} delivers, in order: each line's bytes, and
    L{TOO_LONG} for each overlong-line report.
    """

    def __init__(self, limit: int = DEFAULT_MAX_LINE) -> None:
        super().__init__()
        self.maxLineLength = limit
        self.events: list[bytes | str] = []

    def lineReceived(self, line: bytes) -> None:
        self.events.append(line)

    def lineTooLong(self) -> None:
        self.events.append(TOO_LONG)


def connected(limit: int = DEFAULT_MAX_LINE) -> Collector:
    """
    A L{Collector} connected to a L{StringTransport}.
    """
    protocol = Collector(limit)
    protocol.makeConnection(StringTransport())
    return protocol


def feed(protocol: LineProtocol, data: bytes, chunk: int) -> None:
    """
    Deliver C{data} in chunks of C{chunk} bytes.
    """
    for start in range(0, len(data), chunk):
        protocol.dataReceived(data[start : start + chunk])


def test_defaultLimit() -> None:
    """
    The default limit is a generous 16 MiB.
    """
    assert DEFAULT_MAX_LINE == 16 * 1024 * 1024
    assert LineProtocol.maxLineLength == DEFAULT_MAX_LINE


def test_byteByByte() -> None:
    """
    Lines split across chunks one byte at a time are reassembled.
    """
    protocol = connected()
    feed(protocol, b'{"a":1}\nsecond line\n\xc3\xa9\n', 1)
    assert protocol.events == [b'{"a":1}', b"second line", b"\xc3\xa9"]


def test_manyLinesInOneChunk() -> None:
    """
    Many lines in one chunk are each delivered, in order; a trailing partial
    line waits for the rest.
    """
    protocol = connected()
    lines = [b"line %d" % i for i in range(1000)]
    protocol.dataReceived(b"\n".join(lines) + b"\npart")
    assert protocol.events == lines
    protocol.dataReceived(b"ial\n")
    assert protocol.events == [*lines, b"partial"]


def test_delimiterOnly() -> None:
    """
    The delimiter is C{\\n} alone: a C{\\r} stays in the line (the JSON-RPC
    parser strips it) and C{\\r} on its own ends nothing.
    """
    protocol = connected()
    protocol.dataReceived(b"a\r\nb\rc\n")
    assert protocol.events == [b"a\r", b"b\rc"]


def test_emptyLines() -> None:
    """
    Empty lines are delivered as empty bytes (the server ignores them).
    """
    protocol = connected()
    protocol.dataReceived(b"\n\nx\n\n")
    assert protocol.events == [b"", b"", b"x", b""]


def test_atTheLimit() -> None:
    """
    A line of exactly the limit is accepted, whole or in pieces.
    """
    protocol = connected(limit=10)
    protocol.dataReceived(b"0123456789\n")
    protocol.dataReceived(b"abcde")
    protocol.dataReceived(b"fghij")
    protocol.dataReceived(b"\n")
    assert protocol.events == [b"0123456789", b"abcdefghij"]


def test_oneByteOverInOneChunk() -> None:
    """
    A line one byte over the limit is reported once and dropped; the line
    after it in the same chunk, and lines in later chunks, are delivered.
    """
    protocol = connected(limit=10)
    protocol.dataReceived(b"0123456789X\nnext\n")
    assert protocol.events == [TOO_LONG, b"next"]
    protocol.dataReceived(b"later\n")
    assert protocol.events == [TOO_LONG, b"next", b"later"]


def test_oneByteOverWithoutDelimiterYet() -> None:
    """
    A partial line that already passed the limit is reported at once (the
    sender learns early) and only once, even when its end arrives later.
    """
    protocol = connected(limit=10)
    protocol.dataReceived(b"0123456789X")
    assert protocol.events == [TOO_LONG]
    protocol.dataReceived(b"\nnext\n")
    assert protocol.events == [TOO_LONG, b"next"]


def test_overlongInManyChunks() -> None:
    """
    An overlong line arriving in many chunks is reported once; everything up
    to its newline is dropped, and framing resyncs right after it, in the
    same chunk.
    """
    protocol = connected(limit=100)
    protocol.dataReceived(b"ok\n" + b"x" * 60)
    feed(protocol, b"y" * 1000, 7)
    protocol.dataReceived(b"zzz\nafter\nhalf")
    protocol.dataReceived(b"-done\n")
    assert protocol.events == [b"ok", TOO_LONG, b"after", b"half-done"]


def test_overlongGrowingPastTheLimit() -> None:
    """
    A line that crosses the limit only in its last chunk (with its newline)
    is reported once.
    """
    protocol = connected(limit=10)
    protocol.dataReceived(b"01234")
    protocol.dataReceived(b"56789")
    protocol.dataReceived(b"AB\nC\n")
    assert protocol.events == [TOO_LONG, b"C"]


def test_consecutiveOverlongLines() -> None:
    """
    Each overlong line gets its own single report, whether complete in one
    chunk or left partial at a chunk's end.
    """
    protocol = connected(limit=4)
    protocol.dataReceived(b"aaaaaa\nbbbbbb\nok\ncccccc")
    protocol.dataReceived(b"cccc\ndddddd")
    protocol.dataReceived(b"\nend\n")
    assert protocol.events == [TOO_LONG, TOO_LONG, b"ok", TOO_LONG, TOO_LONG, b"end"]


def test_tenMegabyteLineInOneChunk() -> None:
    """
    A 10 MB line under a 16 MB limit is delivered intact.
    """
    protocol = connected()
    payload = bytes(range(256)).replace(b"\n", b"") * (10 * 1024 * 1024 // 255)
    protocol.dataReceived(payload + b"\nnext\n")
    assert len(protocol.events) == 2
    assert protocol.events[0] == payload
    assert protocol.events[1] == b"next"


def test_tenMegabyteLineInSmallChunks() -> None:
    """
    A 10 MB line arriving in 4 KiB chunks (as from a socket) is delivered
    intact; the buffering is linear, so this completes quickly.
    """
    protocol = connected()
    payload = b"0123456789abcdef" * (10 * 1024 * 1024 // 16)
    feed(protocol, payload + b"\n", 4096)
    assert len(protocol.events) == 1
    assert protocol.events[0] == payload


def test_sendLine() -> None:
    """
    sendLine writes the bytes as given (the caller includes the newline).
    """
    protocol = Collector()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.sendLine(b'{"a":1}\n')
    assert transport.value() == b'{"a":1}\n'


def test_finishInputDeliversTheRest() -> None:
    """
    When the peer will send no more, the bytes after its last C{\\n} are
    delivered as a last line (a C{\\r} at their end kept, as before a
    C{\\n}); with nothing left, nothing is delivered.
    """
    protocol = connected()
    protocol.dataReceived(b"one\ntw")
    protocol.dataReceived(b"o\r")
    protocol.finishInput()
    assert protocol.events == [b"one", b"two\r"]
    protocol.finishInput()
    assert protocol.events == [b"one", b"two\r"]
    empty = connected()
    empty.dataReceived(b"one\n")
    empty.finishInput()
    assert empty.events == [b"one"]


def test_finishInputAfterAnOverlongLine() -> None:
    """
    The unterminated rest of a line already reported too long is not
    delivered as a line at the end: the line was reported once.
    """
    protocol = connected(limit=4)
    protocol.dataReceived(b"123456")
    protocol.dataReceived(b"78")
    protocol.finishInput()
    assert protocol.events == [TOO_LONG]
