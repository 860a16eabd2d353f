"""
Bad input, one line each, with the error it must get (the rule: every bad
input gets a clear, named error, docs/protocol "Errors", and costs nothing
else: the connection and other callers keep going): shared by the unit
tests (L{tests.test_server}, L{tests.test_session}) and the tests over a
real socket (L{tests.test_server_integration}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANY_DATA: Any = ...
"""Stands for "any C{data}, or none" in L{BadInput.data}."""


@dataclass(frozen=True)
class BadInput:
    """
    One bad line (without its newline) and its expected error reply.
    """

    name: str
    line: bytes
    replyId: Any
    code: int
    data: Any = ANY_DATA


def badInputs(limit: int) -> list[BadInput]:
    """
    Every kind of bad input, for a server whose line limit is C{limit} bytes
    (at least 4096).
    """
    assert limit >= 4096
    rpc = b'{"jsonrpc":"2.0","id":1,'
    return [
        # Not JSON at all, or not JSON we accept.
        BadInput("invalid-json", rpc + b'"method":"echo","params":[1', None, -32700),
        BadInput("nan", rpc + b'"method":"echo","params":[NaN]}', None, -32700),
        BadInput(
            "infinity", rpc + b'"method":"echo","params":[-Infinity]}', None, -32700
        ),
        BadInput("deep-nesting", b"[" * 3000, None, -32700),
        BadInput("non-utf8", rpc + b'"method":"ech\xff"}', None, -32700),
        BadInput(
            "latin1",
            '{"jsonrpc":"2.0","id":1,"method":"echo","params":["é"]}'.encode("latin-1"),
            None,
            -32700,
        ),
        BadInput(
            "utf16",
            '{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}'.encode("utf-16-le"),
            None,
            -32700,
        ),
        # JSON of the wrong shape or types.
        BadInput("scalar", b"42", None, -32600),
        BadInput("string", b'"echo"', None, -32600),
        BadInput("empty-batch", b"[]", None, -32600),
        BadInput("no-jsonrpc", b'{"id":1,"method":"echo","params":[1]}', 1, -32600),
        BadInput("method-type", rpc + b'"method":42}', 1, -32600),
        BadInput("params-type", rpc + b'"method":"echo","params":"x"}', 1, -32600),
        BadInput("params-null", rpc + b'"method":"echo","params":null}', 1, -32600),
        BadInput(
            "id-type",
            b'{"jsonrpc":"2.0","id":true,"method":"echo","params":[1]}',
            None,
            -32600,
        ),
        # Unknown methods.
        BadInput("unknown-method", rpc + b'"method":"nosuch","params":[]}', 1, -32601),
        BadInput("unknown-builtin", rpc + b'"method":"$/nosuch"}', 1, -32601),
        # Wrong arguments.
        BadInput("too-many-args", rpc + b'"method":"echo","params":[1,2]}', 1, -32602),
        BadInput("missing-args", rpc + b'"method":"add","params":[1]}', 1, -32602),
        BadInput(
            "unknown-kwarg",
            rpc + b'"method":"echo","params":{"value":1,"x":2}}',
            1,
            -32602,
        ),
        # A line over the limit: answered with its id when the id leads.
        BadInput(
            "line-too-long",
            rpc + b'"method":"echo","params":["' + b"x" * limit + b'"]}',
            1,
            -32004,
            {"limit": limit},
        ),
        BadInput(
            "line-too-long-id-last",
            b'{"jsonrpc":"2.0","method":"echo","params":["'
            + b"x" * limit
            + b'"],"id":1}',
            None,
            -32004,
            {"limit": limit},
        ),
    ]
