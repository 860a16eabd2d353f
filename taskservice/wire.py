"""
The task protocol's vocabulary and framing: no I/O, no Twisted.

Everything that talks the protocol (the task server, the websocket gateway,
L{taskservice.client}, and clients for programs without a reactor) takes its
C{$/} method names, its line limits and its line splitting from here, so
that importing any one of them loads none of the others. Encoding and
decoding JSON-RPC messages is L{taskservice._jsonrpc}'s job; the error
codes are L{taskservice.errors}'.

L{LineSplitter} is the framing, sans-I/O: bytes in, complete lines out::

    splitter = LineSplitter(maxLength=PRE_AUTH_MAX_LINE)
    splitter.feed(data)
    while (line := splitter.nextLine()) is not None:
        if isinstance(line, LineTooLong):
            ...  # answer "too large"; the connection carries on
        else:
            ...  # one line, without its "\\n"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- protocol methods ------------------------------------------------------------
#
# The reserved "$/" namespace (no task name can take it). A new protocol
# method gets its name here, and in PROTOCOL_METHODS.

RESERVED_PREFIX = "$/"
"""Method names starting with this are the protocol's, never a task's."""

AUTH = "$/auth"
"""Request: C{{"token": ...}}; the first message on a connection to a task
server that has a token. Answered C{true}, or -32005 and the connection
closed."""

CANCEL = "$/cancelRequest"
"""Notification: C{{"id": ...}} names a call in flight on the connection;
with C{"onlyIfQueued": true} a call that already runs is left to finish."""

PROGRESS = "$/progress"
"""Notification from the server: a running call's progress, with its
C{"id"}."""

STATS = "$/stats"
"""Request: what the service is doing (workers, queue, counters)."""

SUBMIT = "$/submit"
"""Request: record a durable job (docs/jobs); answered C{{"job", "state"}}
once it is on disk."""

JOB = "$/job"
"""Request: C{{"job": id}}; the job as it is now."""

ATTACH = "$/attach"
"""Request: C{{"job": id}}; progress as L{PROGRESS} with C{"job"}, then the
job's result or error as the reply."""

CANCEL_JOB = "$/cancelJob"
"""Request: C{{"job": id}}; cancel the job, answered its state after."""

JOBS = "$/jobs"
"""Request: C{{"state", "method", "limit"}}; the newest jobs."""

JOB_METHODS = frozenset({SUBMIT, JOB, ATTACH, CANCEL_JOB, JOBS})
"""The durable-job methods, answered by a task server's job service."""

PROTOCOL_METHODS = frozenset({AUTH, CANCEL, PROGRESS, STATS, *JOB_METHODS})
"""Every protocol method this version knows."""

ONLY_IF_QUEUED = "onlyIfQueued"
"""The member of L{CANCEL}'s params that spares a call already running."""


# -- call options ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOptions:
    """
    How one call is to run, beside its method and params: one value carried
    from where the request is parsed (or a client's C{request()}) to the
    pool, instead of each option threaded through every signature.

    @ivar timeout: the caller's own deadline in seconds (a request's
        C{"timeout"} member, beside C{"method"}), or L{None} for the task's
        default.

    (Room for what comes next: a priority, a job key, a delay. A new option
    is a field here, a member in L{members} and a check in the parser.)
    """

    timeout: float | None = None

    def members(self) -> dict[str, Any]:
        """
        The request members (beside C{"method"}) that carry these options.
        """
        return {} if self.timeout is None else {"timeout": self.timeout}


NO_OPTIONS = CallOptions()
"""The options of a call that sets none (shared: no value per call)."""


def callOptions(options: CallOptions, timeout: float | None) -> CallOptions:
    """
    C{options}, with the C{timeout=} shorthand of the public C{request()}
    and C{submit()} signatures folded in.
    """
    if timeout is None:
        return options
    return CallOptions(timeout=timeout)


# -- params --------------------------------------------------------------------


def callParams(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """
    The JSON-RPC params of a call made with C{args} or C{kwargs}: JSON-RPC
    has no form for both at once, so passing both raises L{TypeError}.
    """
    if args and kwargs:
        raise TypeError(
            "JSON-RPC params are by position or by name, not both; "
            "use positional or keyword arguments only"
        )
    return kwargs if kwargs else list(args)


def submitParams(
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The params of a L{SUBMIT} of C{method} with C{params} (as they go on
    the wire) and C{options} (C{key}, C{delay}, C{at}, C{retries},
    C{backoff}, C{timeout}: see docs/jobs); an option that is L{None} is
    left to the server's default.

    @raise TypeError: an option that C{$/submit} does not have.
    """
    unknown = sorted(set(options) - SUBMIT_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown $/submit options {unknown}; known: {sorted(SUBMIT_OPTIONS)}"
        )
    request: dict[str, Any] = {"method": method}
    if params is not None:
        request["params"] = params if isinstance(params, Mapping) else list(params)
    for name, value in options.items():
        if value is not None:
            request[name] = value
    return request


SUBMIT_OPTIONS = frozenset({"key", "delay", "at", "retries", "backoff", "timeout"})
"""The members of L{SUBMIT}'s params besides C{method} and C{params}."""


def jobsParams(
    state: str | None, method: str | None, limit: int | None
) -> dict[str, Any]:
    """
    The params of a L{JOBS} listing: the filters given, the others left to
    the server's default.
    """
    return {
        name: value
        for name, value in (("state", state), ("method", method), ("limit", limit))
        if value is not None
    }


# -- line limits -----------------------------------------------------------------

DEFAULT_MAX_LINE = 16 * 1024 * 1024
"""The task server's default longest line, in bytes (C{--max-line})."""

PRE_AUTH_MAX_LINE = 8192
"""The longest line a connection may send before it has authenticated."""

CLIENT_MAX_LINE = 1 << 30
"""The longest response line a client accepts; past it, it disconnects."""

DEFAULT_MAX_BATCH = 1000
"""
The most requests one JSON-RPC batch may hold (C{--max-batch}): the default
C{--max-in-flight} of a task server connection, since every element of a
batch counts against it and a batch is answered only once all of its
elements are done.
"""

DEFAULT_MAX_MESSAGE = 1024 * 1024
"""The largest websocket message a browser may send the gateway, in bytes
(C{--max-message})."""

DEFAULT_MAX_BROWSER_CALLS = 100
"""Calls one browser may have in flight through the gateway
(C{--max-browser-calls})."""

TOO_LONG_PREFIX = 256
"""How much of an overlong line L{LineTooLong} keeps (enough for its id)."""


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """
    A line longer than the limit was discarded (once per such line, as soon
    as it is known to be too long, even before its end has arrived).

    @ivar prefix: its first L{TOO_LONG_PREFIX} bytes, to read its id from.
    """

    prefix: bytes


class LineSplitter:
    """
    Splits a byte stream into C{\\n}-terminated lines, with a length limit
    that drops only the overlong line, never the stream.

    A line is returned without its C{\\n}; a C{\\r} before it stays in the
    line (JSON decoders read it as whitespace) and is not counted against the
    limit, so C{\\r\\n} works. Buffering is linear: a 10 MB line in 4 KiB
    chunks costs one copy of it.

    @ivar maxLength: the longest line accepted, in bytes, not counting its
        C{\\n} (nor a C{\\r} before it). It may change between two
        L{nextLine} calls (after authentication, say) and applies from the
        next line on.
    """

    __slots__ = ("_chunk", "_discarding", "_partial", "_pos", "maxLength")

    def __init__(self, maxLength: int = DEFAULT_MAX_LINE) -> None:
        self.maxLength = maxLength
        # The last chunk fed, read from _pos on; _partial holds the start of
        # a line from earlier chunks (never a "\n").
        self._chunk = b""
        self._pos = 0
        self._partial = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> bytearray:
        """
        The start of a line held while its end is awaited (after
        L{nextLine} returned L{None}): at most C{maxLength} bytes, or one more
        when the last is a C{\\r}.
        """
        return self._partial

    def wholeLine(self, data: bytes) -> bytes | None:
        """
        The common case, quickly: when nothing is buffered and C{data} is one
        whole line well within the limit, that line (C{data} is then taken).
        Otherwise L{None}, and C{data} was not taken: L{feed} it.
        """
        # (Every line fed has been read once _chunk is empty: _keepRest.)
        if self._chunk or self._partial or self._discarding:
            return None
        end = len(data) - 1
        if 0 <= end < self.maxLength and data.find(b"\n") == end:
            return data[:end]
        return None

    def feed(self, data: bytes) -> None:
        """
        Take bytes as received; then call L{nextLine} until it returns
        L{None}.
        """
        if self._pos < len(self._chunk):
            # (The caller fed again without reading every line.)
            data = self._chunk[self._pos :] + data
        self._chunk = data
        self._pos = 0

    def nextLine(self) -> bytes | LineTooLong | None:
        """
        The next complete line, a L{LineTooLong} in place of an overlong one,
        or L{None} once every line fed so far has been returned.
        """
        chunk = self._chunk
        pos = self._pos
        end = chunk.find(b"\n", pos)
        if end < 0:
            return self._keepRest()
        self._pos = end + 1
        if self._discarding:
            # The end of an overlong line already reported.
            self._discarding = False
            return self.nextLine()
        partial = self._partial
        if not partial:
            crlf = end > pos and chunk[end - 1] == 13
            if end - pos - crlf > self.maxLength:
                return LineTooLong(chunk[pos : min(end, pos + TOO_LONG_PREFIX)])
            return chunk[pos:end]
        crlf = chunk[end - 1] == 13 if end > pos else partial[-1] == 13
        if len(partial) + end - pos - crlf > self.maxLength:
            prefix = bytes(partial[:TOO_LONG_PREFIX])
            prefix += chunk[pos : min(end, pos + TOO_LONG_PREFIX - len(prefix))]
            partial.clear()
            return LineTooLong(prefix)
        partial += memoryview(chunk)[pos:end]
        line = bytes(partial)
        partial.clear()
        return line

    def finish(self) -> bytes | None:
        """
        The stream has ended (the peer half-closed): the bytes fed after the
        last C{\\n}, if any, as a last line (a C{\\r} at their end kept, as
        before a C{\\n}); L{None} when nothing is left. The rest of a line
        already returned as L{LineTooLong} is not a line. Call it once every
        line fed has been read (L{nextLine} returned L{None}).
        """
        self._keepRest()
        self._discarding = False
        partial = self._partial
        if not partial:
            return None
        line = bytes(partial)
        partial.clear()
        return line

    def _keepRest(self) -> LineTooLong | None:
        """
        No C{\\n} is left in the chunk: keep its rest as the start of the
        next line, unless that is already too long.
        """
        chunk, pos = self._chunk, self._pos
        self._chunk = b""
        self._pos = 0
        if pos >= len(chunk) or self._discarding:
            return None
        partial = self._partial
        partial += memoryview(chunk)[pos:]
        # (A trailing \r may be the end of a line whose \n is on its way.)
        if len(partial) - (partial[-1] == 13) > self.maxLength:
            prefix = bytes(partial[:TOO_LONG_PREFIX])
            partial.clear()
            self._discarding = True
            return LineTooLong(prefix)
        return None
