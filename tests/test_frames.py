"""
The pool's length-prefixed pipe frames: however the byte stream is cut into
reads, L{FrameDecoder} gives back exactly the payloads framed, in order.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from taskservice._frames import FrameDecoder, frame

payloads = st.lists(st.binary(max_size=40), max_size=12)


@given(payloads, st.lists(st.integers(min_value=0, max_value=600), max_size=10))
def test_anyCutGivesThePayloadsBack(items: list[bytes], cuts: list[int]) -> None:
    """
    The frames' bytes cut anywhere (whole frames in one read, a frame split
    over reads, several frames and a part in one read) decode to the
    payloads, as C{bytes}, with nothing left buffered at the end.
    """
    stream = b"".join(frame(p) for p in items)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        got = decoder.feed(stream[start:end])
        assert all(type(p) is bytes for p in got)
        out.extend(got)
    assert out == items
    assert decoder.buffered == 0


def test_wholeFramesThenAPart() -> None:
    """
    A read of whole frames and the start of another gives the whole ones
    and keeps the start (only it) for the next read.
    """
    decoder = FrameDecoder()
    third = frame(b"third")
    assert decoder.feed(frame(b"one") + frame(b"two") + third[:6]) == [b"one", b"two"]
    assert decoder.buffered == 6
    assert decoder.feed(third[6:] + frame(b"four")) == [b"third", b"four"]
    assert decoder.buffered == 0
