"""
L{taskservice._wsframes}, the gateway's seam onto Autobahn's frame
internals, against the installed Autobahn: a protocol reading frames through
it must behave exactly as one reading them through Autobahn alone, whatever
the bytes (valid messages, control frames, fragments, protocol violations,
invalid UTF-8, oversize frames) and however they are split into reads.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from txaio.testutil import replace_loop

from taskservice import _wsframes
from taskservice._gatewayprotocol import GatewayProtocol
from taskservice.gateway import GatewayFactory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
LIMIT = 300
"""The twins' --max-message: frames over it are closed with 1009."""


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:
        # (Autobahn unregisters one it never registered.)
        self.producer = None


class _Upstream:
    def request(self, *a: Any, **kw: Any) -> Deferred[Any]:
        raise AssertionError("no call goes upstream here")

    def abandon(self, d: Deferred[Any]) -> None:
        pass


class Recorder(GatewayProtocol):
    """
    A gateway protocol that records its messages instead of calling.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.closes: list[tuple[bool, int | None]] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        if payload == b"close now":
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closes.append((wasClean, code))
        super().onClose(wasClean, code, reason)


def opened(lean: bool, limit: int = LIMIT) -> tuple[Recorder, StringTransport]:
    """
    A recorder after its handshake, reading through the seam or not.
    """
    reactor = MemoryReactorClock()
    factory = GatewayFactory(reactor, _Upstream(), maxMessageSize=limit)
    factory.protocol = Recorder
    protocol: Any = factory.buildProtocol(PEER)
    assert isinstance(protocol, Recorder)
    transport = _Transport(peerAddress=PEER, hostAddress=HOST)
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE)
    assert transport.value().startswith(b"HTTP/1.1 101")
    assert protocol._lean, "the installed Autobahn is not as _wsframes expects"
    protocol._lean = lean
    transport.clear()
    return protocol, transport


@pytest.fixture(autouse=True)
def fakeLoop() -> Iterator[None]:
    """
    Autobahn's txaio timers on a fake clock, not the global reactor.
    """
    with replace_loop(MemoryReactorClock()):
        yield


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """
    A client's frame (masked), with the shortest length encoding.
    """
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n <= 0xFFFF:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    key = b"\x1f\x8b\x37\xc2"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def unmaskedFrame(payload: bytes) -> bytes:
    return bytes((0x81, len(payload))) + payload


def longLengthForShortPayload(payload: bytes) -> bytes:
    """
    A 16-bit length for a payload under 126 bytes: a protocol violation.
    """
    key = b"\x00\x00\x00\x00"
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + key + payload


_text = st.text(max_size=200).map(lambda s: s.encode())
_frames = st.one_of(
    _text.map(lambda p: masked(1, p)),
    st.binary(max_size=200).map(lambda p: masked(1, p)),  # often not UTF-8
    st.binary(max_size=200).map(lambda p: masked(2, p)),
    st.binary(min_size=126, max_size=LIMIT + 40).map(lambda p: masked(2, p)),
    st.binary(max_size=20).map(lambda p: masked(9, p)),  # ping
    st.binary(max_size=20).map(lambda p: masked(10, p)),  # pong
    st.sampled_from([masked(8, struct.pack("!H", 1000)), masked(8, b"")]),
    st.tuples(_text, _text).map(lambda t: masked(1, t[0], fin=False) + masked(0, t[1])),
    _text.map(lambda p: masked(1, p, rsv=4)),
    _text.map(lambda p: masked(3, p)),  # reserved opcode
    _text.map(unmaskedFrame),
    _text.filter(lambda p: len(p) < 126).map(longLengthForShortPayload),
    st.just(masked(1, b"close now")),
)


def state(protocol: Recorder, transport: StringTransport) -> Any:
    return (
        protocol.messages,
        protocol.closes,
        protocol.state,
        transport.value(),
        transport.disconnecting,
        vars(protocol.trafficStats),
    )


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    frames=st.lists(_frames, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_sameAsAutobahn(frames: list[bytes], cuts: list[int]) -> None:
    """
    The same bytes, read in the same pieces, give the same messages, close
    codes, bytes sent back, state and traffic counters through the seam as
    through Autobahn alone.
    """
    stream = b"".join(frames)
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    reads = [stream[a:b] for a, b in itertools.pairwise(points)]
    lean, leanTransport = opened(lean=True)
    plain, plainTransport = opened(lean=False)
    for data in reads:
        lean.dataReceived(data)
        plain.dataReceived(data)
        assert state(lean, leanTransport) == state(plain, plainTransport)


def test_commonFramesSkipAutobahn() -> None:
    """
    Whole text and binary frames (16-bit lengths too) are read by the seam,
    several in one read: Autobahn's own reading is not entered.
    """
    protocol, _ = opened(lean=True)
    entered: list[bytes] = []
    protocol._dataReceived = entered.append  # type: ignore[method-assign,assignment]
    big = b"x" * 200
    protocol.dataReceived(masked(1, b'{"id":1}') + masked(2, b"\x00") + masked(1, big))
    protocol.dataReceived(masked(1, "héllo".encode()))
    assert protocol.messages == [
        (b'{"id":1}', False),
        (b"\x00", True),
        (big, False),
        ("héllo".encode(), False),
    ]
    assert entered == []


def test_restGoesToAutobahn() -> None:
    """
    From the first frame the seam does not take (here a ping, then a
    partial frame), Autobahn reads everything, and the seam takes over
    again once Autobahn holds nothing.
    """
    protocol, transport = opened(lean=True)
    frame = masked(1, b"after")
    protocol.dataReceived(masked(1, b"one") + masked(9, b"p") + frame[:3])
    assert protocol.messages == [(b"one", False)]
    assert transport.value() == b"\x8a\x01p"  # Autobahn's pong
    assert protocol.data == frame[:3]
    protocol.dataReceived(frame[3:])
    assert protocol.messages[-1] == (b"after", False)
    assert protocol.data == b""
    entered: list[bytes] = []
    protocol._dataReceived = entered.append  # type: ignore[method-assign,assignment]
    protocol.dataReceived(masked(1, b"lean again"))
    assert protocol.messages[-1] == (b"lean again", False)
    assert entered == []


def test_invalidUTF8ClosesWith1007() -> None:
    """
    A text message that is not UTF-8 (an encoded surrogate) is left to
    Autobahn, which closes with 1007; the message before it was delivered.
    """
    protocol, _ = opened(lean=True)
    protocol.dataReceived(masked(1, b"ok") + masked(1, b"\xed\xa0\x80"))
    assert protocol.messages == [(b"ok", False)]
    assert protocol.localCloseCode == 1007


def test_oversizeClosesWith1009() -> None:
    """
    A frame over --max-message is left to Autobahn, which closes with 1009.
    """
    protocol, _ = opened(lean=True)
    protocol.dataReceived(masked(1, b"x" * (LIMIT + 1)))
    assert protocol.messages == []
    assert protocol.localCloseCode == 1009


def test_sendFramesAsAutobahn() -> None:
    """
    A reply framed by the seam is byte for byte what C{sendMessage} sends,
    with the same counters, for each length encoding.
    """
    for size in (0, 5, 125, 126, 1000, 0xFFFF):
        payload = b"a" * size
        lean, leanTransport = opened(lean=True, limit=0x10000)
        plain, plainTransport = opened(lean=False, limit=0x10000)
        _wsframes.send(lean, payload)
        plain.sendMessage(payload)
        assert leanTransport.value() == plainTransport.value()
        assert vars(lean.trafficStats) == vars(plain.trafficStats)


def test_sendOverTheLimitIsAutobahns() -> None:
    """
    A reply over the message limit takes Autobahn's path, which refuses it.
    """
    from autobahn.exception import PayloadExceededError

    protocol, _ = opened(lean=True)
    with pytest.raises(PayloadExceededError):
        _wsframes.send(protocol, b"a" * (LIMIT + 1))


def test_incompatibleProtocolIsLeftToAutobahn() -> None:
    """
    A protocol whose options change what a frame means (frame logging,
    here), or that lacks an attribute the seam reads, is not taken.
    """
    protocol, _ = opened(lean=True)
    assert _wsframes.compatible(protocol)
    protocol.logFrames = True
    assert not _wsframes.compatible(protocol)
    protocol.logFrames = False
    del protocol.current_frame
    assert not _wsframes.compatible(protocol)


def test_unmask() -> None:
    """
    The mask repeats over the payload (RFC 6455, 5.3).
    """
    key = b"\x01\x02\x03\x04"
    payload = bytes(range(37))
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert _wsframes.unmask(payload, key) == expected
    assert _wsframes.unmask(b"", key) == b""
