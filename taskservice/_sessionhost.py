"""
What a L{taskservice._session.Session} stands on: the interface to its host
(the transport it runs in and the service behind it), its rules, and its
standing. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from taskservice._auth import Token
from taskservice.wire import DEFAULT_MAX_BATCH, DEFAULT_MAX_LINE

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from taskservice._call import Call, CallSink
    from taskservice._jsonrpc import Request
    from taskservice.errors import TaskServiceError

HOLD_LIMIT = 1024 * 1024
"""Bytes of waiting messages past which a session asks its host to stop
reading (L{SessionHost.holdInput}); it asks again below half of it."""

RETRY_AFTER = 1.0
"""The C{retryAfter} hint (seconds) of a call refused past the cap, with
L{SessionConfig.refuseOverflow}."""

Response = dict[str, Any] | None
Progress = Callable[[Any], None]
Lane = Callable[["Request", "CallSink", Any], "Call"]
"""A host's C{startCall(request, sink, tag)}, when it has one (the task
server): the lean lane, on which the session starts a task call with no
L{Deferred} and hears of its end as its L{CallSink}. (A host without it,
the gateway's, runs every call through L{SessionHost.call}.)"""


class SessionHost(Protocol):
    """
    What a L{Session} needs from the transport it runs in and the service
    behind it.
    """

    def send(self, data: bytes) -> None:
        """
        Write one encoded message (without a line delimiter).
        """

    def call(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        """
        Run a task call (never a C{$/} method); fire with its result.
        """

    def stats(self) -> Deferred[Any]:
        """
        Answer C{$/stats}.
        """

    def jobMethod(self, request: Request, onProgress: Progress | None) -> Deferred[Any]:
        """
        Answer one of the job methods (L{JOB_METHODS}), or fail with a
        L{TaskServiceError} (C{MethodNotFound} where no jobs are kept).
        """

    def cancel(self, call: Deferred[Any], onlyIfQueued: bool) -> None:
        """
        C{$/cancelRequest} names C{call}: cancel it (with C{onlyIfQueued},
        only if it has not started).
        """

    def error(self, error: TaskServiceError, *, refused: bool, answered: bool) -> None:
        """
        An error: answered by the session itself (C{refused}), or a call's;
        written to the peer (C{answered}) or not (a notification's).
        """

    def holdInput(self, hold: bool) -> None:
        """
        Stop (C{True}) or resume reading from the peer: its waiting
        messages passed L{HOLD_LIMIT} bytes, or went below half of it.
        """

    def close(self) -> None:
        """
        Close the connection once what was written has been sent.
        """

    def refuseConnection(self, why: str) -> None:
        """
        The peer failed to authenticate (why): log it and L{close}.
        """


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """
    A session's rules.

    @ivar maxInFlight: calls the peer may have running at once, each
        request of a batch counting as one.
    @ivar maxBatch: the most requests a batch may hold (never more than
        C{maxInFlight}); a larger one is answered -32004.
    @ivar maxLineLength: the longest message, once authenticated.
    @ivar refuseOverflow: past C{maxInFlight}, answer -32003 at once
        (C{True}) or keep the messages waiting, in order (C{False}).
    @ivar dialect: accept the Workerman FAQ dialect (C{{"function": ...}},
        answered with bare results in order); else it is -32600.
    @ivar answersAuth: C{$/auth} is a method here (else "method not
        found").
    @ivar token: the token C{$/auth} must bring before anything else, or
        L{None}.
    """

    maxInFlight: int
    maxBatch: int = DEFAULT_MAX_BATCH
    maxLineLength: int = DEFAULT_MAX_LINE
    refuseOverflow: bool = False
    dialect: bool = True
    answersAuth: bool = True
    token: Token | None = None

    def __post_init__(self) -> None:
        if self.dialect and self.refuseOverflow:
            raise ValueError(
                "the FAQ dialect is answered in order: not with refuseOverflow"
            )


class Access(Enum):
    """
    A session's standing: it must authenticate first (C{NEEDS_AUTH}), may
    call (C{OPEN}), or was refused and is closing (C{REFUSED}).
    """

    NEEDS_AUTH = "needs auth"
    OPEN = "open"
    REFUSED = "refused"
