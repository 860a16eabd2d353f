"""
Hostile input sweep (issue 5): property-based tests that feed the task
server, the websocket gateway and the line framing whatever a broken or
hostile peer could send, and check that two rules hold in every example:
bad input gets its named error (docs/protocol, "Errors") and costs nothing
else (the connection and the other calls carry on); and no call is lost
silently (each is answered, exactly once, or was dropped by a documented
rule).

Everything runs in memory and on fake clocks: the task server over
L{StringTransport}s, the gateway over iosim with a real L{TaskClient} talking
to a real L{TaskServerFactory}, and in both a real L{ProcessPool} on
L{FakeProcessReactor} whose fake workers run the tasks of L{tests.tasks}
in-process (L{FakeProcessReactor.runAllCalls}).

The hostile input: raw bytes; mutations of valid requests; JSON text of
random shape (with JSON-RPC members of every type, numbers too large for a
float or for C{int()}, lone surrogate escapes, control characters, invalid
UTF-8); very long lines; deep nesting near the decoder's recursion limit;
embedded C{\\r} and C{\\0}; all of it cut into chunks at random places, and
interleaved with a well-behaved client on another connection.

Determinism: every test runs with C{derandomize=True} and no example
database. CI then runs the same examples on every run and machine (for a
given Hypothesis and Python version): a failure reproduces by running the
test again, no run depends on C{.hypothesis/} state left by an earlier one,
and every run takes the same time. The price, the same examples every time,
is paid back by exploring on demand: with
C{TASKSERVICE_HOSTILE_EXAMPLES=N} each property draws N random examples
instead (and prints a reproduction blob when one fails).

Deep nesting makes an example's outcome depend on how much of the recursion
limit the stack below the test already uses, which differs between
Hypothesis's phases: the tests measure the decoder's limit in each example
(L{_deepestParsed}), draw nothing whose range depends on it (L{_at}), and
accept for such lines either of the outcomes a stack depth can give.

The bugs the sweep found (fixed in 7e3ecf0) each have a plain regression
test at the end of this file, with the exact input that showed it.

The fake workers run the tasks of L{tests.tasks} through L{SAFE_TASKS}:
hostile calls of C{die} or C{wait_for} must not end or block this process.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop

from taskservice import _json, _jsonrpc
from taskservice._gatewayprotocol import GatewayProtocol
from taskservice._jsonrpc import Invalid, Request
from taskservice._lines import DEFAULT_MAX_LINE
from taskservice._task import Registry, TaskSpec
from taskservice.gateway import DEFAULT_MAX_MESSAGE
from taskservice.pool import ProcessPool
from taskservice.server import DEFAULT_MAX_IN_FLIGHT, PROGRESS
from taskservice.testing import FakeProcessReactor, GatewayRig
from taskservice.wire import DEFAULT_MAX_BATCH
from tests.tasks import steps as tasks_steps
from tests.test_lines import TOO_LONG, connected
from tests.test_server import Client, Server

TASKS = "tests.tasks"
_case = SynchronousTestCase()
ANY: Any = ...
"""Stands for "any value" in an expected outcome."""

# -- settings -----------------------------------------------------------------

_EXPLORE = int(os.environ.get("TASKSERVICE_HOSTILE_EXAMPLES", "0") or 0)


def _settings(examples: int) -> settings:
    """
    Fixed examples for CI (see the module docstring), or C{N} random ones
    with C{TASKSERVICE_HOSTILE_EXAMPLES=N}. No deadline: an example's time
    depends on its size (a byte-by-byte chunking of a 20 KB stream is slow
    by design), and the file's total is what is budgeted.
    """
    return settings(
        max_examples=_EXPLORE or examples,
        derandomize=not _EXPLORE,
        database=None,
        deadline=None,
        print_blob=bool(_EXPLORE),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- the tasks, made safe to run in this process ------------------------------


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is not run in-process by the hostile tests")

    return refuse


def _fewSteps(total: Any) -> Any:
    if not isinstance(total, int) or total > 10:
        raise ValueError("the hostile tests run steps() with at most 10 steps")
    return tasks_steps(total)


def _answerable(function: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{function}, failing as the real worker's C{succeed} does when its
    result cannot be sent as JSON (L{FakeWorker} would raise instead).
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        _json.dumps({"op": "result", "cid": 0, "result": result})
        return result

    return run


def _safeTasks() -> Registry:
    """
    The tasks of L{tests.tasks} for the fake workers to run in-process:
    those that would end this process (C{die}), block it (C{wait_for}),
    write files (C{record}) or loop for long (C{steps}) with hostile
    arguments raise instead. The pool under test still uses the real
    registry for names and signatures.
    """
    real = Registry.fromModules([TASKS])
    replacements: dict[str, Callable[..., Any]] = {
        "die": _refuse("die"),
        "wait_for": _refuse("wait_for"),
        "record": _refuse("record"),
        "steps": _fewSteps,
    }
    return Registry(
        [
            TaskSpec(
                name=name,
                function=_answerable(replacements.get(name, spec.function)),
                timeout=spec.timeout,
            )
            for name, spec in real.items()
        ],
        modules=real.modules,
    )


SAFE_TASKS = _safeTasks()


# -- depth of nesting near the decoder's limit --------------------------------


def _nested(depth: int, requestId: str = "probe", seed: bool = False) -> bytes:
    """
    An C{echo} request whose one argument is C{depth} nested arrays.
    """
    value = b"[" * depth + b"]" * depth
    if seed:
        return b'{"function":"echo","args":[' + value + b"]}"
    return (
        b'{"jsonrpc":"2.0","id":'
        + json.dumps(requestId).encode()
        + b',"method":"echo","params":['
        + value
        + b"]}"
    )


def _deepestParsed() -> int:
    """
    The deepest nesting L{_jsonrpc.parseLine} decodes when called from here:
    the protocols under test parse a few frames deeper than their test, so
    their limit is a little lower (or higher, under the gateway's autobahn).

    Measured anew in each example: how much of the recursion limit the
    stack below the test uses differs between Hypothesis's phases (C calls
    count too, so counting frames does not tell), and a depth measured in
    one phase would be off by a level or two in another.
    """
    (last,) = _lastDeepest
    if _decodes(last) and not _decodes(last + 1):
        return last
    high = 256
    while _decodes(high):
        high *= 2
    low = high // 2 if high > 256 else 1
    while low < high:
        middle = (low + high + 1) // 2
        if _decodes(middle):
            low = middle
        else:
            high = middle - 1
    _lastDeepest[0] = low
    return low


_lastDeepest = [1]
"""The last measurement: usually still right (the stack is as deep)."""


def _decodes(depth: int) -> bool:
    return isinstance(_jsonrpc.parseLine(_nested(depth)), Request)


# -- JSON values and well-behaved calls ---------------------------------------

_SURROGATE_TEXTS = ["\ud800", "\udfff", "a\ud83d", "\udc00\ud800", "é\udfffz"]
_texts = st.text(max_size=12) | st.sampled_from(_SURROGATE_TEXTS)
_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**64) - 1, 10**80])
    | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_texts, children, max_size=3)
    ),
    max_leaves=6,
)


@dataclass(frozen=True)
class Call:
    """
    A well-formed call and the outcome it must have.

    @ivar outcome: C{("result", value)}, C{("error", code, data)} (C{data}
        may be L{ANY}), or C{("stats", key)}: a result object holding
        C{key}.
    @ivar progress: how many C{$/progress} notifications come first.
    """

    method: str
    params: Any
    outcome: tuple[Any, ...]
    progress: int = 0

    def request(self, requestId: Any) -> dict[str, Any]:
        return _jsonrpc.requestObject(requestId, self.method, self.params)


@functools.cache
def _goodCalls(statsKey: str) -> st.SearchStrategy[Call]:
    return st.one_of(
        st.builds(lambda v: Call("echo", [v], ("result", v)), _values),
        st.builds(
            lambda a, b: Call("add", {"b": b, "a": a}, ("result", a + b)),
            st.integers(),
            st.integers(),
        ),
        st.builds(
            # Not _texts: "\ud800" + "\udfff" is a surrogate pair, which
            # JSON cannot tell from the character it stands for.
            lambda a, b: Call("add", [a, b], ("result", a + b)),
            st.text(max_size=12),
            st.text(max_size=12),
        ),
        st.builds(
            lambda n: Call("steps", [n], ("result", n), progress=n),
            st.integers(0, 3),
        ),
        st.builds(
            lambda m: Call(
                "boom",
                [m],
                ("error", -32000, {"type": "ValueError", "message": m}),
            ),
            _texts,
        ),
        st.just(Call("$/stats", None, ("stats", statsKey))),
        st.just(Call("nosuch", [], ("error", -32601, ANY))),
        st.builds(lambda v: Call("echo", [v, v], ("error", -32602, ANY)), _values),
        st.just(
            Call("$/cancelRequest", {"id": "never-sent"}, ("result", None)),
        ),
    )


# -- hostile JSON text --------------------------------------------------------

_NUMBER_LITERALS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"-0",
    b"-0.0",
    b"0e0",
    b"1E+308",
    b"1.7976931348623157e309",
    b"123456789012345678901234567890.5",
    b"9" * 4300,
    b"-" + b"9" * 4300,
    b"9" * 4301,
    b"1" + b"0" * 5000 + b"e-5000",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
    b"NaN",
    b"-Infinity",
]
_STRING_LITERALS = [
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    b'"a\\u2028b"',
    b'"\\x41"',
    b'"\xff"',
    b'"\xc3"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"\x00"',
    b'"\r"',
    b'"\t"',
    b'"\\"',
    b'"\\u12"',
    b'"$/stats"',
    b'"$/cancelRequest"',
]
_RPC_KEYS = [
    "jsonrpc",
    "id",
    "method",
    "params",
    "timeout",
    "function",
    "args",
    "result",
    "error",
    "onlyIfQueued",
]
_METHODS = [
    "echo",
    "add",
    "boom",
    "steps",
    "short",
    "nosuch",
    "die",
    "wait_for",
    "record",
    "$/stats",
    "$/cancelRequest",
    "$/progress",
    "$/nosuch",
    "$/",
    "",
    "Echo",
    "echo ",
]
_HOSTILE_IDS = ["h:0", "h:1", "h:2", 0, 1, 1.0, -0.0, 2**70, 1e300, "\ud800", "", None]
_PARAM_NAMES = ["a", "b", "value", "total", "message", "id", "onlyIfQueued", "x"]
_TIMEOUTS = [
    b"0",
    b"-1",
    b"0.05",
    b"0.5",
    b"30",
    b"1e308",
    b"1e-400",
    b"99999999999999999999",
    b'"5"',
    b"true",
    b"null",
    b"[]",
]


def _dumpText(value: Any, ascii: bool) -> bytes:
    """
    JSON text for C{value}; without C{ascii}, lone surrogates go out as the
    (invalid UTF-8) bytes C{surrogatepass} gives them.
    """
    return json.dumps(value, ensure_ascii=ascii).encode("utf-8", "surrogatepass")


_stringText = st.builds(_dumpText, _texts, st.booleans()) | st.sampled_from(
    _STRING_LITERALS
)
_scalarText = st.one_of(
    st.sampled_from([b"null", b"true", b"false"]),
    st.integers().map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.sampled_from(_NUMBER_LITERALS),
    _stringText,
)
_keyText = st.sampled_from(_RPC_KEYS).map(lambda k: _dumpText(k, True)) | _stringText
_jsonText: st.SearchStrategy[bytes] = st.recursive(
    _scalarText,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]"),
        st.lists(st.tuples(_keyText, children), max_size=4).map(
            lambda kvs: b"{" + b",".join(k + b":" + v for k, v in kvs) + b"}"
        ),
    ),
    max_leaves=8,
)
_idText = st.one_of(
    st.sampled_from(_HOSTILE_IDS).map(lambda i: _dumpText(i, True)),
    st.sampled_from([b"1e400", b"true", b"[1]", b"{}", b'"\\ud800"', b"9" * 400]),
    _scalarText,
)
_methodText = st.sampled_from(_METHODS).map(lambda m: _dumpText(m, True)) | _jsonText
_paramsText = st.one_of(
    st.lists(_jsonText, max_size=3).map(lambda xs: b"[" + b",".join(xs) + b"]"),
    st.lists(
        st.tuples(
            st.sampled_from(_PARAM_NAMES).map(lambda k: _dumpText(k, True)), _jsonText
        ),
        max_size=3,
    ).map(lambda kvs: b"{" + b",".join(k + b":" + v for k, v in kvs) + b"}"),
    _scalarText,
)


@st.composite
def _rpcText(draw: st.DrawFn) -> bytes:
    """
    An object with JSON-RPC members of random presence, order and type.
    """
    members = []
    if draw(st.integers(0, 9)):
        version = draw(st.just(b'"2.0"') | _scalarText)
        members.append(b'"jsonrpc":' + version)
    if draw(st.booleans()):
        members.append(b'"id":' + draw(_idText))
    if draw(st.integers(0, 9)):
        members.append(b'"method":' + draw(_methodText))
    if draw(st.integers(0, 3)):
        members.append(b'"params":' + draw(_paramsText))
    if not draw(st.integers(0, 5)):
        members.append(b'"timeout":' + draw(st.sampled_from(_TIMEOUTS)))
    if not draw(st.integers(0, 7)):
        members.append(draw(_keyText) + b":" + draw(_jsonText))
    return b"{" + b",".join(draw(st.permutations(members))) + b"}"


@st.composite
def _cancelText(draw: st.DrawFn) -> bytes:
    """
    C{$/cancelRequest} naming one of the hostile ids (or anything).
    """
    params = [b'"id":' + draw(_idText)]
    if draw(st.booleans()):
        params.append(b'"onlyIfQueued":' + draw(_scalarText))
    head = b'{"jsonrpc":"2.0",'
    if draw(st.booleans()):
        head += b'"id":' + draw(_idText) + b","
    return head + b'"method":"$/cancelRequest","params":{' + b",".join(params) + b"}}"


@st.composite
def _seedText(draw: st.DrawFn) -> bytes:
    """
    The Workerman FAQ's form, with random members.
    """
    members = [b'"function":' + draw(_methodText)]
    if draw(st.integers(0, 3)):
        members.append(b'"args":' + draw(_paramsText))
    if not draw(st.integers(0, 5)):
        members.append(draw(_keyText) + b":" + draw(_jsonText))
    return b"{" + b",".join(draw(st.permutations(members))) + b"}"


_batchText = st.lists(
    _rpcText() | _cancelText() | _jsonText | _seedText(), min_size=0, max_size=4
).map(lambda xs: b"[" + b",".join(xs) + b"]")


@st.composite
def _validRequest(draw: st.DrawFn) -> bytes:
    """
    A valid request (with a hostile id), notification, seed or batch line:
    the source that mutations start from.
    """
    method = draw(st.sampled_from(["echo", "add", "boom", "steps", "$/stats"]))
    params = draw(
        st.lists(_values, max_size=2)
        | st.dictionaries(st.sampled_from(_PARAM_NAMES), _values, max_size=2)
    )
    message: Any = {"jsonrpc": "2.0", "method": method, "params": params}
    kind = draw(st.sampled_from(["request", "notification", "seed", "batch"]))
    if kind == "request":
        message["id"] = draw(st.sampled_from(_HOSTILE_IDS))
    elif kind == "seed":
        message = {"function": method, "args": params}
    elif kind == "batch":
        message = [message, {**message, "id": draw(st.sampled_from(_HOSTILE_IDS))}]
    return _json.dumps(message)


_CALL_IDS = ["h:0", "h:1", 1, 1.0, None]
"""Few ids, so that calls share them: duplicates in flight, cancels that
find their target."""


_methodAndParams = st.one_of(
    st.tuples(st.just("echo"), st.tuples(_values).map(list)),
    st.tuples(st.just("add"), st.lists(st.integers(), min_size=2, max_size=2)),
    st.tuples(st.just("steps"), st.tuples(st.integers(0, 3)).map(list)),
    st.tuples(st.just("boom"), st.lists(_texts, max_size=1)),
    st.tuples(st.just("short"), st.just([])),
    st.tuples(st.just("$/stats"), st.just([])),
    st.tuples(st.sampled_from(["nosuch", "$/nosuch"]), st.just([])),
    st.tuples(
        st.just("$/cancelRequest"),
        st.fixed_dictionaries(
            {"id": st.sampled_from(_CALL_IDS)},
            optional={"onlyIfQueued": st.booleans()},
        ),
    ),
)


@st.composite
def _wellFormedCall(draw: st.DrawFn, inBatch: bool = False) -> Any:
    """
    A well-formed call whose outcome is not foreseen: it shares its id
    with others, may carry a deadline that expires, may be cancelled (or
    be a cancel), may be a notification.
    """
    method, params = draw(_methodAndParams)
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if draw(st.integers(0, 3)):
        message["id"] = draw(st.sampled_from(_CALL_IDS))
    if draw(st.booleans()):
        message["timeout"] = draw(st.sampled_from([0.05, 0.3, 0.3, 30]))
    if not inBatch and not draw(st.integers(0, 5)):
        return {"function": method, "args": params}
    return message


_wellFormedText = st.one_of(
    _wellFormedCall(),
    st.lists(_wellFormedCall(inBatch=True), min_size=1, max_size=4),
).map(_json.dumps)
_burst = st.lists(_wellFormedText, min_size=2, max_size=8).map(b"\n".join)
"""Well-formed calls, one a line, sharing their few ids: duplicates,
cancels and deadlines meet."""


_INSERTS = [
    b"\r",
    b"\0",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b'"',
    b"\\",
    b"{",
    b"[",
    b"]",
    b",",
    b":",
    b"\\ud800",
    b"1e400",
    b"9" * 4301,
    b" ",
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """
    A valid request line with a few bytes flipped, inserted, deleted,
    duplicated or cut off.
    """
    data = bytearray(draw(_validRequest()))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "cut"]))
        if kind == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[where:where] = draw(
                st.sampled_from(_INSERTS) | st.binary(min_size=1, max_size=3)
            )
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif kind == "repeat":
            data[where:where] = data[where : where + draw(st.integers(1, 16))]
        else:
            del data[where:]
    return bytes(data)


# -- items of a hostile stream ------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """
    Hostile bytes, followed by C{end} (which may be nothing: the next item
    then continues the same line).
    """

    data: bytes
    end: bytes


@dataclass(frozen=True)
class Ok:
    """
    A well-formed request, on a line of its own, with its own id.
    """

    call: Call
    end: bytes


@dataclass(frozen=True)
class OkSeed:
    """
    A well-formed Workerman-dialect call, answered with the bare C{{"seed":
    n}} in order.
    """

    end: bytes


@dataclass(frozen=True)
class Long:
    """
    An C{echo} request on a line of the limit plus C{over} bytes (not
    counting its end): served when C{over <= 0}, reported too long after.
    """

    over: int
    end: bytes


@dataclass(frozen=True)
class Deep:
    """
    An C{echo} request (or seed) with its argument nested C{offset} levels
    past the deepest the decoder takes at the test's own stack depth.
    """

    offset: int
    seed: bool
    end: bytes


Item = Raw | Ok | OkSeed | Long | Deep

_ends = st.sampled_from([b"\n", b"\r\n", b"", b"\r", b"\n\n", b" \t\n", b"\0\n"])
_lineEnds = st.sampled_from([b"\n", b"\r\n"])


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """
    One of the strategies, each drawn with its weight (C{one_of} draws
    evenly, and merges repeated strategies).
    """
    return _pick([strategy for weight, strategy in choices for _ in range(weight)])


@st.composite
def _pick(draw: st.DrawFn, table: Sequence[st.SearchStrategy[Any]]) -> Any:
    return draw(table[draw(st.integers(0, len(table) - 1))])


_rawData = _weighted(
    (4, _burst),
    (2, _wellFormedText),
    (1, st.binary(max_size=48)),
    (1, _rpcText()),
    (1, _cancelText()),
    (1, _seedText()),
    (1, _batchText),
    (1, _jsonText),
    (3, _mutated()),
)


@functools.cache
def _items(low: int, high: int, statsKey: str) -> st.SearchStrategy[Item]:
    """
    Items of a hostile stream; L{Deep} ones C{low} to C{high} levels from
    the deepest decodable nesting.
    """
    return _weighted(
        (8, st.builds(Raw, _rawData, _ends)),
        (1, st.builds(Ok, _goodCalls(statsKey), _lineEnds)),
        (1, st.builds(OkSeed, _lineEnds)),
        (
            1,
            st.builds(
                Long,
                st.sampled_from([-2, -1, 0, 1, 2]) | st.integers(3, 20_000),
                _lineEnds,
            ),
        ),
        (1, st.builds(Deep, st.integers(low, high), st.booleans(), _lineEnds)),
    )


@dataclass
class Rendered:
    """
    A rendered hostile stream (or message list) and what it must produce.

    @ivar entries: each item's bytes and end.
    @ivar ok: the calls of L{Ok} and served L{Long} items, by id.
    @ivar okSeeds: the bare replies the L{OkSeed} items must get, in order.
    @ivar deep: the lines (without their end) of L{Deep} items: whether
        the code under test can decode them depends on its stack depth.
    """

    entries: list[tuple[bytes, bytes, bool]] = field(default_factory=list)
    ok: dict[str, Call] = field(default_factory=dict)
    okSeeds: list[Any] = field(default_factory=list)
    deep: set[bytes] = field(default_factory=set)

    def stream(self) -> bytes:
        """
        The entries as one stream, those that need it on lines of their
        own, ending with a newline.
        """
        pieces: list[bytes] = []
        for body, end, ownLine in self.entries:
            if ownLine and pieces and not pieces[-1].endswith(b"\n"):
                pieces.append(b"\n")
            pieces += [body, end]
        return b"".join(pieces) + b"\n"

    def messages(self) -> list[bytes]:
        """
        The entries as websocket messages: each line of a L{Raw} item a
        message of its own (its end on the last), other items one message
        each (a L{Deep} one without its end).
        """
        messages: list[bytes] = []
        for body, end, ownLine in self.entries:
            if body in self.deep:
                messages.append(body)
            elif ownLine:
                messages.append(body + end)
            else:
                *lines, last = body.split(b"\n")
                messages += [*lines, last + end]
        return messages


def _render(items: Sequence[Item], limit: int, deepest: int, served: int) -> Rendered:
    """
    The bytes of C{items} (L{Long} lines sized from C{limit}, and served up
    to C{served} bytes; L{Deep} ones from C{deepest}) and what they must
    produce.
    """
    out = Rendered()
    for n, item in enumerate(items):
        if isinstance(item, Raw):
            out.entries.append((item.data, item.end, False))
        elif isinstance(item, Ok):
            requestId = f"ok:{n}"
            out.ok[requestId] = item.call
            out.entries.append(
                (_json.dumps(item.call.request(requestId)), item.end, True)
            )
        elif isinstance(item, OkSeed):
            marker = {"seed": n}
            out.okSeeds.append(marker)
            line = _json.dumps({"function": "echo", "args": [marker]})
            out.entries.append((line, item.end, True))
        elif isinstance(item, Long):
            requestId = f"long:{n}"
            head = b'{"jsonrpc":"2.0","id":"%s","method":"echo","params":["' % (
                requestId.encode()
            )
            size = max(0, limit + item.over - len(head) - 3)
            line = head + b"x" * size + b'"]}'
            if len(line) <= served:
                out.ok[requestId] = Call("echo", ["x" * size], ("result", "x" * size))
            out.entries.append((line, item.end, True))
        else:
            depth = max(1, deepest + item.offset)
            line = _nested(depth, f"deep:{n}", item.seed)
            out.deep.add(line)
            out.entries.append((line, item.end, True))
    return out


# -- what comes out -----------------------------------------------------------


def _key(value: Any) -> tuple[str, Any]:
    """
    A request id as a dictionary key that keeps C{1} and C{1.0} apart: a
    response echoes the id as sent (see
    L{test_cancelOfAWaitingCallEchoesItsOwnId}).
    """
    return (type(value).__name__, value)


def _isResponse(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        return False
    if not _jsonrpc.validId(value.get("id", True)):
        return False
    if value.keys() == {"jsonrpc", "id", "result"}:
        return True
    if value.keys() != {"jsonrpc", "id", "error"}:
        return False
    error = value["error"]
    return (
        isinstance(error, dict)
        and {"code", "message"} <= error.keys() <= {"code", "message", "data"}
        and type(error["code"]) is int
        and isinstance(error["message"], str)
        and bool(error["message"])
    )


def _isProgress(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.keys() == {"jsonrpc", "method", "params"}
        and value["jsonrpc"] == "2.0"
        and value["method"] == PROGRESS
        and isinstance(value["params"], dict)
        and "id" in value["params"]
    )


def _code(response: dict[str, Any]) -> int | None:
    return response["error"]["code"] if "error" in response else None


def _checkOutcome(response: dict[str, Any], call: Call) -> None:
    """
    C{response} is the outcome C{call} must have.
    """
    kind = call.outcome[0]
    if kind == "result":
        assert response.get("result", ANY) == call.outcome[1], (call, response)
        assert "result" in response, (call, response)
    elif kind == "stats":
        result = response.get("result")
        assert isinstance(result, dict) and call.outcome[1] in result, response
    else:
        assert _code(response) == call.outcome[1], (call, response)
        if call.outcome[2] is not ANY:
            assert response["error"].get("data") == call.outcome[2], (call, response)


@dataclass
class Output:
    """
    What one connection (or browser) received, classified.
    """

    responses: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    arrays: int = 0
    bare: list[Any] = field(default_factory=list)
    order: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, value: Any) -> None:
        """
        One line or message: a response, a progress notification, a
        non-empty array of responses (a batch's), or else a bare value (the
        Workerman dialect's answer).
        """
        if _isResponse(value):
            self.responses.append(value)
            self.order.append(("response", value["id"]))
        elif _isProgress(value):
            self.progress.append(value)
            self.order.append(("progress", value["params"]["id"]))
        elif isinstance(value, list) and value and all(map(_isResponse, value)):
            self.arrays += 1
            self.responses.extend(value)
            self.order.extend(("response", r["id"]) for r in value)
        else:
            self.bare.append(value)

    def byId(self) -> dict[tuple[str, Any], list[dict[str, Any]]]:
        found: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for response in self.responses:
            found.setdefault(_key(response["id"]), []).append(response)
        return found


def _decode(data: bytes) -> Any:
    """
    C{data} decoded strictly: one JSON document in valid UTF-8, no NaN or
    infinities, no trailing bytes.
    """
    try:
        return _json.loads(data)
    except _json.DecodeError as e:
        raise AssertionError(f"not well-formed JSON ({e}): {data[:200]!r}") from None


# -- what must come out -------------------------------------------------------


@dataclass
class Expected:
    """
    The responses a sequence of lines (or messages) must get.

    @ivar codes: for each id, the error code of each response it must get
        (L{None}: any outcome).
    @ivar overlong: the leading ids of overlong lines: each gets -32004
        with that id, or without one (when a call with that id is in
        flight).
    @ivar deepIds: the ids of requests whose line only some stack depths
        decode: each gets one response, with its id or, as a parse error
        (-32700), without one.
    @ivar deepSeeds: how many Workerman-dialect lines only some stack depths
        decode: each gets a bare line, or a parse error without an id.
    @ivar seedAt: where, among the bare lines, each L{OkSeed}'s reply goes.
    @ivar requested: the ids that progress notifications may name.
    """

    gateway: bool
    maxBatch: int = DEFAULT_MAX_BATCH
    codes: dict[tuple[str, Any], list[int | None]] = field(default_factory=dict)
    overlong: list[tuple[str, Any]] = field(default_factory=list)
    arrays: int = 0
    bare: int = 0
    deepIds: set[tuple[str, Any]] = field(default_factory=set)
    deepSeeds: int = 0
    seedAt: dict[int, Any] = field(default_factory=dict)
    requested: set[tuple[str, Any]] = field(default_factory=set)

    def expect(self, requestId: Any, code: int | None) -> None:
        self.codes.setdefault(_key(requestId), []).append(code)

    def tooLong(self, line: bytes) -> None:
        """
        What an overlong line must get: -32004, with the id it starts with
        (if any: see L{_jsonrpc.leadingId}).
        """
        requestId = _jsonrpc.leadingId(line[:256])
        if requestId is None:
            self.expect(None, -32004)
        else:
            self.overlong.append(_key(requestId))

    def line(self, line: bytes, rendered: Rendered) -> None:
        """
        What one line (without its delimiter), or message, must get.
        """
        if line.endswith(b"\r"):
            line = line[:-1]
        if line in rendered.deep:
            if line.startswith(b'{"function"'):
                self.deepSeeds += 1
            else:
                requestId = json.loads(line[: line.index(b',"method"')] + b"}")["id"]
                self.deepIds.add(_key(requestId))
                self.requested.add(_key(requestId))
            return
        if not self.gateway and not line.strip():
            return
        message = _jsonrpc.parseLine(line, self.maxBatch)
        if isinstance(message, Invalid) and message.seed and not self.gateway:
            self.bare += 1  # answered in the Workerman dialect
        elif isinstance(message, Invalid):
            self.expect(message.id, int(message.error.code))
        elif isinstance(message, Request):
            if message.seed and self.gateway:
                self.expect(None, -32600)
            elif message.seed:
                args = message.args
                if message.method == "echo" and args and args[0] in rendered.okSeeds:
                    self.seedAt[self.bare] = args[0]
                self.bare += 1
            elif not message.notification:
                self.expect(message.id, None)
                self.requested.add(_key(message.id))
        else:
            answered = False
            for item in message.items:
                if isinstance(item, Invalid):
                    self.expect(item.id, int(item.error.code))
                    answered = True
                elif not item.notification:
                    self.expect(item.id, None)
                    self.requested.add(_key(item.id))
                    answered = True
            self.arrays += answered

    def check(self, output: Output, rendered: Rendered) -> None:
        """
        C{output} is exactly what is expected: one response per request
        with an id (and per invalid or overlong line), one array per
        answered batch, one bare line per seed (in order), progress only
        for requests, and the right outcome for each well-formed call.
        """
        found = output.byId()
        codes = {key: list(wanted) for key, wanted in self.codes.items()}
        noneCodes = codes.setdefault(_key(None), [])
        for key in self.overlong:
            got = found.get(key, [])
            wanted = codes.setdefault(key, [])
            surplus = [_code(r) for r in got].count(-32004) - wanted.count(-32004)
            (wanted if surplus > 0 else noneCodes).append(-32004)
        parseErrors = 0
        for key in self.deepIds:
            got = found.pop(key, [])
            assert len(got) <= 1, (key, got)
            parseErrors += not got
        if self.gateway:
            # Decoded, a seed is refused (-32600); not, a parse error.
            noneCodes += [None] * self.deepSeeds
            deepBare = 0
        else:
            deepBare = len(output.bare) - self.bare
            assert 0 <= deepBare <= self.deepSeeds, (output.bare, self.bare)
            parseErrors += self.deepSeeds - deepBare
        noneCodes += [-32700] * parseErrors
        for key in set(found) | set(codes):
            wanted = codes.get(key, [])
            got = found.get(key, [])
            assert len(got) == len(wanted), (key, wanted, got)
            specific: Counter[int | None] = Counter(c for c in wanted if c is not None)
            actual: Counter[int | None] = Counter(_code(r) for r in got)
            assert not specific - actual, (key, wanted, got)
        assert output.arrays == self.arrays, (output.arrays, self.arrays)
        assert len(output.bare) == self.bare + deepBare
        if not self.gateway:
            seeds = [value for value in output.bare if value in rendered.okSeeds]
            assert seeds == rendered.okSeeds, (seeds, rendered.okSeeds)
        if not self.deepSeeds:
            # Each seed's reply in its place among them.
            for position, marker in self.seedAt.items():
                assert output.bare[position] == marker, (position, output.bare)
        for notification in output.progress:
            assert _key(notification["params"]["id"]) in self.requested, notification
        for requestId, call in rendered.ok.items():
            (response,) = found[_key(requestId)]
            _checkOutcome(response, call)
            mine = [kind for kind, i in output.order if i == requestId]
            assert mine == ["progress"] * call.progress + ["response"], mine
        _observe(output, self)


def _observe(output: Output, expected: Expected) -> None:
    """
    Label the example with what it exercised (shown by pytest's
    C{--hypothesis-show-statistics}, to check that the strategies reach the
    cases that matter).
    """
    codes = {_code(r) for r in output.responses}
    for code, name in [
        (None, "a result"),
        (-32700, "parse error"),
        (-32600, "invalid request"),
        (-32601, "method not found"),
        (-32602, "invalid params"),
        (-32603, "internal error"),
        (-32000, "task raised"),
        (-32001, "timed out"),
        (-32004, "too long"),
        (-32800, "cancelled"),
    ]:
        if code in codes:
            event(f"answered: {name}")
    if output.arrays:
        event("answered: a batch")
    if output.bare:
        event("answered: a seed")
    if output.progress:
        event("answered: progress")
    found = output.byId()
    decoded = sum(1 for key in expected.deepIds if key in found)
    if decoded:
        event("deep: decoded")
    if decoded < len(expected.deepIds):
        event("deep: not decoded")


def _referenceSplit(stream: bytes, limit: int) -> list[bytes | str]:
    """
    What a line reader with a limit of C{limit} bytes must deliver for
    C{stream}, however it is chunked: each C{\\n}-terminated line (a C{\\r}
    before the C{\\n} not counted), or L{TOO_LONG} in its place when it is
    longer than C{limit}; and for the unterminated rest, L{TOO_LONG} if it
    is already longer than C{limit} whatever comes next.
    """
    *lines, rest = stream.split(b"\n")
    events: list[bytes | str] = [
        TOO_LONG if len(line) - line.endswith(b"\r") > limit else line for line in lines
    ]
    if len(rest) - rest.endswith(b"\r") > limit:
        events.append(TOO_LONG)
    return events


def _chunks(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    """
    C{stream} cut at C{cuts}.
    """
    points = sorted(c for c in set(cuts) if 0 < c < len(stream))
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]


_FRACTION = 1 << 16
_fractions = st.integers(0, _FRACTION)


def _at(fraction: int, size: int) -> int:
    """
    A position in C{0..size}, drawn as a fraction: what is drawn must not
    depend on sizes that depend on the stack (see L{_deepestParsed}), or
    Hypothesis sees its strategies change between runs.
    """
    return fraction * (size + 1) // (_FRACTION + 1)


def _cuts(data: st.DataObject, size: int) -> list[int]:
    """
    Where to cut a stream of C{size} bytes into chunks: anywhere, or every
    C{n} bytes (byte by byte included).
    """
    every = data.draw(st.sampled_from([0, 0, 0, 1, 2, 3, 7, 64, 1000, 4096]))
    if every:
        return list(range(every, size, every))
    fractions = data.draw(st.lists(_fractions, max_size=40), label="cuts")
    return [_at(fraction, size) for fraction in fractions]


# -- what is logged -----------------------------------------------------------

_EXPECTED_FAILURES = {"could not encode a response"}
"""Logged failures that come with a reply (the server's fallback, -32603, for
a result nested too deep to encode at its stack depth)."""


@contextlib.contextmanager
def _noErrorsLogged() -> Iterator[None]:
    """
    Fail if anything is logged at error level or with a failure (an
    unexpected exception, or an answer that went nowhere), except
    L{_EXPECTED_FAILURES}.
    """
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if (
            "log_failure" in event
            or event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ) and event.get("log_format") not in _EXPECTED_FAILURES:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not events, [formatEvent(event) for event in events]


# -- well-behaved callers -----------------------------------------------------


class Checker:
    """
    What a well-behaved caller (ids of its own, whole requests) must see:
    each call answered exactly once, correctly, its progress first, and
    nothing else.
    """

    def __init__(self) -> None:
        self.sent: dict[str, Call] = {}
        self.answered: set[str] = set()
        self.progress: Counter[str] = Counter()

    def next(self, call: Call) -> dict[str, Any]:
        """
        The request for C{call}, with a fresh id.
        """
        requestId = f"g:{len(self.sent)}"
        self.sent[requestId] = call
        return call.request(requestId)

    def received(self, values: Sequence[Any]) -> None:
        """
        Check what the caller received (decoded lines or messages).
        """
        for value in values:
            if _isProgress(value):
                requestId = value["params"]["id"]
                assert requestId in self.sent, value
                assert requestId not in self.answered, value
                self.progress[requestId] += 1
                continue
            assert _isResponse(value), value
            requestId = value["id"]
            assert requestId in self.sent, value
            assert requestId not in self.answered, value
            call = self.sent[requestId]
            _checkOutcome(value, call)
            assert self.progress[requestId] == call.progress, (value, self.progress)
            self.answered.add(requestId)

    def allAnswered(self) -> None:
        assert self.answered == set(self.sent), set(self.sent) - self.answered


class GoodClient(Checker):
    """
    A well-behaved client of the task server (a request may arrive in two
    chunks).
    """

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def call(self, call: Call, split: int) -> None:
        line = _jsonrpc.line(self.next(call))
        self.client.sendRaw(line[:split])
        if split < len(line):
            self.client.sendRaw(line[split:])

    def check(self) -> None:
        """
        Everything it sent has been answered (call after settling).
        """
        self.received([_decode(line) for line in self.client.lines()])
        self.allAnswered()


_actions = st.sampled_from(["good", "good", "run", "tick", "tick"])


def _schedule(data: st.DataObject, steps: int) -> dict[int, list[str]]:
    """
    What the well-behaved caller and the test do before each of C{steps}
    hostile steps (and after the last): call, let the workers run, or let
    0.4 s pass on the clock (deadlines expire).
    """
    schedule: dict[int, list[str]] = {}
    drawn = data.draw(
        st.lists(st.tuples(_fractions, _actions), max_size=10), label="schedule"
    )
    for fraction, action in drawn:
        schedule.setdefault(_at(fraction, steps), []).append(action)
    return schedule


def _stopPool(
    pool: ProcessPool, reactor: FakeProcessReactor, force: bool = False
) -> None:
    """
    Stop C{pool} (its workers exit) and check that the stop completes at
    once, or with C{force} (after a failure), once the shutdown timeout has
    passed and calls left running are killed.
    """
    stopped = pool.stopService()
    reactor.reapAll()
    if force:
        reactor.advance(pool.shutdownTimeout)
        reactor.reapAll()
    _case.successResultOf(stopped)
    assert not reactor.alive


# -- the task server ----------------------------------------------------------


def _settle(server: Server) -> None:
    """
    Let killed workers exit and be replaced, and every worker run the calls
    waiting on it, until none is left.
    """
    reactor = server.reactor
    for _ in range(10_000):
        reactor.reapAll()
        reactor.readyAll()
        if not any(w.calls and not w.killed for w in reactor.alive):
            return
        reactor.runAllCalls(SAFE_TASKS)
    raise AssertionError("the workers never ran out of calls")


@_settings(350)
@given(st.data())
def test_serverSurvivesHostileStreams(data: st.DataObject) -> None:
    """
    Whatever bytes a client sends, however they are chunked: dataReceived
    never raises; every line written is well-formed JSON (a response, an
    array of responses, a progress notification, or the bare value of a
    Workerman-dialect call); every request with an id, every invalid line
    and every overlong line gets exactly one response (with its id and the
    documented code), every batch one array, every seed one bare line (the
    well-formed ones in order); the well-formed requests among the garbage
    get their correct outcome; a well-behaved client on another connection,
    interleaved throughout, gets every answer right; a half-closed
    connection is closed once all is answered; a vanishing one leaves
    nothing running; and the pool ends idle and stops.
    """
    deepest = _deepestParsed()
    limit = max(8192, 2 * deepest + 512)
    maxInFlight = data.draw(st.sampled_from([1, 3, DEFAULT_MAX_IN_FLIGHT]))
    items = data.draw(
        st.lists(_items(-16, 4, "workers"), min_size=1, max_size=10),
        label="items",
    )
    rendered = _render(items, limit, deepest, served=limit)
    stream = rendered.stream()
    chunks = _chunks(stream, _cuts(data, len(stream)))
    with _noErrorsLogged():
        _serverExample(data, rendered, stream, chunks, limit, maxInFlight)


def _serverExample(
    data: st.DataObject,
    rendered: Rendered,
    stream: bytes,
    chunks: Sequence[bytes],
    limit: int,
    maxInFlight: int,
) -> None:
    """
    One example of L{test_serverSurvivesHostileStreams}.
    """
    schedule = _schedule(data, len(chunks))
    ending = data.draw(st.sampled_from(["open", "open", "halfClose", "vanish"]))
    vanishAt = _at(data.draw(_fractions), len(chunks)) if ending == "vanish" else -1
    # Let 0.4 s pass after each of the first chunks: deadlines expire.
    ticks = data.draw(st.sampled_from([0, 0, 100]), label="ticks")
    goodCalls = _goodCalls("workers")
    event(f"ending: {ending}")
    event(f"ticks: {ticks}")
    event(f"maxInFlight: {maxInFlight}")
    event(f"chunks: {len(chunks) if len(chunks) < 3 else 'many'}")

    server = Server(maxLineLength=limit, maxInFlight=maxInFlight)
    hostile = server.connect()
    good = GoodClient(server.connect())
    output = Output()
    lastWords = b""
    failed = False
    try:
        for index in range(len(chunks) + 1):
            for action in schedule.get(index, []):
                if action == "good":
                    good.call(data.draw(goodCalls), data.draw(st.integers(1, 200)))
                elif action == "run":
                    _settle(server)
                    good.check()
                else:
                    server.reactor.advance(0.4)
            if index == vanishAt:
                hostile.disconnect()
                lastWords = hostile.transport.value()
            if index < len(chunks) and (vanishAt < 0 or index < vanishAt):
                hostile.sendRaw(chunks[index])
                if index < ticks:
                    server.reactor.advance(0.4)
        if ending == "halfClose":
            hostile.protocol.readConnectionLost()
        _settle(server)
        good.check()
        if ending == "vanish":
            # Nothing is written to a connection once it is lost.
            assert hostile.transport.value() == lastWords
        for line in hostile.lines():
            output.add(_decode(line))
        if ending != "vanish":
            expected = Expected(
                gateway=False, maxBatch=min(DEFAULT_MAX_BATCH, maxInFlight)
            )
            *pieces, rest = stream.split(b"\n")
            if ending == "halfClose" and len(rest) - rest.endswith(b"\r") <= limit:
                # The last bytes, without their "\n", are a line too.
                pieces.append(rest)
            for piece in pieces:
                if len(piece) - piece.endswith(b"\r") > limit:
                    expected.tooLong(piece)
                else:
                    expected.line(piece, rendered)
            expected.check(output, rendered)
        assert hostile.transport.disconnecting == (ending != "open")
        stats = server.pool.stats()
        assert (stats["queued"], stats["running"]) == (0, 0), stats
        assert stats["workers"]["idle"] == server.pool.size, stats
    except BaseException:
        failed = True
        raise
    finally:
        if ending != "vanish":
            hostile.disconnect()
        good.client.disconnect()
        _stopPool(server.pool, server.reactor, force=failed)


# -- the line framing alone ---------------------------------------------------


_AWKWARD = bytes(b"a\r\0\xff \n"[i % 6] for i in range(256))
"""Maps any byte to one of a few awkward ones (fast, unlike drawing each)."""


@st.composite
def _lineStreams(draw: st.DrawFn, limit: int) -> bytes:
    """
    Lines around C{limit} bytes of awkward bytes, with C{\n} or C{\r\n}
    ends (or none), and maybe an unterminated rest.
    """
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        size = draw(
            st.sampled_from([limit - 1, limit, limit + 1, limit + 2])
            | st.integers(0, 3 * limit + 3)
        )
        body = draw(st.binary(min_size=size, max_size=size)).translate(_AWKWARD)
        if draw(st.booleans()):
            body = body.replace(b"\n", b"a")
        pieces.append(body + draw(st.sampled_from([b"\n", b"\r\n", b"", b"\r"])))
    if draw(st.booleans()):
        pieces.append(draw(st.binary(max_size=3 * limit)))
    return b"".join(pieces)


@_settings(800)
@given(st.data())
def test_linesMatchAReferenceSplitter(data: st.DataObject) -> None:
    """
    For any byte stream, limit and chunking, the lines L{LineProtocol}
    delivers and its too-long reports are, in order, what a reference
    splitter computes from the whole stream; and it never buffers more than
    the limit (a C{\r} at its end, whose C{\n} may follow, aside).
    """
    limit = data.draw(st.integers(1, 40), label="limit")
    stream = data.draw(_lineStreams(limit), label="stream")
    chunks = _chunks(stream, _cuts(data, len(stream)))
    protocol = connected(limit)
    for chunk in chunks:
        protocol.dataReceived(chunk)
        buffered = protocol._buffer
        assert len(buffered) - buffered.endswith(b"\r") <= limit
    assert protocol.events == _referenceSplit(stream, limit)


# -- the websocket gateway ----------------------------------------------------


class RecordingBrowser(WebSocketClientProtocol):
    """
    A browser's websocket that records each message as received.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.opened = False
        self.closed: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)

    def take(self) -> list[Any]:
        """
        The messages received since the last look, decoded (each must be a
        text message holding well-formed JSON).
        """
        received, self.received = self.received, []
        for payload, isBinary in received:
            assert not isBinary, payload
        return [_decode(payload) for payload, _ in received]


class Rig(GatewayRig):
    """
    A L{GatewayFactory} whose L{TaskClient} talks over iosim to a real task
    server (lines of at most C{maxLineLength} bytes), whose pool runs on
    L{FakeProcessReactor} (L{taskservice.testing.GatewayRig}).
    """

    def __init__(self, maxLineLength: int = DEFAULT_MAX_LINE) -> None:
        super().__init__(TASKS, 2, serverOptions={"maxLineLength": maxLineLength})

    def settle(self, registry: Any = None, rounds: int = 10_000) -> None:
        """
        Deliver everything, and let the workers run every call (the safe
        tasks' functions), until all is quiet.
        """
        super().settle(registry or SAFE_TASKS, rounds)

    def browser(self) -> tuple[RecordingBrowser, GatewayProtocol]:
        """
        A new browser with its websocket open, and the gateway's side of it.
        """
        before = set(self.factory.browsers)
        browser = self.connectBrowser(RecordingBrowser)
        assert browser.opened
        (gateway,) = set(self.factory.browsers) - before
        return browser, gateway

    def stop(self) -> None:
        """
        Close every browser, stop the client and the pool.
        """
        closed = self.factory.closeAll()
        self.flush()
        _case.successResultOf(closed)
        stopped = self.client.stopService()
        self.flush()
        _case.successResultOf(stopped)
        _stopPool(self.pool, self.reactor)

    def abandon(self) -> None:
        """
        Stop the client and the pool without delivering anything more (after
        an exception broke a protocol's state): calls left running are
        killed once the pool's shutdown timeout passes.
        """
        self.pumps.clear()
        self.client.stopService()
        _stopPool(self.pool, self.reactor, force=True)


class GoodBrowser(Checker):
    """
    A well-behaved browser.
    """

    def __init__(self, browser: RecordingBrowser, gateway: GatewayProtocol) -> None:
        super().__init__()
        self.browser = browser
        self.gateway = gateway

    def call(self, call: Call) -> None:
        self.browser.sendMessage(_json.dumps(self.next(call)))

    def check(self) -> None:
        """
        Everything it sent has been answered (call after settling).
        """
        self.received(self.browser.take())
        self.allAnswered()
        assert self.browser.closed is None


def _isUTF8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@_settings(200)
@given(st.data())
def test_gatewaySurvivesHostileMessages(data: st.DataObject) -> None:
    """
    Whatever websocket messages a browser sends (text, binary, not even
    UTF-8): nothing raises; every message the gateway sends is a text
    message of well-formed JSON; every request with an id and every invalid
    message gets exactly one response (with its id and the documented
    code), every batch one array, the Workerman dialect an invalid-request
    error; the well-formed requests among them get their correct outcome
    from the task server behind; a browser that vanishes leaves no call in
    flight; and a well-behaved browser, interleaved throughout, gets every
    answer right.
    """
    deepest = _deepestParsed()
    items = data.draw(
        st.lists(_items(-30, -6, "gateway"), min_size=1, max_size=8),
        label="items",
    )
    rendered = _render(items, 4096, deepest, served=DEFAULT_MAX_MESSAGE)
    messages = [(message, False) for message in rendered.messages()]
    if data.draw(st.booleans()):
        binary = data.draw(st.binary(max_size=16))
        messages.insert(data.draw(st.integers(0, len(messages))), (binary, True))
    schedule = _schedule(data, len(messages))
    tick = data.draw(st.sampled_from([0, 0, 0.4]), label="tick")
    vanish = data.draw(st.sampled_from([False, False, False, True]), label="vanish")
    vanishAt = _at(data.draw(_fractions), len(messages)) if vanish else -1
    goodCalls = _goodCalls("gateway")

    with replace_loop(FakeProcessReactor()), _noErrorsLogged():
        rig = Rig()
        broken = False
        try:
            hostile, gateway = rig.browser()
            good = GoodBrowser(*rig.browser())
            output = Output()
            for index in range(len(messages) + 1):
                for action in schedule.get(index, []):
                    if action == "good":
                        good.call(data.draw(goodCalls))
                    elif action == "run":
                        rig.settle()
                        good.check()
                    else:
                        rig.reactor.advance(0.4)
                        rig.flush()
                if index == vanishAt:
                    hostile.dropConnection(abort=True)
                    rig.flush()
                if index == len(messages) or (vanish and index >= vanishAt):
                    continue
                payload, isBinary = messages[index]
                if isBinary or _isUTF8(payload):
                    hostile.sendMessage(payload, isBinary)
                    rig.flush()
                else:
                    # Autobahn would fail the connection (1007) before
                    # onMessage: hand the bytes to the gateway directly.
                    gateway.onMessage(payload, False)
                rig.reactor.advance(tick)
                for value in hostile.take():
                    output.add(value)
            rig.settle()
            good.check()
            for value in hostile.take():
                output.add(value)
            assert not output.bare, output.bare
            if vanish:
                assert hostile.closed is not None
                assert rig.factory.browsers == {good.gateway}
            else:
                assert hostile.closed is None
                expected = Expected(
                    gateway=True,
                    maxBatch=min(DEFAULT_MAX_BATCH, rig.factory.maxBrowserCalls),
                )
                for payload, isBinary in messages:
                    if isBinary:
                        expected.expect(None, -32600)
                    else:
                        expected.line(payload, rendered)
                expected.check(output, rendered)
            assert rig.factory.inFlight == 0
            stats = rig.pool.stats()
            assert (stats["queued"], stats["running"]) == (0, 0), stats
        except BaseException:
            # An exception may have left autobahn's state broken.
            broken = True
            raise
        finally:
            if broken:
                rig.abandon()
            else:
                rig.stop()


# -- regressions: the bugs the sweep found -----------------------------------


def test_crlfLineAtTheLimitSplitBeforeNewline() -> None:
    """
    A line of exactly the limit, ended by C{\\r\\n}, is delivered whether or
    not a chunk ends between the C{\\r} and the C{\\n}: the C{\\r} does not
    count against the limit (it does not when the line comes whole).
    (Regression: the partial-line check counted it, and reported the line
    too long.)
    """
    whole = connected(limit=8)
    whole.dataReceived(b"12345678\r\n")
    assert whole.events == [b"12345678\r"]
    split = connected(limit=8)
    split.dataReceived(b"12345678\r")
    split.dataReceived(b"\n")
    assert split.events == [b"12345678\r"]


def test_requestAtTheLimitWithCrlfSplitBeforeNewline() -> None:
    """
    A request on a line of exactly the server's limit, ended by C{\\r\\n}
    (which the protocol tolerates), is served however the bytes are
    segmented. (Regression: with a segment ending between the C{\\r} and
    the C{\\n}, it was answered -32004 with a null id and never run.)
    """
    limit = 4096
    head = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["'
    tail = b'"]}'
    padding = "y" * (limit - len(head) - len(tail))
    line = head + padding.encode() + tail
    assert len(line) == limit
    server = Server(maxLineLength=limit)
    client = server.connect()
    try:
        client.sendRaw(line + b"\r")
        client.sendRaw(b"\n")
        _settle(server)
        assert client.replies() == [{"jsonrpc": "2.0", "id": 1, "result": padding}]
    finally:
        client.disconnect()
        _stopPool(server.pool, server.reactor)


def test_seedRepliesInOrderPastMaxInFlight() -> None:
    """
    Workerman-dialect calls are answered in the order they came, also when
    some wait for the connection's C{maxInFlight}: here C{"A"}, C{"B"},
    then the C{$/cancelRequest}'s C{null}. (Regression: a dialect
    C{$/cancelRequest} skipped the waiting calls, and its C{null} came
    before C{"B"}.)
    """
    server = Server(maxInFlight=1)
    client = server.connect()
    try:
        client.sendRaw(
            b'{"function":"echo","args":["A"]}\n'
            b'{"function":"echo","args":["B"]}\n'
            b'{"function":"$/cancelRequest","args":{"id":5}}\n'
        )
        _settle(server)
        assert client.lines() == [b'"A"', b'"B"', b"null"]
    finally:
        client.disconnect()
        _stopPool(server.pool, server.reactor)


def test_gatewayAnswersDeepButDecodableParams() -> None:
    """
    Whatever the nesting of a browser's params near the decoder's limit, the
    gateway answers the message once (the result, an error with its id, or
    a parse error) and nothing raises out of onMessage. (Each depth on a
    browser of its own: an exception leaves autobahn's state broken.)
    (Regression: params nested just shallow enough to decode, but too deep
    to encode again a few frames deeper, made TaskClient.request's
    TypeError escape onMessage: over TCP, Twisted drops the browser.)
    """
    deepest = _deepestParsed()
    depths = range(max(1, deepest - 60), deepest + 2)
    raised: list[int] = []
    answers: list[int] = []
    with replace_loop(FakeProcessReactor()):
        rig = Rig()
        try:
            for depth in depths:
                browser, _ = rig.browser()
                try:
                    browser.sendMessage(_nested(depth, f"d{depth}"))
                    rig.settle()
                except TypeError:
                    raised.append(depth)
                    rig.pumps.pop()
                else:
                    answers.append(len(browser.take()))
        finally:
            rig.abandon()
    assert raised == []
    assert answers == [1] * len(depths)


def test_gatewayCallOverTheTaskServersLineLimitIsAnswered() -> None:
    """
    A browser's call that the task server refuses as too long is answered
    (an error with the browser's id), and does not stay in flight. Here the
    browser's message is 3,060 bytes, under the server's 4,096-byte limit,
    but one lone surrogate makes the gateway re-encode it as ASCII (each
    C{é} as C{\\u00e9}): 9,060 bytes upstream. (Regression: the server
    answered -32004 with a null id, which TaskClient dropped: the call
    stayed in flight forever.)
    """
    payload = (
        b'{"jsonrpc":"2.0","id":2,"method":"echo","params":["\\ud800'
        + "é".encode() * 1500
        + b'"]}'
    )
    assert len(payload) < 4096
    with replace_loop(FakeProcessReactor()):
        rig = Rig(maxLineLength=4096)
        browser, _ = rig.browser()
        try:
            browser.sendMessage(payload)
            rig.settle()
            replies = browser.take()
            inFlight = rig.factory.inFlight
        finally:
            rig.abandon()
    assert [(reply["id"], _code(reply)) for reply in replies] == [(2, -32004)]
    assert inFlight == 0


def test_cancelOfAWaitingCallEchoesItsOwnId() -> None:
    """
    A call cancelled while it waits for the connection's C{maxInFlight} is
    answered -32800 with its own id, as sent, whatever form of the same
    number the C{$/cancelRequest} used. (Regression: it was answered with
    the cancel's C{1.0}, which TaskClient, matching int ids, would drop.)
    """
    server = Server(maxInFlight=1)
    client = server.connect()
    try:
        client.sendRaw(
            b'{"jsonrpc":"2.0","id":"a","method":"echo","params":[1]}\n'
            b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[2]}\n'
            b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":1.0}}\n'
        )
        _settle(server)
        assert client.lines() == [
            b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"cancelled"}}',
            b'{"jsonrpc":"2.0","id":"a","result":1}',
        ]
    finally:
        client.disconnect()
        _stopPool(server.pool, server.reactor)


def test_cancelDoesNotReachCallsSentAfterIt() -> None:
    """
    A C{$/cancelRequest} names a call sent before it: a call sent after it
    with the same id (ids may be reused once answered) runs, also when the
    cancel, in a batch, waited for the connection's C{maxInFlight}.
    (Regression: it searched the whole waiting queue, later calls too.)
    """
    server = Server(maxInFlight=1)
    client = server.connect()
    try:
        client.sendRaw(
            b'{"jsonrpc":"2.0","id":"a","method":"echo","params":[1]}\n'
            b'[{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":7}}]\n'
            b'{"jsonrpc":"2.0","id":7,"method":"echo","params":[2]}\n'
        )
        _settle(server)
        assert client.lines() == [
            b'{"jsonrpc":"2.0","id":"a","result":1}',
            b'{"jsonrpc":"2.0","id":7,"result":2}',
        ]
    finally:
        client.disconnect()
        _stopPool(server.pool, server.reactor)


def test_seedRepliesInOrderWhenADispatchFailsAtOnce() -> None:
    """
    Workerman-dialect calls are answered in the order they came, also when,
    as one of them starts, the pool hands a queued call to a worker and that
    call fails at once: here with a JSON-RPC request whose argument, nested
    near the decoder's limit, decodes when it arrives but cannot be encoded
    for the worker a few frames deeper. (The connection's C{maxInFlight}
    of 3 makes the last two seeds wait.) (Regression: the seed's reply slot
    was reserved after its call started, and that start finished the deep
    call and started the next seed first: replies 0, 1, 4, 3.)
    """
    deepest = _deepestParsed()
    disorders = []
    for depth in range(max(1, deepest - 40), deepest + 2):
        server = Server(maxInFlight=3)
        client = server.connect()
        try:
            client.sendRaw(
                b'{"function":"echo","args":[0]}\n'
                b'{"function":"echo","args":[1]}\n'
                + _nested(depth, "deep")
                + b'\n{"function":"echo","args":[3]}\n'
                b'{"function":"echo","args":[4]}\n'
            )
            _settle(server)
            seeds = [line for line in client.lines() if not line.startswith(b"{")]
            if seeds != [b"0", b"1", b"3", b"4"]:
                disorders.append((depth, seeds))
        finally:
            client.disconnect()
            _stopPool(server.pool, server.reactor)
    assert disorders == []
