"""
The gateway's one seam onto Autobahn's internals: its common frames read
and written without Autobahn's per-frame machinery.

A browser's JSON-RPC message is one small, masked, unfragmented text frame,
and the gateway's reply one small unmasked text frame. For each frame it
receives, Autobahn builds a frame header object and an XOR masker (a
compiled one: costly to set up for a few dozen bytes), runs eight hooks
(frame and message, begin, data and end), validates UTF-8 incrementally and
fires a C{"message"} event; for each frame it sends, it checks its
arguments, counts, and packs the header. On this machine that was about a
third of the gateway's CPU time per call.

L{receive} instead takes the complete, unfragmented, masked text and binary
frames at the start of what was read, while Autobahn holds no partial frame
of its own: it unmasks them, checks the text ones are UTF-8 (C{isascii},
else a strict decode), keeps Autobahn's traffic counters and calls
C{onMessage}. Everything else is left to Autobahn, from the first byte the
fast path does not take: control frames (ping, pong, close), fragments,
reserved bits or opcodes, an unmasked frame, a frame over the size limits
(which Autobahn closes with 1009), invalid UTF-8 (1007), a partial frame,
and everything while it buffers one. Autobahn so decides every case that
is not plainly a valid message, with its own rules and close codes.

L{send} frames a text message as C{sendMessage} would (FIN, text, the
payload length, no mask) when nothing needs Autobahn's way (compression,
masking, fragmenting, frame logging, a message over the size limit), and
hands it to C{sendData}.

These read attributes of Autobahn's C{WebSocketProtocol} that are not
public API. L{compatible} checks that a protocol has them all, with the
types and values this module expects, once per connection when it opens;
a protocol without them gets Autobahn's own path, unchanged.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

__all__ = ["compatible", "frame", "receive", "send", "unmask"]

OPEN = WebSocketProtocol.STATE_OPEN
TEXT_FIN = 0x81
BINARY_FIN = 0x82
MASKED = 0x80
LARGEST = 0xFFFF
"""The largest payload taken: frames with a 16-bit length, at most."""

_MISSING = object()
_RECEIVE = {
    # Autobahn's own buffer and frame state: empty when no frame is partial.
    "data": bytes,
    "current_frame": type(None),
    "inside_message": bool,
    # What would make a frame mean something else.
    "_perMessageCompress": type(None),
    "websocket_version": int,
    "applyMask": bool,
    "requireMaskedClientFrames": bool,
    # Limits (0 is none), logging, timings, the auto-ping timeout.
    "maxFramePayloadSize": int,
    "maxMessagePayloadSize": int,
    "logFrames": bool,
    "logOctets": bool,
    "trackedTimings": type(None),
    "autoPingRestartOnAnyTraffic": bool,
}
_SEND = {
    "maskServerFrames": bool,
    "autoFragmentSize": int,
}
_COUNTERS = (
    "incomingOctetsWireLevel",
    "incomingOctetsWebSocketLevel",
    "incomingOctetsAppLevel",
    "incomingWebSocketFrames",
    "incomingWebSocketMessages",
    "outgoingOctetsAppLevel",
    "outgoingOctetsWebSocketLevel",
    "outgoingWebSocketFrames",
    "outgoingWebSocketMessages",
)


def compatible(protocol: Any) -> bool:
    """
    Whether C{protocol} (an open Autobahn server protocol) keeps its frame
    state as this module reads it, with nothing set that changes what a
    frame means: no compression, masking applied and required, no frame
    or octet logging, no timings.
    """
    for name, kind in (_RECEIVE | _SEND).items():
        if type(getattr(protocol, name, _MISSING)) is not kind:
            return False
    stats = getattr(protocol, "trafficStats", None)
    return (
        all(type(getattr(stats, name, None)) is int for name in _COUNTERS)
        and hasattr(protocol, "autoPingTimeoutCall")
        and hasattr(protocol, "_listeners")
        and hasattr(protocol, "_dataReceived")
        and protocol.websocket_version >= 13
        and protocol.applyMask
        and protocol.requireMaskedClientFrames
        and not protocol.logFrames
        and not protocol.logOctets
        and not protocol.maskServerFrames
    )


def unmask(payload: bytes, mask: bytes) -> bytes:
    """
    C{payload} XORed with the 4-byte C{mask} repeated (RFC 6455, 5.3).
    """
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


def receive(protocol: Any, data: bytes) -> None:
    """
    C{protocol.dataReceived(data)}, for a protocol L{compatible} when it
    opened: the leading common frames delivered to C{onMessage} here, the
    rest handed to Autobahn.
    """
    if (
        protocol.state != OPEN
        or protocol.data
        or protocol.current_frame is not None
        or protocol.inside_message
        or protocol._perMessageCompress is not None
        or protocol._listeners
        or (protocol.autoPingTimeoutCall and protocol.autoPingRestartOnAnyTraffic)
    ):
        protocol._dataReceived(data)
        return
    limit = _limit(protocol)
    stats = protocol.trafficStats
    size = len(data)
    # (All of it, as Autobahn counts a read of an open protocol.)
    stats.incomingOctetsWireLevel += size
    offset = 0
    while size - offset >= 6:
        b0 = data[offset]
        b1 = data[offset + 1]
        if b0 not in (TEXT_FIN, BINARY_FIN) or not b1 & MASKED:
            break
        length = b1 & 0x7F
        start = offset + 6
        if length == 126:
            start = offset + 8
            if size < start:
                break
            length = (data[offset + 2] << 8) | data[offset + 3]
            if length < 126:
                # Not the shortest encoding: a protocol violation.
                break
        elif length == 127:
            break
        end = start + length
        if end > size or length > limit:
            break
        payload = unmask(data[start:end], data[start - 4 : start])
        isBinary = b0 == BINARY_FIN
        if not isBinary and not payload.isascii():
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break
        offset = end
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        protocol.onMessage(payload, isBinary)
        if protocol.state != OPEN or protocol.data:
            break
    if offset < size:
        if protocol.state == OPEN:
            # Autobahn counts what it is given while open.
            stats.incomingOctetsWireLevel -= size - offset
        protocol._dataReceived(data[offset:] if offset else data)


def _limit(protocol: Any) -> int:
    """
    The largest payload the fast path takes: the smaller of Autobahn's
    message and frame limits (0 is none), at most L{LARGEST}.
    """
    limit: int = protocol.maxMessagePayloadSize
    frameLimit: int = protocol.maxFramePayloadSize
    if not limit or (frameLimit and frameLimit < limit):
        limit = frameLimit
    if not limit or limit > LARGEST:
        limit = LARGEST
    return limit


def frame(payload: bytes) -> bytes:
    """
    C{payload} as one unmasked, final text frame (a server's).
    """
    n = len(payload)
    if n < 126:
        return bytes((TEXT_FIN, n)) + payload
    if n <= LARGEST:
        return struct.pack("!BBH", TEXT_FIN, 126, n) + payload
    return struct.pack("!BBQ", TEXT_FIN, 127, n) + payload


def send(protocol: Any, payload: bytes) -> None:
    """
    C{protocol.sendMessage(payload)} (a text message, on an open protocol
    L{compatible} when it opened), framed here unless it needs Autobahn.
    """
    n = len(payload)
    limit = protocol.maxMessagePayloadSize
    fragment = protocol.autoFragmentSize
    if (
        protocol._perMessageCompress is not None
        or protocol.trackedTimings
        or (limit and n > limit)
        or (fragment and n > fragment)
    ):
        protocol.sendMessage(payload)
        return
    stats = protocol.trafficStats
    stats.outgoingWebSocketMessages += 1
    stats.outgoingOctetsAppLevel += n
    stats.outgoingOctetsWebSocketLevel += n
    stats.outgoingWebSocketFrames += 1
    protocol.sendData(frame(payload))
