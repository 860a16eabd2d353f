"""
Length-prefixed frames on the pipes between the pool and its workers.

Each frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON.
Imported by worker processes: standard library only.
"""

from __future__ import annotations

import struct

COMMANDS_FD = 3
"""The child's file descriptor for frames from the parent."""
RESULTS_FD = 4
"""The child's file descriptor for frames to the parent."""

_HEADER = struct.Struct(">I")
MAX_FRAME = (1 << 32) - 1


class FrameError(ValueError):
    """
    The byte stream is not a sequence of frames.
    """


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """
    Incremental decoder: L{feed} bytes, get back the complete payloads.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """
        Bytes of a frame begun but not complete yet.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if not buffer and type(data) is bytes:
            # The common read: whole frames, nothing buffered before them
            # (one frame for a sequential call or its answer, several under
            # load): each sliced from the read once, only a frame's
            # incomplete end is copied into the buffer.
            return self._whole(data)
        buffer += data
        frames = []
        start = 0
        available = len(buffer)
        while available - start >= 4:
            (length,) = _HEADER.unpack_from(buffer, start)
            end = start + 4 + length
            if end > available:
                break
            frames.append(bytes(buffer[start + 4 : end]))
            start = end
        if start:
            del buffer[:start]
        return frames

    def _whole(self, data: bytes) -> list[bytes]:
        available = len(data)
        if available >= 4:
            (length,) = _HEADER.unpack_from(data)
            if length + 4 == available:
                return [data[4:]]
        frames = []
        start = 0
        while available - start >= 4:
            (length,) = _HEADER.unpack_from(data, start)
            end = start + 4 + length
            if end > available:
                break
            frames.append(data[start + 4 : end])
            start = end
        if start < available:
            self._buffer += data[start:] if start else data
        return frames
