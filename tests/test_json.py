"""
Tests for L{taskservice._json}, the one JSON codec of the code base: every
line, frame and websocket message is encoded and decoded there.

They pin what docs/protocol.rst and docs/tasks.rst promise (strict UTF-8,
no NaN or infinities either way, numbers too large for a float refused,
lone surrogates round-tripping through ASCII escapes, compact UTF-8 output,
deep nesting refused as an error rather than a crash, anything that is not
JSON refused with the standard library's message), and that the codec
behaves exactly as the standard library's C{json} configured that way (the
reference below) does: the same bytes out, the same values back, the same
error messages. That includes the values the fast codec hands to C{json}
(big integers, lone surrogates, subclasses, non-string keys, small and
large floats, deep nesting).

Pure functions: no reactor, no transport.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskservice import _json
from taskservice._json import DecodeError, dumps, loads

# -- the reference: the standard library, as documented ----------------------


def referenceDumps(value: Any) -> bytes:
    """
    What the documented encoder writes: compact UTF-8 with non-ASCII as it
    is, or all in ASCII escapes when a lone surrogate cannot be UTF-8.
    """
    try:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finiteFloat(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


_referenceDecoder = json.JSONDecoder(
    parse_constant=_refuseConstant, parse_float=_finiteFloat
)


def referenceLoads(data: bytes) -> Any:
    """
    What the documented decoder returns, or the message it refuses with.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"not valid UTF-8 (byte {e.start})") from None
    try:
        return _referenceDecoder.decode(text)
    except json.JSONDecodeError as e:
        # json's "Invalid control character at" says "at" itself.
        message = e.msg.removesuffix(" at")
        raise DecodeError(f"{message} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply") from None


def outcome(function: Any, argument: Any) -> tuple[Any, ...]:
    """
    What C{function(argument)} returns (typed, so that C{1}, C{1.0} and
    C{True}, or C{0.0} and C{-0.0}, differ), or the type and message of
    what it raises.
    """
    try:
        return ("returns", typed(function(argument)))
    except (TypeError, ValueError) as e:
        return ("raises", type(e), str(e))


def typed(value: Any) -> Any:
    """
    C{value} with the type of every part spelled out, for comparisons.
    """
    if isinstance(value, float):
        return ("float", value.hex() if math.isfinite(value) else repr(value))
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def nestedList(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Name(str):
    pass


class Ratio(float):
    def __repr__(self) -> str:
        return "Ratio!"


class Count(int):
    def __repr__(self) -> str:
        return "Count!"


class Items(list[Any]):
    pass


@dataclasses.dataclass
class Point:
    x: int = 1


# -- encoding -----------------------------------------------------------------


def test_compactUTF8() -> None:
    """
    Output is compact JSON (no spaces) in UTF-8, non-ASCII characters as
    they are; tuples are arrays.
    """
    value = {"mot": "été ✓", "n": [1, 2.5, True, False, None], "t": ("x",)}
    assert dumps(value) == (
        '{"mot":"été ✓","n":[1,2.5,true,false,null],"t":["x"]}'.encode()
    )


def test_escapes() -> None:
    """
    Quotes, backslashes and control characters are escaped (so a message is
    always one line); C{/}, DEL, U+2028 and other non-ASCII are not.
    """
    text = '"\\/\b\f\n\r\t\x00\x1f\x7f\u2028é😀'
    assert dumps(text) == (
        b'"\\"\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80"'
    )


def test_everyCharacter() -> None:
    """
    Every character but the surrogates is written as the reference writes
    it, in a string and in a key.
    """
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert dumps(text) == referenceDumps(text)
    assert dumps({text: text}) == referenceDumps({text: text})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, b"0.1"),
        (2.5, b"2.5"),
        (1.0, b"1.0"),
        (0.0, b"0.0"),
        (-0.0, b"-0.0"),
        (123456789.123, b"123456789.123"),
        (1e15, b"1000000000000000.0"),
        (1e16, b"1e+16"),
        (-1.5e300, b"-1.5e+300"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        (1e-4, b"0.0001"),
        (1e-5, b"1e-05"),
        (-1e-7, b"-1e-07"),
        (1.5e-10, b"1.5e-10"),
        (5e-324, b"5e-324"),
    ],
)
def test_floats(value: float, expected: bytes) -> None:
    """
    A float is written as C{repr()} writes it, exponent included.
    """
    assert dumps(value) == expected
    assert dumps({"result": [value]}) == b'{"result":[' + expected + b"]}"


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_anyFloat(value: float) -> None:
    """
    Any finite float is written as C{repr()} writes it, and reads back as
    the same float.
    """
    assert dumps([value]) == b"[" + repr(value).encode() + b"]"
    assert typed(loads(dumps(value))) == typed(value)


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.nan],
        {"a": {"b": -math.inf}},
        (math.inf,),
        {"result": [0.5, Ratio("nan")]},
    ],
)
def test_nonFiniteRefused(value: Any) -> None:
    """
    NaN and the infinities are not JSON: encoding them raises ValueError,
    wherever they are.
    """
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps(value)


@pytest.mark.parametrize(
    "number",
    [
        0,
        -1,
        2**53 + 1,
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        2**64 - 1,
        2**64,
        2**64 + 10**18 + 1,
        19933688932870350000,
        19999999999999999999,
        -(2**64) - 1,
        2**70,
        10**80,
        -(10**4299),
        10**4299,
    ],
)
def test_bigIntegers(number: int) -> None:
    """
    Integers of any size (up to C{int()}'s 4300 digits) are written in full
    and read back as the same C{int}, never as a float, whether or not they
    fit in 64 bits.
    """
    text = str(number).encode()
    assert dumps(number) == text
    assert dumps({"id": number, "result": [number]}) == (
        b'{"id":' + text + b',"result":[' + text + b"]}"
    )
    decoded = loads(text)
    assert type(decoded) is int and decoded == number
    assert loads(b"[" + text + b"]") == [number]


def test_integersBeyondIntLimit() -> None:
    """
    An integer longer than C{int()}'s 4300-digit limit can be neither
    written (ValueError) nor read (a DecodeError that says why).
    """
    with pytest.raises(ValueError, match="4300 digits"):
        dumps([10**4300])
    with pytest.raises(DecodeError, match="4300 digits"):
        loads(b"[" + b"9" * 4301 + b"]")
    assert loads(b"9" * 4300) == int("9" * 4300)


def test_loneSurrogatesEncoded() -> None:
    """
    A message holding a lone surrogate (which cannot be UTF-8) is written
    entirely with ASCII escapes, keys included.
    """
    assert dumps({"a": "é", "b": "\ud800"}) == b'{"a":"\\u00e9","b":"\\ud800"}'
    assert dumps({"\udc00": 1}) == b'{"\\udc00":1}'
    assert dumps(["x\udfff"]) == b'["x\\udfff"]'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'"\\ud800"', "\ud800"),
        (b'"\\udfff\\ud800"', "\udfff\ud800"),
        (b'"a\\ud83d"', "a\ud83d"),
        (b'{"\\udc00":["\\ud800"]}', {"\udc00": ["\ud800"]}),
        (b'"\\ud83d\\ude00"', "😀"),
    ],
)
def test_loneSurrogatesDecoded(data: bytes, expected: Any) -> None:
    """
    A lone surrogate escape is valid JSON: it decodes to a string holding
    that surrogate, which is encoded back as it came. (A pair of escapes is
    the character it stands for.)
    """
    assert loads(data) == expected
    assert loads(dumps(expected)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({1: 2}, b'{"1":2}'),
        ({True: 1, False: 2, None: 3}, b'{"true":1,"false":2,"null":3}'),
        ({1.5: 1, 1e16: 2, -0.0: 3}, b'{"1.5":1,"1e+16":2,"-0.0":3}'),
        ({2**70: 1}, b'{"1180591620717411303424":1}'),
        ({Mode.FAST: 1, Name("k"): 2}, b'{"fast":1,"k":2}'),
        ({"a": 1, 2: [{3: None}]}, b'{"a":1,"2":[{"3":null}]}'),
    ],
)
def test_nonStringKeys(value: Any, expected: bytes) -> None:
    """
    Keys that are numbers, booleans or None are written as strings, as
    Python's json writes them.
    """
    assert dumps(value) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({(1,): 2}, TypeError),
        ({b"k": 1}, TypeError),
        ({Colour.RED: 1}, TypeError),
        ({math.nan: 1}, ValueError),
    ],
)
def test_badKeysRefused(value: Any, error: type[Exception]) -> None:
    """
    Other keys are refused, as the reference refuses them.
    """
    with pytest.raises(error):
        dumps(value)
    assert outcome(dumps, value) == outcome(referenceDumps, value)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset(),
        b"bytes",
        bytearray(b"x"),
        memoryview(b"x"),
        decimal.Decimal("1.5"),
        uuid.UUID(int=1),
        datetime.date(2020, 1, 1),
        datetime.datetime(2020, 1, 1, 12, 0),
        datetime.timedelta(seconds=1),
        Colour.RED,
        Point(),
        1j,
        object(),
        range(3),
    ],
    ids=lambda value: type(value).__name__,
)
def test_notJSONRefused(value: Any) -> None:
    """
    A value that is not JSON (docs/tasks.rst: a task result that is not
    JSON fails the call) raises TypeError with the standard library's
    message, alone or nested.
    """
    message = f"Object of type {type(value).__name__} is not JSON serializable"
    with pytest.raises(TypeError, match=f"^{message}$"):
        dumps(value)
    with pytest.raises(TypeError, match=f"^{message}$"):
        dumps({"op": "result", "cid": 7, "result": [1, {"x": value}]})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Level.HIGH, b"3"),
        (Mode.FAST, b'"fast"'),
        (Name("n"), b'"n"'),
        (Ratio(2.5), b"2.5"),
        (Count(5), b"5"),
        (True, b"true"),
        (Items([1, Items([2])]), b"[1,[2]]"),
        (collections.OrderedDict(b=1, a=2), b'{"b":1,"a":2}'),
        (collections.defaultdict(list, a=[Level.HIGH]), b'{"a":[3]}'),
    ],
)
def test_subclassesAsTheirBase(value: Any, expected: bytes) -> None:
    """
    Subclasses of str, int, float, list and dict (IntEnum, str enums,
    OrderedDict...) are written as their base type's value, whatever their
    own C{repr()}.
    """
    assert dumps(value) == expected
    assert dumps([value]) == b"[" + expected + b"]"


def test_circularRefused() -> None:
    """
    A value that contains itself is a ValueError, not a crash.
    """
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference detected"):
        dumps(loop)
    cycle: dict[str, Any] = {"a": []}
    cycle["a"].append(cycle)
    with pytest.raises(ValueError, match="Circular reference detected"):
        dumps({"result": cycle})


@pytest.mark.parametrize("depth", [1, 199, 200, 201, 202, 300])
def test_nestedEncoded(depth: int) -> None:
    """
    Values nested a few hundred levels deep are written in full.
    """
    assert dumps(nestedList(depth)) == b"[" * depth + b"]" * depth
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    assert dumps(value) == b'{"a":' * depth + b"1" + b"}" * depth


def test_tooDeepToEncode() -> None:
    """
    A value nested too deeply to encode is a ValueError, not a
    RecursionError.
    """
    with pytest.raises(ValueError, match="nested too deeply to encode"):
        dumps(nestedList(100_000))


# -- decoding -----------------------------------------------------------------


def test_decodedTypes() -> None:
    """
    Objects are dicts, arrays lists; a number with a fraction or an exponent
    is a float, any other an int (C{-0} too); escapes are decoded.
    """
    data = b'{"a":[1,2.5,-0,-0.0,1e2,1E-2,true,false,null],"s":"\\u00e9\\n\\/\\\\"}'
    assert typed(loads(data)) == typed(
        {"a": [1, 2.5, 0, -0.0, 100.0, 0.01, True, False, None], "s": "é\n/\\"}
    )


def test_duplicateKeys() -> None:
    """
    A key given twice keeps its last value, in the place of its first.
    """
    decoded = loads(b'{"a":1,"b":2,"a":3}')
    assert decoded == {"a": 3, "b": 2}
    assert list(decoded) == ["a", "b"]


def test_whitespace() -> None:
    """
    JSON's four whitespace characters are allowed around values and
    punctuation.
    """
    assert loads(b' \t\r\n{ "a" :\t[ 1 ,\r\n2 ] }\r\n ') == {"a": [1, 2]}


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nonFiniteConstantsRefused(constant: bytes) -> None:
    """
    Python's extensions NaN, Infinity and -Infinity are not JSON; the error
    names them (docs/protocol.rst shows C{"NaN is not valid JSON"}).
    """
    with pytest.raises(DecodeError) as caught:
        loads(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":[' + constant + b"]}")
    assert str(caught.value) == f"{constant.decode()} is not valid JSON"


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (b"1e400", "the number 1e400 is out of range"),
        (b"-1e400", "the number -1e400 is out of range"),
        (b"1.7976931348623159e308", "the number 1.7976931348623159e3 is out of range"),
        (b"1" + b"0" * 400 + b".0", "the number 10000000000000000000 is out of range"),
    ],
)
def test_outOfRangeRefused(number: bytes, message: str) -> None:
    """
    A number too large for a float is refused (docs/protocol.rst shows
    C{"the number 1e400 is out of range"}), not read as an infinity.
    """
    with pytest.raises(DecodeError) as caught:
        loads(b"[" + number + b"]")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (b"1e-400", 0.0),
        (b"-1e-400", -0.0),
        (b"1" + b"0" * 5000 + b"e-5000", 1.0),
        (b"123456789012345678901234567890.5", 1.2345678901234568e29),
        (b"1.7976931348623157e308", 1.7976931348623157e308),
        (b"2.2250738585072011e-308", 2.225073858507201e-308),
        (b"0.30000000000000004", 0.30000000000000004),
    ],
)
def test_floatsRounded(number: bytes, expected: float) -> None:
    """
    Other numbers with a fraction or an exponent read as the nearest float,
    as C{float()} reads them (too small ones as zero).
    """
    assert typed(loads(number)) == typed(expected)


@pytest.mark.parametrize(
    ("data", "byte"),
    [
        (b"\xff\xfe", 0),
        (b'["ok","\xff"]', 7),
        (b'"\xed\xa0\x80"', 1),
        (b'"\xc0\x80"', 1),
        (b'"\xf4\x90\x80\x80"', 1),
        (b'"\xc3"', 1),
        (b'{"\xc3\xa9":1,"k\x80":2}', 10),
    ],
    ids=["bom16", "ff", "surrogate", "overlong", "beyond", "truncated", "key"],
)
def test_invalidUTF8Refused(data: bytes, byte: int) -> None:
    """
    Bytes that are not UTF-8 (encoded surrogates and overlong forms
    included) are refused with the offset of the first bad byte, as
    docs/protocol.rst shows.
    """
    with pytest.raises(DecodeError) as caught:
        loads(data)
    assert str(caught.value) == f"not valid UTF-8 (byte {byte})"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_otherEncodingsRefused(encoding: str) -> None:
    """
    UTF-8 with a byte order mark, UTF-16 and UTF-32 are not guessed at:
    they are refused.
    """
    with pytest.raises(DecodeError):
        loads('{"jsonrpc":"2.0","id":1}'.encode(encoding))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "Expecting value at line 1 column 1"),
        (b" \n", "Expecting value at line 2 column 1"),
        (b"[1,]", "Expecting value at line 1 column 4"),
        (
            b'{"a":1,}',
            "Expecting property name enclosed in double quotes at line 1 column 8",
        ),
        (
            b"{'a':1}",
            "Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (b'{"a" 1}', "Expecting ':' delimiter at line 1 column 6"),
        (b"[1,2", "Expecting ',' delimiter at line 1 column 5"),
        (b"[1] x", "Extra data at line 1 column 5"),
        (b"[1]\x00", "Extra data at line 1 column 4"),
        (b"01", "Extra data at line 1 column 2"),
        (b"1.", "Extra data at line 1 column 2"),
        (b".5", "Expecting value at line 1 column 1"),
        (b"+1", "Expecting value at line 1 column 1"),
        (b"nul", "Expecting value at line 1 column 1"),
        (b'"\\x41"', "Invalid \\escape at line 1 column 2"),
        (b'"\\u12"', "Invalid \\uXXXX escape at line 1 column 3"),
        (b'"a\tb"', "Invalid control character at line 1 column 3"),
        (b'"\x00"', "Invalid control character at line 1 column 2"),
        (b"\x0c[1]", "Expecting value at line 1 column 1"),
        (b"\xc2\xa0[1]", "Expecting value at line 1 column 1"),
        (b"\xef\xbb\xbf[1]", "Expecting value at line 1 column 1"),
    ],
)
def test_notJSONDecoded(data: bytes, message: str) -> None:
    """
    Anything that is not exactly one JSON document is a DecodeError (a
    ValueError) saying what and where, as the parse error's data.
    """
    with pytest.raises(DecodeError) as caught:
        loads(data)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("depth", [1, 199, 200, 201, 202, 300])
def test_nestedDecoded(depth: int) -> None:
    """
    Documents nested a few hundred levels deep are decoded.
    """
    assert loads(b"[" * depth + b"]" * depth) == nestedList(depth)
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    assert loads(b'{"a":' * depth + b"1" + b"}" * depth) == value


def test_manyContainers() -> None:
    """
    A document of many shallow containers is decoded, however many.
    """
    records = [{"id": n, "tags": ["a"], "score": n / 7} for n in range(1000)]
    assert loads(json.dumps(records).encode()) == records


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000],
    ids=["open", "closed", "objects"],
)
def test_tooDeepToDecode(data: bytes) -> None:
    """
    Nesting deeper than the decoder's recursion allows is a DecodeError,
    not a crash.
    """
    with pytest.raises(DecodeError, match=r"^nested too deeply$"):
        loads(data)


def test_decodeErrorIsValueError() -> None:
    """
    Callers may catch DecodeError, or ValueError.
    """
    assert issubclass(_json.DecodeError, ValueError)


# -- the same as the reference, whatever the input ----------------------------

_SURROGATE_TEXTS = ["\ud800", "\udfff", "a\ud83d", "\udc00\ud800", "é\udfffz"]
_texts = st.text(max_size=8) | st.sampled_from(_SURROGATE_TEXTS)
_ODD = [
    math.nan,
    math.inf,
    1e-5,
    -3e-9,
    1e16,
    2.5e300,
    2**64,
    -(2**70),
    -(10**4299),
    Level.HIGH,
    Mode.FAST,
    Colour.RED,
    Name("n"),
    Ratio(0.5),
    Count(3),
    Items([1]),
    collections.OrderedDict(a=1),
    uuid.UUID(int=7),
    datetime.date(2020, 1, 1),
    decimal.Decimal(1),
    Point(),
    {1, 2},
    b"x",
]
_keys = _texts | st.sampled_from([1, 1.5, 1e16, True, None, 2**70, Mode.FAST, (1,)])
_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _texts
    | st.sampled_from(_ODD),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(_texts, children, max_size=4)
        | st.dictionaries(_keys, children, max_size=2)
    ),
    max_leaves=10,
)


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(_values)
def test_encodesAsReference(value: Any) -> None:
    """
    Whatever the value, C{dumps} writes the reference's bytes or raises the
    reference's error.
    """
    assert outcome(dumps, value) == outcome(referenceDumps, value)


_jsonValues: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_texts, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(derandomize=True, max_examples=500, deadline=None)
@given(_jsonValues)
def test_roundTrip(value: Any) -> None:
    """
    Any JSON value, lone surrogates and big integers included, decodes back
    from its encoding as the same value, of the same types.
    """
    assert typed(loads(dumps(value))) == typed(value)


_FRAGMENTS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b'"',
    b"\\",
    b"\\u",
    b"d800",
    b"0",
    b"1",
    b"-",
    b".",
    b"e",
    b"E+",
    b" ",
    b"\t",
    b"\n",
    b"\x0b",
    b"\x00",
    b"\x7f",
    b"\xc3\xa9",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"true",
    b"null",
    b"NaN",
    b"Infinity",
    b"1e400",
    b"99999999999999999999",
    b"19999999999999999999",
    b'"a"',
    b'"\\ud800"',
]
_documents = st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map(b"".join) | (
    _jsonValues.map(referenceDumps)
)


@settings(derandomize=True, max_examples=2000, deadline=None)
@given(_documents)
def test_decodesAsReference(data: bytes) -> None:
    """
    Whatever the bytes, C{loads} returns the reference's value (of the same
    types) or raises a DecodeError with the reference's message.
    """
    assert outcome(loads, data) == outcome(referenceLoads, data)
