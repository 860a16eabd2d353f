"""
JSON-RPC 2.0 over lines, and the Workerman FAQ dialect: parsing and encoding
only, no I/O.

L{parseLine} turns one line into a L{Request}, an L{Invalid} (something to
answer with an error) or a L{Batch}; the C{*Object} functions build response
objects and L{line} encodes one for the wire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskservice import _json
from taskservice.errors import InvalidRequest, ParseError, TaskServiceError, TooLarge
from taskservice.wire import DEFAULT_MAX_BATCH, NO_OPTIONS, CallOptions

Id = str | int | float | None
_NO_ID: Any = object()


@dataclass(slots=True)
class Request:
    """
    One call. Built once per call and never changed (not C{frozen}: a frozen
    dataclass takes five times as long to build, 2 us of the parent's time
    per call).

    @ivar id: the request id, echoed in the response.
    @ivar notification: C{True} when the request had no id: it runs, and
        nothing is answered.
    @ivar seed: C{True} for the Workerman FAQ dialect (C{{"function": ...,
        "args": ...}}), answered with a bare result line.
    @ivar options: how the call is to run (L{CallOptions}; our extension:
        a C{"timeout"} member beside C{"method"}), shared L{NO_OPTIONS}
        when it sets none.
    """

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    id: Id = None
    notification: bool = False
    seed: bool = False
    options: CallOptions = NO_OPTIONS


@dataclass(frozen=True, slots=True)
class Invalid:
    """
    Input that must be answered with C{error} (and C{id}, when one was read).
    """

    error: TaskServiceError
    id: Id = None
    seed: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """
    A JSON-RPC batch: its parts are answered together, in one array.
    """

    items: tuple[Request | Invalid, ...]


def parseLine(
    data: bytes, maxBatch: int = DEFAULT_MAX_BATCH
) -> Request | Invalid | Batch:
    """
    Parse one line (without its delimiter; a trailing C{\\r} is tolerated).

    A batch of more than C{maxBatch} elements is refused whole (-32004,
    C{{"limit": maxBatch}}) before any element is decoded, so its size
    costs one quick scan of the line.
    """
    if data.endswith(b"\r"):
        data = data[:-1]
    plain = _json.plainRequest(data)
    if plain is not None:
        # The common case, decoded into just what a Request holds.
        method, requestId, params = plain
        notification = requestId is _json.NO_ID
        if type(params) is list:
            return Request(
                method,
                tuple(params),
                {},
                None if notification else requestId,
                notification,
            )
        return Request(
            method,
            (),
            {} if params is _json.NO_ID else params,
            None if notification else requestId,
            notification,
        )
    first = data[:1]
    if first == b"[" or (first != b"{" and data.lstrip()[:1] == b"["):
        batch = _parseBatch(data, maxBatch)
        if batch is not None:
            return batch
    try:
        message = _json.loads(data)
    except _json.DecodeError as e:
        return Invalid(ParseError("parse error", _explained(str(e), data)))
    if isinstance(message, list):
        # (Only when the quick scan could not split it.)
        if not message:
            return Invalid(InvalidRequest("invalid request", "empty batch"))
        if len(message) > maxBatch:
            return _batchTooLarge(len(message), maxBatch)
        return Batch(tuple(_parseObject(item, inBatch=True) for item in message))
    return _parseObject(message, inBatch=False)


def _parseBatch(data: bytes, maxBatch: int) -> Batch | Invalid | None:
    """
    A batch line, its elements decoded one by one; L{None} when the line
    must be decoded whole (it is not valid JSON, say: that says why).
    """
    elements = _json.splitArray(data)
    if elements is None:
        return None
    if not elements:
        return Invalid(InvalidRequest("invalid request", "empty batch"))
    if len(elements) > maxBatch:
        return _batchTooLarge(len(elements), maxBatch)
    try:
        messages = [_json.loads(bytes(element)) for element in elements]
    except _json.DecodeError:
        return None
    return Batch(tuple(_parseObject(item, inBatch=True) for item in messages))


def _batchTooLarge(size: int, maxBatch: int) -> Invalid:
    return Invalid(
        TooLarge(
            f"batch of {size} requests is over the limit of {maxBatch}",
            {"limit": maxBatch},
        )
    )


def _explained(reason: str, data: bytes) -> str:
    """
    The decoder's C{reason}, and why when the line holds a C{\\r}: a
    C{\\r} alone does not end a line.
    """
    if b"\r" in data:
        return f"{reason} (lines end with \\n: a \\r alone does not end one)"
    return reason


def _parseObject(message: Any, inBatch: bool) -> Request | Invalid:
    if not isinstance(message, dict):
        return Invalid(
            InvalidRequest("invalid request", "a request must be a JSON object")
        )
    if "function" in message and "jsonrpc" not in message and not inBatch:
        return _parseSeed(message)

    requestId = message.get("id", _NO_ID)
    if requestId is not _NO_ID and not validId(requestId):
        return Invalid(
            InvalidRequest("invalid request", "id must be a string, number or null")
        )
    echoId = None if requestId is _NO_ID else requestId
    if message.get("jsonrpc") != "2.0":
        return _invalid('"jsonrpc" must be "2.0"', echoId)
    method = message.get("method")
    if not isinstance(method, str):
        return _invalid('"method" must be a string', echoId)
    params = message.get("params", ())
    args, kwargs, problem = _splitParams(params, '"params"')
    if problem:
        return _invalid(problem, echoId)
    timeout = message.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not timeout > 0
    ):
        return _invalid('"timeout" must be a positive number of seconds', echoId)
    return Request(
        method=method,
        args=args,
        kwargs=kwargs,
        id=echoId,
        notification=requestId is _NO_ID,
        options=NO_OPTIONS if timeout is None else CallOptions(timeout=timeout),
    )


def _invalid(detail: str, requestId: Id) -> Invalid:
    return Invalid(InvalidRequest("invalid request", detail), requestId)


def _parseSeed(message: dict[str, Any]) -> Request | Invalid:
    function = message["function"]
    if not isinstance(function, str):
        return Invalid(
            InvalidRequest("invalid request", '"function" must be a string'), seed=True
        )
    args, kwargs, problem = _splitParams(message.get("args", ()), '"args"')
    if problem:
        return Invalid(InvalidRequest("invalid request", problem), seed=True)
    return Request(method=function, args=args, kwargs=kwargs, seed=True)


def _splitParams(
    params: Any, name: str
) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
    if isinstance(params, list | tuple):
        return tuple(params), {}, None
    if isinstance(params, dict):
        return (), params, None
    return (), {}, f"{name} must be an array or an object"


def validId(value: Any) -> bool:
    """
    Whether C{value} may be a request id: a string, a number, or null.
    """
    return value is None or (
        isinstance(value, str | int | float) and not isinstance(value, bool)
    )


_LEADING_ID = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*'
    rb'(-?\d{1,18}|"[^"\\]{0,128}")\s*[,}]'
)


def leadingId(prefix: bytes) -> Id:
    """
    The id of a request line that is too long to parse, when it comes first
    (after an optional C{"jsonrpc":"2.0"}), as L{TaskClient} and the
    JavaScript client write it; else L{None}.
    """
    match = _LEADING_ID.match(prefix)
    if match is None:
        return None
    try:
        value = _json.loads(match.group(1))
    except _json.DecodeError:
        return None
    return value if validId(value) else None


def resultObject(requestId: Id, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": requestId, "result": result}


def resultLine(requestId: Id, result: bytes) -> bytes:
    """
    The encoded response to C{requestId} with C{result}, a value's JSON
    (as a worker wrote it): what C{_json.dumps(resultObject(...))} makes
    of the value, without decoding it.
    """
    if type(requestId) is int:
        encodedId = str(requestId).encode()
    else:
        encodedId = _json.dumps(requestId)
    return b'{"jsonrpc":"2.0","id":' + encodedId + b',"result":' + result + b"}"


def errorObject(requestId: Id, error: TaskServiceError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": requestId, "error": error.toWire()}


def notificationObject(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def requestObject(requestId: Id, method: str, params: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": requestId, "method": method}
    if params is not None:
        request["params"] = params
    return request


def line(message: Any) -> bytes:
    """
    Encode one message as a line, delimiter included.
    """
    return _json.dumps(message) + b"\n"
