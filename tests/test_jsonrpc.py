"""
Tests for L{taskservice._jsonrpc} (parsing and encoding lines) and the wire
side of L{taskservice.errors} (L{fromWireError}, L{toWireError}).

Pure functions: no reactor, no transport.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError

from taskservice import _json, _jsonrpc
from taskservice._jsonrpc import Batch, Invalid, Request, parseLine
from taskservice.errors import (
    Cancelled,
    ErrorCode,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    ParseError,
    TaskFailed,
    TaskServiceError,
    TimedOut,
    TooLarge,
    Unauthorised,
    Unavailable,
    WorkerLost,
    fromWireError,
    toWireError,
)
from taskservice.wire import DEFAULT_MAX_BATCH


def encode(message: Any) -> bytes:
    """
    A test message as one line's bytes, without the delimiter.
    """
    return json.dumps(message).encode("utf-8")


def assertInvalid(parsed: object, code: ErrorCode, requestId: Any = None) -> Invalid:
    """
    C{parsed} is an L{Invalid} with an error of C{code} (whose message is
    not empty) and the echoed C{requestId}.
    """
    assert isinstance(parsed, Invalid), parsed
    assert parsed.error.code == code, parsed.error
    assert isinstance(parsed.error.message, str) and parsed.error.message
    assert parsed.id == requestId
    return parsed


# -- valid requests -----------------------------------------------------------


def test_requestByPosition() -> None:
    """
    An array of params becomes the positional arguments.
    """
    parsed = parseLine(b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}')
    assert parsed == Request(method="add", args=(1, 2), kwargs={}, id=1)
    assert isinstance(parsed, Request)
    assert not parsed.notification
    assert not parsed.seed


def test_requestByName() -> None:
    """
    An object of params becomes the keyword arguments.
    """
    parsed = parseLine(
        b'{"jsonrpc":"2.0","id":"x","method":"add","params":{"a":1,"b":2}}'
    )
    assert parsed == Request(method="add", args=(), kwargs={"a": 1, "b": 2}, id="x")


def test_requestWithoutParams() -> None:
    """
    Params may be omitted: the call has no arguments.
    """
    parsed = parseLine(b'{"jsonrpc":"2.0","id":1,"method":"$/stats"}')
    assert parsed == Request(method="$/stats", id=1)


def test_notification() -> None:
    """
    A request without an id is a notification: no id, C{notification} set.
    """
    parsed = parseLine(b'{"jsonrpc":"2.0","method":"echo","params":["hi"]}')
    assert isinstance(parsed, Request)
    assert parsed.notification
    assert parsed.id is None
    assert parsed.args == ("hi",)


@pytest.mark.parametrize("requestId", ["abc", "", 0, 7, -3, 2**70, 1.5, None], ids=repr)
def test_validIds(requestId: Any) -> None:
    """
    Strings, numbers (integers and fractions) and null are valid ids, kept
    as they were; a null id is a request, not a notification.
    """
    parsed = parseLine(
        encode({"jsonrpc": "2.0", "id": requestId, "method": "echo", "params": [1]})
    )
    assert isinstance(parsed, Request)
    assert parsed.id == requestId
    assert type(parsed.id) is type(requestId)
    assert not parsed.notification


@pytest.mark.parametrize("requestId", [True, False, {"a": 1}, [1], []], ids=repr)
def test_invalidIds(requestId: Any) -> None:
    """
    Booleans, objects and arrays are not ids: -32600, answered with a null
    id (the given one cannot be echoed).
    """
    parsed = parseLine(
        encode({"jsonrpc": "2.0", "id": requestId, "method": "echo", "params": [1]})
    )
    assertInvalid(parsed, ErrorCode.INVALID_REQUEST, None)


def test_crlfTolerated() -> None:
    """
    A line that ended in C{\\r\\n} (its C{\\r} left on) parses like one that
    ended in C{\\n}.
    """
    plain = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["x"]}'
    assert parseLine(plain + b"\r") == parseLine(plain)


def test_crlfOnInvalidJSON() -> None:
    """
    The C{\\r} is stripped before decoding, so it never appears as the
    cause of an error.
    """
    parsed = assertInvalid(parseLine(b"{\r"), ErrorCode.PARSE_ERROR)
    assert "\r" not in str(parsed.error.data)


# -- invalid requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "method": "echo", "params": [1]},
        {"jsonrpc": "1.0", "id": 1, "method": "echo", "params": [1]},
        {"jsonrpc": 2.0, "id": 1, "method": "echo", "params": [1]},
        {"jsonrpc": None, "id": 1, "method": "echo", "params": [1]},
    ],
    ids=["missing", "1.0", "number", "null"],
)
def test_jsonrpcMissingOrWrong(message: dict[str, Any]) -> None:
    """
    C{"jsonrpc"} must be exactly the string C{"2.0"}: otherwise -32600,
    echoing the id.
    """
    assertInvalid(parseLine(encode(message)), ErrorCode.INVALID_REQUEST, 1)


@pytest.mark.parametrize(
    "method", [None, 5, ["echo"], {"name": "echo"}, True], ids=repr
)
def test_methodNotAString(method: Any) -> None:
    """
    A missing or non-string C{"method"} is -32600, echoing the id.
    """
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": "m", "params": []}
    if method is not None:
        message["method"] = method
    assertInvalid(parseLine(encode(message)), ErrorCode.INVALID_REQUEST, "m")


@pytest.mark.parametrize("params", ["a string", 3, 1.5, None, True], ids=repr)
def test_paramsOfWrongType(params: Any) -> None:
    """
    C{"params"} that are neither an array nor an object (a string, a number,
    null, a boolean) are -32600, echoing the id.
    """
    parsed = parseLine(
        encode({"jsonrpc": "2.0", "id": 9, "method": "echo", "params": params})
    )
    parsed = assertInvalid(parsed, ErrorCode.INVALID_REQUEST, 9)
    assert "params" in str(parsed.error.data)


def test_nonUTF8() -> None:
    """
    Bytes that are not UTF-8 are a parse error (-32700) whose data says so.
    """
    parsed = parseLine(b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}')
    parsed = assertInvalid(parsed, ErrorCode.PARSE_ERROR)
    assert "UTF-8" in str(parsed.error.data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1}',
        b"{",
        b"nonsense",
        b'{"jsonrpc":"2.0"} trailing',
        b"{'single': 'quotes'}",
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}',
    ],
    ids=["unbalanced", "brace", "word", "trailing", "quotes", "utf8-bom"],
)
def test_invalidJSON(data: bytes) -> None:
    """
    Anything that is not one JSON document is -32700 with a detail.
    """
    parsed = assertInvalid(parseLine(data), ErrorCode.PARSE_ERROR)
    assert parsed.error.data


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nonFiniteConstantsRefused(constant: str) -> None:
    """
    Python's JSON extensions NaN, Infinity and -Infinity are not JSON.
    """
    data = f'{{"jsonrpc":"2.0","id":1,"method":"echo","params":[{constant}]}}'
    parsed = assertInvalid(parseLine(data.encode()), ErrorCode.PARSE_ERROR)
    assert constant.lstrip("-") in str(parsed.error.data)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_deeplyNested(opener: bytes) -> None:
    """
    Nesting deep enough to exhaust the decoder's recursion is a parse error,
    not a crash.
    """
    parsed = assertInvalid(parseLine(opener * 100_000), ErrorCode.PARSE_ERROR)
    assert parsed.error.data


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16Refused(encoding: str) -> None:
    """
    JSON in UTF-16 or UTF-32 (with or without a BOM) is not guessed at: it
    is refused as a parse error.
    """
    text = '{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}'
    assertInvalid(parseLine(text.encode(encoding)), ErrorCode.PARSE_ERROR)


@pytest.mark.parametrize("data", [b"1", b'"echo"', b"null", b"true", b"2.5"])
def test_scalar(data: bytes) -> None:
    """
    A JSON scalar is valid JSON but not a request: -32600.
    """
    assertInvalid(parseLine(data), ErrorCode.INVALID_REQUEST)


def test_emptyBatch() -> None:
    """
    An empty array is -32600 (not an empty batch answered with nothing).
    """
    assertInvalid(parseLine(b"[]"), ErrorCode.INVALID_REQUEST)


def test_mixedBatch() -> None:
    """
    A batch is parsed item by item: valid requests and notifications next to
    invalid items, each invalid one with its own error and id.
    """
    parsed = parseLine(
        encode(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["a"]},
                {"jsonrpc": "2.0", "method": "echo", "params": ["n"]},
                {"jsonrpc": "2.0", "id": 2, "method": 5},
                {"jsonrpc": "1.0", "id": 3, "method": "echo"},
                7,
                [],
            ]
        )
    )
    assert isinstance(parsed, Batch)
    first, notification, badMethod, badVersion, scalar, array = parsed.items
    assert first == Request(method="echo", args=("a",), id=1)
    assert isinstance(notification, Request) and notification.notification
    assertInvalid(badMethod, ErrorCode.INVALID_REQUEST, 2)
    assertInvalid(badVersion, ErrorCode.INVALID_REQUEST, 3)
    assertInvalid(scalar, ErrorCode.INVALID_REQUEST)
    assertInvalid(array, ErrorCode.INVALID_REQUEST)


def test_batchOverTheLimit() -> None:
    """
    A batch of more than C{maxBatch} elements (default
    L{DEFAULT_MAX_BATCH}) is one -32004 with the limit in C{data},
    whatever its elements; at the limit it is a batch.
    """
    item = {"jsonrpc": "2.0", "id": 1, "method": "echo"}
    parsed = assertInvalid(
        parseLine(encode([item] * (DEFAULT_MAX_BATCH + 1))),
        ErrorCode.TOO_LARGE,
    )
    assert parsed.error.data == {"limit": DEFAULT_MAX_BATCH}
    assert isinstance(parseLine(encode([item] * DEFAULT_MAX_BATCH)), Batch)
    parsed = assertInvalid(parseLine(b"[1, 2, 3]", maxBatch=2), ErrorCode.TOO_LARGE)
    assert parsed.error.data == {"limit": 2}


@pytest.mark.parametrize(
    "line",
    [
        b' [{"jsonrpc":"2.0","id":1,"method":"e"} , 7 ,[]]\r',
        b'[{"jsonrpc":"2.0","id":1,"method":"e","params":["\\ud800"]}]',
        b'[{"jsonrpc":"2.0","id":1,"method":"e","params":[1e400]}]',
        b'[{"jsonrpc":"2.0","id":1,"method":"e","params":["\xff"]}]',
        b"[NaN]",
        b"[1,]",
        b"[" * 300 + b"]" * 300,
        b"\x0c[1]",
    ],
)
def test_batchSplitAsDecodedWhole(line: bytes) -> None:
    """
    A batch line, whose elements are found by a quick scan and decoded one
    by one, parses exactly as the whole line decoded at once would (the
    same requests, or the same parse error).
    """
    data = line[:-1] if line.endswith(b"\r") else line
    try:
        whole = _json.loads(data)
    except _json.DecodeError as e:
        assertInvalid(parsed := parseLine(line), ErrorCode.PARSE_ERROR)
        assert isinstance(parsed, Invalid)
        assert parsed.error.data == str(e) or parsed.error.data.startswith(str(e))
        return
    parsed = parseLine(line)
    assert isinstance(parsed, Batch), parsed
    # (repr: the errors of invalid items are exceptions, which compare by
    # identity.)
    assert repr(parsed) == repr(
        Batch(tuple(_jsonrpc._parseObject(item, inBatch=True) for item in whole))
    )


def test_carriageReturnExplained() -> None:
    """
    Two requests separated by a C{\\r} alone are one line that is not
    JSON: the parse error says that C{\\r} alone does not end a line.
    """
    line = encode({"jsonrpc": "2.0", "id": 1, "method": "a"})
    parsed = assertInvalid(parseLine(line + b"\r" + line), ErrorCode.PARSE_ERROR)
    assert parsed.error.data == (
        "Extra data at line 1 column 44 (lines end with \\n: a \\r alone"
        " does not end one)"
    )


# -- the Workerman FAQ dialect ------------------------------------------------


def test_seedWithArgsObject() -> None:
    """
    The FAQ's own form, C{{"function": ..., "args": {...}}}, is a seed
    request with keyword arguments.
    """
    parsed = parseLine(
        b'{"function":"send_mail","args":{"from":"xxx","to":"xxx","contents":"xxx"}}'
    )
    assert parsed == Request(
        method="send_mail",
        kwargs={"from": "xxx", "to": "xxx", "contents": "xxx"},
        seed=True,
    )
    assert isinstance(parsed, Request)
    assert not parsed.notification


def test_seedWithArgsArray() -> None:
    """
    Seed C{"args"} as an array are positional arguments.
    """
    parsed = parseLine(b'{"function":"add","args":[1,2]}')
    assert parsed == Request(method="add", args=(1, 2), seed=True)


def test_seedWithoutArgs() -> None:
    """
    Seed C{"args"} may be missing: no arguments.
    """
    parsed = parseLine(b'{"function":"$/stats"}')
    assert parsed == Request(method="$/stats", seed=True)


@pytest.mark.parametrize("args", [None, "x", 3], ids=repr)
def test_seedWithArgsOfWrongType(args: Any) -> None:
    """
    Seed C{"args"} that are not an array or an object are -32600.
    """
    parsed = parseLine(encode({"function": "echo", "args": args}))
    parsed = assertInvalid(parsed, ErrorCode.INVALID_REQUEST)
    assert "args" in str(parsed.error.data)


@pytest.mark.parametrize("function", [None, 5, ["echo"], {"f": 1}], ids=repr)
def test_seedFunctionNotAString(function: Any) -> None:
    """
    A seed C{"function"} that is not a string is -32600.
    """
    parsed = parseLine(encode({"function": function, "args": {}}))
    parsed = assertInvalid(parsed, ErrorCode.INVALID_REQUEST)
    assert "function" in str(parsed.error.data)


def test_functionWithJsonrpcIsNotSeed() -> None:
    """
    An object with C{"jsonrpc"} is JSON-RPC even if it has C{"function"}.
    """
    parsed = parseLine(
        b'{"jsonrpc":"2.0","id":1,"function":"echo","method":"add","params":[1,2]}'
    )
    assert parsed == Request(method="add", args=(1, 2), id=1)


def test_functionInsideBatchIsNotSeed() -> None:
    """
    The seed dialect has no batches: a C{"function"} item in an array is an
    invalid JSON-RPC request.
    """
    parsed = parseLine(b'[{"function":"echo","args":["x"]}]')
    assert isinstance(parsed, Batch)
    (item,) = parsed.items
    assertInvalid(item, ErrorCode.INVALID_REQUEST)


# -- properties -----------------------------------------------------------------


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_anyBytesParse(data: bytes) -> None:
    """
    parseLine never raises, whatever the bytes: it always returns a
    Request, an Invalid or a Batch.
    """
    assert isinstance(parseLine(data), Request | Invalid | Batch)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.one_of(_json_values, st.lists(_json_values, max_size=3)))
def test_anyJSONAnswerable(message: Any) -> None:
    """
    Whatever valid JSON arrives, every resulting Invalid can be encoded as
    an error response line echoing the id it carries.
    """
    parsed = parseLine(encode(message))
    items = parsed.items if isinstance(parsed, Batch) else (parsed,)
    for item in items:
        if isinstance(item, Invalid):
            assert _jsonrpc.line(_jsonrpc.errorObject(item.id, item.error))


@pytest.mark.parametrize(
    "rawId", [b"1e400", b"-1e400", b'"\\ud800"'], ids=["inf", "-inf", "surrogate"]
)
def test_idsCanBeEchoed(rawId: bytes) -> None:
    """
    Whatever id parseLine keeps (on a Request or an Invalid) can be echoed in
    a response line. (Regression: 1e400 used to decode to an infinite id and
    a lone surrogate escape to a str UTF-8 cannot carry.)
    """
    for data in (
        b'{"jsonrpc":"2.0","id":' + rawId + b',"method":"echo","params":[1]}',
        b'{"jsonrpc":"1.0","id":' + rawId + b"}",
    ):
        parsed = parseLine(data)
        assert isinstance(parsed, Request | Invalid)
        _jsonrpc.line(_jsonrpc.resultObject(parsed.id, None))


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"])
def test_outOfRangeNumbers(number: bytes) -> None:
    """
    A number too large for a float is refused as a parse error rather than
    read as an infinity that could never be encoded back.
    """
    parsed = parseLine(
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[' + number + b"]}"
    )
    parsed = assertInvalid(parsed, ErrorCode.PARSE_ERROR)
    assert "range" in str(parsed.error.data)


def test_loneSurrogatesRoundTrip() -> None:
    """
    A lone surrogate escape (valid JSON, not valid UTF-8 once decoded) is
    encoded back with ASCII escapes, so it reaches the client as it came.
    """
    parsed = parseLine(b'{"jsonrpc":"2.0","id":"\\ud800","method":"echo","params":[1]}')
    assert isinstance(parsed, Request)
    assert parsed.id == "\ud800"
    data = _jsonrpc.line(_jsonrpc.resultObject(parsed.id, "x\udfff"))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"jsonrpc": "2.0", "id": "\ud800", "result": "x\udfff"}


def test_lineRefusesTooDeep() -> None:
    """
    A value nested too deeply to encode is a ValueError (which callers
    handle), not a RecursionError.
    """
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(ValueError):
        _jsonrpc.line(_jsonrpc.resultObject(1, value))


# -- encoding -------------------------------------------------------------------


def test_resultObject() -> None:
    """
    A result response has exactly jsonrpc, id and result.
    """
    assert _jsonrpc.resultObject(3, {"sent": 1}) == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"sent": 1},
    }


def test_errorObjectWithData() -> None:
    """
    An error response carries code, message and data.
    """
    error = Overloaded("overloaded", {"retryAfter": 1.0})
    assert _jsonrpc.errorObject("a", error) == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": -32003, "message": "overloaded", "data": {"retryAfter": 1.0}},
    }


def test_errorObjectWithoutData() -> None:
    """
    An error without data has no C{"data"} member at all.
    """
    assert _jsonrpc.errorObject(None, Cancelled()) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32800, "message": "cancelled"},
    }


def test_lineIsCompactUTF8() -> None:
    """
    A line is compact JSON (no spaces), non-ASCII kept as UTF-8 rather than
    escaped, ending in one C{\\n}.
    """
    data = _jsonrpc.line(_jsonrpc.resultObject(1, {"mot": "été", "n": [1, 2]}))
    assert (
        data == '{"jsonrpc":"2.0","id":1,"result":{"mot":"été","n":[1,2]}}\n'.encode()
    )
    assert data.count(b"\n") == 1


def test_lineEscapesNewlines() -> None:
    """
    A newline inside a string is escaped, so a message is always one line.
    """
    data = _jsonrpc.line(_jsonrpc.resultObject(1, "a\nb\r\n"))
    assert data == b'{"jsonrpc":"2.0","id":1,"result":"a\\nb\\r\\n"}\n'


def test_lineRefusesNonFinite() -> None:
    """
    NaN and infinities are not encoded (they are not JSON).
    """
    with pytest.raises(ValueError):
        _jsonrpc.line(_jsonrpc.resultObject(1, float("nan")))
    with pytest.raises(ValueError):
        _jsonrpc.line(_jsonrpc.resultObject(1, float("inf")))


def test_lineRoundTrip() -> None:
    """
    A line encoded by L{_jsonrpc.line} parses back to the same request.
    """
    data = _jsonrpc.line(_jsonrpc.requestObject(5, "add", {"a": "ü", "b": [1.5]}))
    assert data.endswith(b"\n")
    assert parseLine(data[:-1]) == Request(
        method="add", kwargs={"a": "ü", "b": [1.5]}, id=5
    )


def test_requestObjectWithoutParams() -> None:
    """
    A request without params has no C{"params"} member.
    """
    assert _jsonrpc.requestObject(1, "$/stats") == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "$/stats",
    }


def test_notificationObject() -> None:
    """
    A notification has no id.
    """
    assert _jsonrpc.notificationObject("$/progress", {"id": 1, "done": 1}) == {
        "jsonrpc": "2.0",
        "method": "$/progress",
        "params": {"id": 1, "done": 1},
    }


# -- errors on the wire ---------------------------------------------------------

ALL_ERRORS: list[tuple[type[TaskServiceError], int]] = [
    (ParseError, -32700),
    (InvalidRequest, -32600),
    (MethodNotFound, -32601),
    (InvalidParams, -32602),
    (InternalError, -32603),
    (TaskFailed, -32000),
    (TimedOut, -32001),
    (WorkerLost, -32002),
    (Overloaded, -32003),
    (TooLarge, -32004),
    (Unauthorised, -32005),
    (Unavailable, -32006),
    (Cancelled, -32800),
]


@pytest.mark.parametrize(
    ("cls", "code"), ALL_ERRORS, ids=[cls.__name__ for cls, _ in ALL_ERRORS]
)
def test_fromWireErrorByCode(cls: type[TaskServiceError], code: int) -> None:
    """
    Each documented code comes back as its own class, with the message and
    data it was sent with.
    """
    error = fromWireError({"code": code, "message": "said so", "data": {"k": [1]}})
    assert type(error) is cls
    assert error.code == code
    assert error.message == "said so"
    assert error.data == {"k": [1]}


@pytest.mark.parametrize(
    ("cls", "code"), ALL_ERRORS, ids=[cls.__name__ for cls, _ in ALL_ERRORS]
)
def test_wireRoundTrip(cls: type[TaskServiceError], code: int) -> None:
    """
    toWire and fromWireError are inverses for every error class.
    """
    original = cls("m", {"x": 1})
    wire = json.loads(json.dumps(original.toWire()))
    assert wire == {"code": code, "message": "m", "data": {"x": 1}}
    back = fromWireError(wire)
    assert type(back) is cls
    assert (back.message, back.data) == ("m", {"x": 1})


def test_fromWireErrorDefaultMessage() -> None:
    """
    A missing or non-string message falls back to the class's default.
    """
    assert fromWireError({"code": -32003}).message == "overloaded"
    assert fromWireError({"code": -32800, "message": 5}).message == "cancelled"


def test_fromWireErrorUnknownCode() -> None:
    """
    An unknown code is kept, as a plain TaskServiceError with its message
    and data, and goes back on the wire unchanged.
    """
    wire = {"code": -31999, "message": "custom", "data": {"why": "because"}}
    error = fromWireError(wire)
    assert type(error) is TaskServiceError
    assert error.code == -31999
    assert error.message == "custom"
    assert error.data == {"why": "because"}
    assert error.toWire() == wire
    # The class attribute is untouched.
    assert TaskServiceError.code == ErrorCode.INTERNAL_ERROR


@pytest.mark.parametrize("error", [None, "oops", [1], 5], ids=repr)
def test_fromWireErrorMalformed(error: Any) -> None:
    """
    An error member that is not an object becomes an InternalError that
    keeps what was received.
    """
    result = fromWireError(error)
    assert type(result) is InternalError
    assert result.data == {"error": error}


def test_taskFailedFields() -> None:
    """
    A TaskFailed from the wire exposes the remote type and message.
    """
    error = fromWireError(
        {
            "code": -32000,
            "message": "ValueError: no",
            "data": {"type": "ValueError", "message": "no"},
        }
    )
    assert isinstance(error, TaskFailed)
    assert (error.remoteType, error.remoteMessage) == ("ValueError", "no")


def test_toWireErrorPassesTaskServiceErrors() -> None:
    """
    A TaskServiceError is its own wire error (the same object).
    """
    error = TimedOut("timed out", {"timeout": 3})
    assert toWireError(error) is error


def test_toWireErrorCancelled() -> None:
    """
    A Deferred's CancelledError is shown as Cancelled (-32800).
    """
    error = toWireError(CancelledError())
    assert isinstance(error, Cancelled)
    assert error.toWire() == {"code": -32800, "message": "cancelled"}


@pytest.mark.parametrize(
    "exception",
    [RuntimeError("secret detail"), KeyError("k"), ZeroDivisionError()],
    ids=lambda e: type(e).__name__,
)
def test_toWireErrorInternal(exception: BaseException) -> None:
    """
    Any other exception is an InternalError (-32603) that does not leak its
    details onto the wire.
    """
    error = toWireError(exception)
    assert isinstance(error, InternalError)
    wire = error.toWire()
    assert wire["code"] == -32603
    assert "secret" not in json.dumps(wire)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":7,"method":"echo","params":["xxxx', 7),
        (b'{"id":"a-1","jsonrpc":"2.0","method":"echo"', "a-1"),
        (b' { "jsonrpc" : "2.0" , "id" : -3 , "method"', -3),
        (b'{"jsonrpc":"2.0","method":"echo","id":7', None),
        (b'{"params":{"id":7},"id":8', None),
        (b'{"id":true,', None),
        (b"garbage", None),
    ],
)
def test_leadingId(prefix: bytes, expected: object) -> None:
    """
    The id of a line too long to parse is recovered only when it comes
    first (as our clients write it), never from inside params.
    """
    from taskservice._jsonrpc import leadingId

    assert leadingId(prefix) == expected
