"""
The JSON codec seam: every encode and decode in taskservice goes through here.

Strict both ways: input must be UTF-8 (never UTF-16/32 guessed from the
bytes); NaN, Infinity and numbers too large for a float are refused; output
is compact UTF-8.
"""

from __future__ import annotations

import json
import math
from typing import Any

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_asciiEncoder = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, separators=(",", ":")
)


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finiteFloat(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuseConstant, parse_float=_finiteFloat)


class DecodeError(ValueError):
    """
    The bytes are not one valid JSON document. C{str()} says why.
    """


def dumps(value: Any) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON. Raises L{TypeError} or
    L{ValueError} for values JSON cannot carry.

    Strings holding lone surrogates (which C{\\ud800} escapes in the input
    can produce) cannot be UTF-8: such a value is encoded with ASCII escapes
    instead, so it round-trips.
    """
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return _asciiEncoder.encode(value).encode("ascii")
    except RecursionError:
        raise ValueError("nested too deeply to encode") from None


def loads(data: bytes) -> Any:
    """
    Decode one JSON document from UTF-8 bytes, raising L{DecodeError}.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"not valid UTF-8 (byte {e.start})") from None
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as e:
        raise DecodeError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply") from None
