"""
Unit tests of L{taskservice.wire}: the protocol's names and constants, and
L{LineSplitter} on its own (no reactor, no transport). The Twisted shell
over the splitter, L{taskservice._lines.LineProtocol}, is tested in
L{tests.test_lines} and L{tests.test_hostile}.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskservice import _auth, _lines, client, server, wire
from taskservice.wire import LineSplitter, LineTooLong, callParams


def drain(splitter: LineSplitter) -> list[bytes | LineTooLong]:
    """
    Every line (or overlong-line report) the splitter has ready.
    """
    events: list[bytes | LineTooLong] = []
    while (event := splitter.nextLine()) is not None:
        events.append(event)
    return events


def split(chunks: list[bytes], limit: int = 10) -> list[bytes | LineTooLong]:
    """
    What a splitter with C{limit} returns for C{chunks}, fed one by one and
    drained after each.
    """
    splitter = LineSplitter(limit)
    events: list[bytes | LineTooLong] = []
    for chunk in chunks:
        splitter.feed(chunk)
        events.extend(drain(splitter))
    return events


def test_protocolMethods() -> None:
    """
    Every C{$/} method has its name here, in the reserved namespace, and the
    modules that used to define them still export the same objects.
    """
    names = {"$/auth", "$/cancelRequest", "$/progress", "$/stats"}
    jobs = {"$/submit", "$/job", "$/attach", "$/cancelJob", "$/jobs"}
    assert jobs == wire.JOB_METHODS
    assert names | jobs == wire.PROTOCOL_METHODS
    assert all(name.startswith(wire.RESERVED_PREFIX) for name in wire.PROTOCOL_METHODS)
    assert (server.PROGRESS, server.CANCEL, server.STATS) == (
        wire.PROGRESS,
        wire.CANCEL,
        wire.STATS,
    )
    assert (_auth.AUTH, _auth.PRE_AUTH_MAX_LINE) == (wire.AUTH, wire.PRE_AUTH_MAX_LINE)
    assert _lines.DEFAULT_MAX_LINE == wire.DEFAULT_MAX_LINE == 16 * 1024 * 1024
    assert client.CLIENT_MAX_LINE == wire.CLIENT_MAX_LINE


def test_callParams() -> None:
    """
    Positional or keyword arguments become list or object params; both at
    once is a L{TypeError}.
    """
    assert callParams((1, 2), {}) == [1, 2]
    assert callParams((), {"a": 1}) == {"a": 1}
    assert callParams((), {}) == []
    with pytest.raises(TypeError, match="not both"):
        callParams((1,), {"a": 1})


def test_linesAcrossChunks() -> None:
    """
    Lines come out whole and in order however the bytes are cut; a partial
    line waits for its end.
    """
    assert split([b"ab", b"c\nde", b"f\n\ng", b"h"]) == [b"abc", b"def", b""]
    assert split([b"\n"]) == [b""]


def test_crlfNotCounted() -> None:
    """
    A C{\\r} before the C{\\n} stays in the line and does not count against
    the limit; a C{\\r} elsewhere ends nothing.
    """
    assert split([b"0123456789\r\n", b"a\rb\n"]) == [b"0123456789\r", b"a\rb"]
    assert split([b"0123456789\r", b"\n"]) == [b"0123456789\r"]


def test_overlongLineReportedOnceWithItsPrefix() -> None:
    """
    A complete overlong line is replaced by one L{LineTooLong} holding its
    start; the next line is read normally.
    """
    splitter = LineSplitter(4)
    splitter.feed(b"abcdef\nok\n")
    assert drain(splitter) == [LineTooLong(b"abcdef"), b"ok"]


def test_overlongPartialLineReportedEarly() -> None:
    """
    A line still arriving is reported as soon as it passes the limit, once;
    the rest of it is dropped up to its C{\\n}, and nothing more than the
    limit is held meanwhile.
    """
    splitter = LineSplitter(4)
    splitter.feed(b"abcdef")
    assert drain(splitter) == [LineTooLong(b"abcdef")]
    assert splitter.buffered == b""
    splitter.feed(b"ghij" * 100)
    assert drain(splitter) == []
    splitter.feed(b"k\nnext\n")
    assert drain(splitter) == [b"next"]


def test_prefixIsBounded() -> None:
    """
    The prefix of an overlong line is its first L{wire.TOO_LONG_PREFIX}
    bytes, whether the line came in one chunk or in many.
    """
    line = bytes(range(256)).replace(b"\n", b"") * 4
    (one,) = split([line + b"\n"], limit=100)
    assert one == LineTooLong(line[: wire.TOO_LONG_PREFIX])
    (many,) = split([line[:50], line[50:] + b"\n"], limit=100)
    assert many == LineTooLong(line[: wire.TOO_LONG_PREFIX])


def test_limitMayChangeBetweenLines() -> None:
    """
    A new C{maxLength} applies from the next line on, within the same chunk
    (as after C{$/auth}, which raises the limit).
    """
    splitter = LineSplitter(4)
    splitter.feed(b"auth\n0123456789\n")
    assert splitter.nextLine() == b"auth"
    splitter.maxLength = 100
    assert drain(splitter) == [b"0123456789"]


def test_wholeLine() -> None:
    """
    The quick path takes a chunk only when it is exactly one line within the
    limit and nothing is buffered; otherwise it leaves the chunk to L{feed}.
    """
    splitter = LineSplitter(10)
    assert splitter.wholeLine(b"abc\n") == b"abc"
    assert splitter.wholeLine(b"abc\r\n") == b"abc\r"
    for chunk in (b"", b"abc", b"a\nb\n", b"a\nb", b"0123456789\n"):
        assert splitter.wholeLine(chunk) is None, chunk
    splitter.feed(b"par")
    assert drain(splitter) == []
    assert splitter.wholeLine(b"t\n") is None
    splitter.feed(b"t\n")
    assert drain(splitter) == [b"part"]
    assert splitter.wholeLine(b"t\n") == b"t"


def test_feedWithoutDraining() -> None:
    """
    Feeding again before every line was read loses nothing.
    """
    splitter = LineSplitter()
    splitter.feed(b"a\nb\nc")
    assert splitter.nextLine() == b"a"
    splitter.feed(b"d\n")
    assert drain(splitter) == [b"b", b"cd"]


def test_tenMegabytesInSmallChunks() -> None:
    """
    A 10 MB line in 4 KiB chunks comes out intact (linear buffering).
    """
    payload = b"0123456789abcdef" * (10 * 1024 * 1024 // 16)
    data = payload + b"\n"
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    assert split(chunks, limit=wire.DEFAULT_MAX_LINE) == [payload]


def _reference(stream: bytes, limit: int) -> list[bytes | None]:
    """
    What any chunking of C{stream} must give: each line, or L{None} for an
    overlong one (a trailing C{\\r} not counted), and L{None} for an
    unterminated rest that is already overlong.
    """
    *lines, rest = stream.split(b"\n")
    events: list[bytes | None] = [
        None if len(line) - line.endswith(b"\r") > limit else line for line in lines
    ]
    if len(rest) - rest.endswith(b"\r") > limit:
        events.append(None)
    return events


@given(
    st.integers(1, 12),
    st.lists(st.sampled_from([b"a", b"bb", b"\n", b"\r", b"\r\n", b"xxxxx"])),
    st.lists(st.integers(0, 200)),
)
def test_anyChunkingMatchesTheReference(
    limit: int, pieces: list[bytes], cuts: list[int]
) -> None:
    """
    For any stream, limit and chunking, the splitter gives what a reference
    computed from the whole stream gives, and never holds more than the
    limit (a trailing C{\\r} aside).
    """
    stream = b"".join(pieces)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    edges = [0, *points, len(stream)]
    splitter = LineSplitter(limit)
    events: list[bytes | None] = []
    for start, end in itertools.pairwise(edges):
        chunk = stream[start:end]
        whole = splitter.wholeLine(chunk)
        if whole is not None:
            events.append(whole)
            continue
        splitter.feed(chunk)
        for event in drain(splitter):
            events.append(None if isinstance(event, LineTooLong) else event)
        buffered = splitter.buffered
        assert len(buffered) - buffered.endswith(b"\r") <= limit
    assert events == _reference(stream, limit)


def test_finishIsTheLastLine() -> None:
    """
    At the end of the stream, the bytes after the last C{\\n} are one last
    line (a C{\\r} at their end kept); then nothing is left, and a stream that
    ended on a C{\\n} has no last line.
    """
    splitter = LineSplitter(10)
    splitter.feed(b"one\ntw")
    assert drain(splitter) == [b"one"]
    splitter.feed(b"o\r")
    assert drain(splitter) == []
    assert splitter.finish() == b"two\r"
    assert splitter.finish() is None
    ended = LineSplitter(10)
    ended.feed(b"one\n")
    assert drain(ended) == [b"one"]
    assert ended.finish() is None


def test_finishAfterAnOverlongLine() -> None:
    """
    The unterminated rest of a line already reported too long is no line at
    the end: it was reported once.
    """
    splitter = LineSplitter(4)
    splitter.feed(b"123456")
    assert drain(splitter) == [LineTooLong(b"123456")]
    splitter.feed(b"78")
    assert drain(splitter) == []
    assert splitter.finish() is None


def test_callOptionsFromParseToThePool() -> None:
    """
    A request's C{"timeout"} is parsed into one L{CallOptions} value (the
    shared L{NO_OPTIONS} when absent: nothing made per call).
    """
    from taskservice import _jsonrpc

    timed = _jsonrpc.parseLine(
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1],"timeout":2.5}'
    )
    plain = _jsonrpc.parseLine(b'{"jsonrpc":"2.0","id":1,"method":"echo"}')
    assert isinstance(timed, _jsonrpc.Request) and isinstance(plain, _jsonrpc.Request)
    assert timed.options == wire.CallOptions(timeout=2.5)
    assert plain.options is wire.NO_OPTIONS
    assert timed.options.members() == {"timeout": 2.5}
    assert wire.NO_OPTIONS.members() == {}


def test_callOptionsAreSentAsRequestMembers() -> None:
    """
    The client core writes a call's options as the request's members
    beside C{"method"}; with none it writes none.
    """
    import json

    from taskservice._clientcore import ClientCore

    class Shell:
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        def sendLine(self, line: bytes) -> None:
            self.lines.append(line)

        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None

    shell = Shell()
    core: ClientCore[str] = ClientCore(shell)
    core.connectionMade()
    core.request("echo", [1], "a", options=wire.CallOptions(timeout=1.5))
    core.request("echo", [1], "b")
    first, second = (json.loads(line) for line in shell.lines)
    assert first["timeout"] == 1.5
    assert "timeout" not in second
