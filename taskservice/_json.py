"""
The JSON codec seam: every encode and decode in taskservice goes through here.

Strict both ways: input must be UTF-8 (never UTF-16/32 guessed from the
bytes); NaN, Infinity and numbers too large for a float are refused; output
is compact UTF-8.

Two codecs, one behaviour. The standard library's C{json}, configured as
below, defines what this module does: every value it is given and every
error it raises. msgspec does the common case, several times faster (a
small request line decodes in about a fifth of the time, a small response
encodes in about a third), and only where it is known to give exactly the
same result; anything else goes to C{json}, which then answers, or raises
the error it always raised.

Decoding, msgspec returns what C{json} returns for every document it
accepts (arbitrary integers stay exact C{int}s, floats are correctly
rounded, duplicate keys keep the last value), and it refuses all that
C{json} refuses; C{json} then decodes the few documents msgspec refuses
but C{json} takes (those with lone surrogate escapes such as
C{"\\ud800"}), and says why the others are not JSON. Documents that might
nest deeper than L{_FAST_DEPTH} (those with more opening brackets) also go
to C{json}, so how deep the decoder goes is as before.

Encoding, msgspec also takes values C{json} refuses (bytes, sets,
datetimes, UUIDs, enums, dataclasses, non-string keys...), writes NaN and
infinities as C{null}, and writes some floats differently (C{1e16} and
C{1e-7} where C{json} writes C{1e+16} and C{1e-07}). So it only gets a
value made of exactly C{dict} (with C{str} keys), C{list}, C{tuple},
C{str}, C{int}, C{bool}, C{None} and floats that it writes as C{repr()}
does (L{_fastEncodes}); C{json} encodes the rest (subclasses, non-string
keys, strings with lone surrogates, integers of more than 4300 digits...)
or refuses it as before.

msgspec rather than orjson, on measurements of our messages: both are fast
and well kept, and both need that check before encoding (orjson too
encodes enums and UUIDs, and writes NaN as C{null}). But orjson decodes an
integer beyond 64 bits as a float, silently, and nests to a fixed 1024
levels where C{json} stops at the recursion limit: with the input scanned
for long numbers first, it decoded a request line more than twice as slowly
as msgspec. orjson is lighter to import (a worker's private memory grows by
about 0.5 MiB with it, 1.4 MiB with msgspec). msgspec before 0.19 decoded
some 65-bit integers wrongly, hence the lower bound in setup.cfg.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

import msgspec

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

_fastEncoder = msgspec.json.Encoder()
_fastDecoder = msgspec.json.Decoder()
_arrayDecoder = msgspec.json.Decoder(list[msgspec.Raw])


class _ResultFrame(msgspec.Struct):
    op: str
    cid: int
    result: msgspec.Raw


_resultDecoder = msgspec.json.Decoder(_ResultFrame)


class _Request(msgspec.Struct):
    jsonrpc: str
    method: str
    id: int | float | str | msgspec.UnsetType | None = msgspec.UNSET
    params: list[Any] | dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    timeout: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_requestDecoder = msgspec.json.Decoder(_Request)

_FAST_DEPTH = 200
"""
How deep msgspec may nest: deeper values and documents go to C{json}, whose
limit is the interpreter's recursion limit, as it always was.
"""
_SCALARS = frozenset({str, int, bool, type(None)})
_STR = frozenset({str})


class DecodeError(ValueError):
    """
    The bytes are not one valid JSON document. C{str()} says why.
    """


def _fastEncodes(value: Any, depth: int = 0) -> bool:
    """
    Whether msgspec writes C{value} byte for byte as C{json} does: it holds
    nothing but C{dict} with C{str} keys, C{list}, C{tuple}, C{str}, C{int},
    C{bool}, C{None} (exactly these types: the two treat subclasses such as
    enums differently) and floats that msgspec writes as C{repr()} does, at
    most L{_FAST_DEPTH} levels deep.

    Strings with lone surrogates and integers too long for C{int.__str__}
    pass: msgspec raises for them, and C{json} then decides.
    """
    kind = type(value)
    children: Collection[Any]
    if kind is dict:
        if not _STR.issuperset(map(type, value)):
            return False
        children = value.values()
    elif kind is list or kind is tuple:
        children = value
    elif kind is float:
        # NaN and the infinities fail both comparisons: msgspec would write
        # them as null. Below 1e-4 and from 1e16 on, repr() uses an
        # exponent, which msgspec writes another way.
        number: float = value
        return number == 0.0 or 1e-4 <= abs(number) < 1e16
    else:
        return kind in _SCALARS
    if depth == _FAST_DEPTH or len(children) > 16:
        # Long runs of scalars (and the last level allowed) in one pass.
        if _SCALARS.issuperset(map(type, children)):
            return True
        if depth == _FAST_DEPTH:
            return False
    for child in children:
        if type(child) not in _SCALARS and not _fastEncodes(child, depth + 1):
            return False
    return True


def dumps(value: Any) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON. Raises L{TypeError} or
    L{ValueError} for values JSON cannot carry.

    Strings holding lone surrogates (which C{\\ud800} escapes in the input
    can produce) cannot be UTF-8: such a value is encoded with ASCII escapes
    instead, so it round-trips.
    """
    try:
        if _fastEncodes(value):
            return _fastEncoder.encode(value)
    except (msgspec.EncodeError, ValueError, RecursionError):
        # Lone surrogates, integers of more than 4300 digits, or a stack
        # already deep: json decides.
        pass
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return _asciiEncoder.encode(value).encode("ascii")
    except RecursionError:
        raise ValueError("nested too deeply to encode") from None


def dumpsDecoded(value: Any) -> bytes:
    """
    Encode C{value}, made only of what L{loads} returns (and tuples), for
    a peer that decodes it with L{loads}: msgspec, with no check first.
    Its bytes may differ from L{dumps}'s (C{1e16} for C{1e+16}), never
    the value they decode to; what msgspec refuses (lone surrogates,
    integers beyond its range) goes to L{dumps}.
    """
    try:
        return _fastEncoder.encode(value)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError):
        return dumps(value)


def loads(data: bytes) -> Any:
    """
    Decode one JSON document from UTF-8 bytes, raising L{DecodeError}.
    """
    # Nesting deeper than _FAST_DEPTH takes more opening brackets than that.
    if len(data) <= _FAST_DEPTH or data.count(b"[") + data.count(b"{") <= _FAST_DEPTH:
        try:
            return _fastDecoder.decode(data)
        except (msgspec.DecodeError, ValueError, RecursionError):
            # Not JSON, or one of the few documents only json takes: json
            # decides, and says why.
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"not valid UTF-8 (byte {e.start})") from None
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as e:
        # Some of json's messages end in " at" already ("Invalid control
        # character at").
        where = f"at line {e.lineno} column {e.colno}"
        raise DecodeError(f"{e.msg.removesuffix(' at')} {where}") from None
    except ValueError as e:
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply") from None


def splitArray(data: bytes) -> list[msgspec.Raw] | None:
    """
    The elements of the JSON array C{data}, each still encoded (decode one
    with C{loads(bytes(element))}), found without decoding them: a few
    milliseconds for a 10 MB array of small objects, where decoding it
    takes hundreds. L{None} when C{data} is not an array or the scan cannot
    tell (not JSON, nested too deeply, ...): L{loads} then decides, and
    says why.
    """
    try:
        elements = _arrayDecoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return None
    return elements


def resultFrame(payload: bytes) -> tuple[int, bytes] | None:
    """
    The call id and the result, still JSON, of a worker's C{result} frame
    (C{{"op": "result", "cid": N, "result": ...}}), found without decoding
    the result; L{None} for any other frame, or one the quick scan cannot
    read (then decode it whole with L{loads}).
    """
    if not payload.startswith(b'{"op":"result"'):
        return None
    try:
        found = _resultDecoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return None
    if found.op != "result" or type(found.cid) is not int:
        return None
    return found.cid, bytes(found.result)


class _CallFrame(msgspec.Struct, omit_defaults=True):
    op: str
    cid: int
    task: str
    args: Any
    kwargs: Any
    tb: bool = False
    job: Any = None


def callPayload(
    cid: int,
    task: str,
    args: Any,
    kwargs: Any,
    tb: bool = False,
    job: Any = None,
    decoded: bool = False,
) -> bytes:
    """
    The payload of a C{call} frame to a worker: C{{"op": "call", "cid",
    "task", "args", "kwargs"}}, with C{"tb": true} and C{"job"} only when
    given. With C{decoded} (the arguments hold only what L{loads} returns)
    encoded as L{dumpsDecoded} encodes that dict, without building it;
    else as L{dumps} does, raising what it raises.
    """
    if decoded:
        try:
            frame = _CallFrame("call", cid, task, args, kwargs, tb, job)
            return _fastEncoder.encode(frame)
        except (
            msgspec.EncodeError,
            TypeError,
            ValueError,
            OverflowError,
            RecursionError,
        ):
            pass
    message: dict[str, Any] = {
        "op": "call",
        "cid": cid,
        "task": task,
        "args": args,
        "kwargs": kwargs,
    }
    if tb:
        message["tb"] = True
    if job is not None:
        message["job"] = job
    return dumpsDecoded(message) if decoded else dumps(message)


NO_ID: Any = msgspec.UNSET
"""The id L{plainRequest} gives a request that has none (a notification)."""


def plainRequest(data: bytes) -> tuple[str, Any, Any] | None:
    """
    The method, id (L{NO_ID} if none) and params (L{NO_ID} if none) of a
    JSON-RPC 2.0 request line in its common form: an object with
    C{"jsonrpc": "2.0"} first, a string method, an id that is a string, a
    number or null, params that are an array or an object, and no
    C{"timeout"}. L{None} for anything else, which L{loads} then decodes
    whole (and the caller checks): the values, when found, are those
    L{loads} gives.
    """
    if not data.startswith(b'{"jsonrpc":"2.0"') or (
        len(data) > _FAST_DEPTH and data.count(b"[") + data.count(b"{") > _FAST_DEPTH
    ):
        return None
    try:
        found = _requestDecoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return None
    if found.jsonrpc != "2.0" or found.timeout is not msgspec.UNSET:
        return None
    return found.method, found.id, found.params
