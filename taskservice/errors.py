"""
Every error taskservice reports, as data.

One exception class per wire error code; each carries the fields that go into
the JSON-RPC error's ``data``. L{toWireError} is the single place where any
failure becomes a wire error, and L{fromWireError} turns a wire error back
into the matching exception on the client side.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ErrorCode(IntEnum):
    """
    The error codes of the task protocol (see docs/protocol).
    """

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    TASK_FAILED = -32000
    TIMED_OUT = -32001
    WORKER_LOST = -32002
    OVERLOADED = -32003
    TOO_LARGE = -32004
    UNAUTHORISED = -32005
    UNAVAILABLE = -32006
    JOB_NOT_FOUND = -32007
    INTERRUPTED = -32008
    JOURNAL_UNAVAILABLE = -32009
    CANCELLED = -32800


class TaskServiceError(Exception):
    """
    Base of every error with a wire form.

    @ivar message: the human-readable message (the JSON-RPC C{message}).
    @ivar data: the JSON-RPC C{data} member, or L{None}.
    """

    code: int = ErrorCode.INTERNAL_ERROR
    defaultMessage: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = self.defaultMessage if message is None else message
        self.data = data
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, data={self.data!r})"

    def toWire(self) -> dict[str, Any]:
        """
        The JSON-RPC error object.
        """
        error: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(TaskServiceError):
    code = ErrorCode.PARSE_ERROR
    defaultMessage = "parse error"


class InvalidRequest(TaskServiceError):
    code = ErrorCode.INVALID_REQUEST
    defaultMessage = "invalid request"


class MethodNotFound(TaskServiceError):
    code = ErrorCode.METHOD_NOT_FOUND
    defaultMessage = "method not found"


class InvalidParams(TaskServiceError):
    code = ErrorCode.INVALID_PARAMS
    defaultMessage = "invalid params"


class InternalError(TaskServiceError):
    code = ErrorCode.INTERNAL_ERROR
    defaultMessage = "internal error"


class TaskFailed(TaskServiceError):
    """
    The task raised. C{data} is C{{"type": ..., "message": ...}} and, only
    when the server was asked to include them, C{"traceback"}.
    """

    code = ErrorCode.TASK_FAILED
    defaultMessage = "task raised an exception"

    @property
    def remoteType(self) -> str:
        return str((self.data or {}).get("type", ""))

    @property
    def remoteMessage(self) -> str:
        return str((self.data or {}).get("message", ""))


class TimedOut(TaskServiceError):
    code = ErrorCode.TIMED_OUT
    defaultMessage = "timed out"


class WorkerLost(TaskServiceError):
    code = ErrorCode.WORKER_LOST
    defaultMessage = "worker lost"


class Overloaded(TaskServiceError):
    code = ErrorCode.OVERLOADED
    defaultMessage = "overloaded"


class TooLarge(TaskServiceError):
    code = ErrorCode.TOO_LARGE
    defaultMessage = "too large"


class Unauthorised(TaskServiceError):
    code = ErrorCode.UNAUTHORISED
    defaultMessage = "unauthorised"


class Unavailable(TaskServiceError):
    code = ErrorCode.UNAVAILABLE
    defaultMessage = "task server unavailable"


class Unreachable(Unavailable):
    """
    The client could not send the call: no connection to the task server
    (so the call did not run there). On the wire: -32006.
    """

    defaultMessage = "the task server is unreachable"


class ServerLost(Unavailable):
    """
    The connection to the task server was lost while the call was in
    flight: it may or may not have run. On the wire: -32006.
    """

    defaultMessage = "connection to the task server lost"


class JobNotFound(TaskServiceError):
    """
    No job has this id (never submitted, or purged after C{--job-ttl}).
    C{data} is C{{"job": id}}.
    """

    code = ErrorCode.JOB_NOT_FOUND
    defaultMessage = "job not found"


class Interrupted(TaskServiceError):
    """
    A durable job was running when its task server went away, and its task
    is not safe to run again (not idempotent), or it ran too many times:
    it is not run again. C{data} is C{{"job": id, "attempts": n}}.
    """

    code = ErrorCode.INTERRUPTED
    defaultMessage = "interrupted"


class JournalUnavailable(TaskServiceError):
    """
    The job journal cannot record a job (disk full, read-only, ...): the
    job was not accepted. Plain calls are unaffected. C{data} is
    C{{"reason": ...}}.
    """

    code = ErrorCode.JOURNAL_UNAVAILABLE
    defaultMessage = "the job journal is unavailable"


class Cancelled(TaskServiceError):
    code = ErrorCode.CANCELLED
    defaultMessage = "cancelled"


_BY_CODE: dict[int, type[TaskServiceError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        TaskFailed,
        TimedOut,
        WorkerLost,
        Overloaded,
        TooLarge,
        Unauthorised,
        Unavailable,
        JobNotFound,
        Interrupted,
        JournalUnavailable,
        Cancelled,
    )
}


def fromWireError(error: Any) -> TaskServiceError:
    """
    Build the exception matching a JSON-RPC error object received from a
    server. Unknown codes keep their code and become L{TaskServiceError}s
    with C{data} holding the original object.
    """
    if not isinstance(error, dict):
        return InternalError("malformed error from server", {"error": error})
    code = error.get("code")
    message = error.get("message")
    message = message if isinstance(message, str) else None
    data = error.get("data")
    if not isinstance(code, int):
        return InternalError("malformed error from server", {"error": error})
    cls = _BY_CODE.get(code)
    if cls is None:
        result = TaskServiceError(message, data)
        result.code = code
        return result
    return cls(message, data)


def toWireError(reason: BaseException) -> TaskServiceError:
    """
    The one boundary where any exception becomes a wire error.

    L{TaskServiceError}s pass through; a Deferred's C{CancelledError} becomes
    L{Cancelled}; anything else is an L{InternalError} (its details stay in
    the server log, not on the wire).
    """
    if isinstance(reason, TaskServiceError):
        return reason
    # Imported here: this module is also imported by the light client code.
    from twisted.internet.defer import CancelledError

    if isinstance(reason, CancelledError):
        return Cancelled()
    return InternalError()


OUTCOMES = (
    "ok",
    "task_error",
    "timeout",
    "worker_lost",
    "cancelled",
    "overloaded",
    "invalid",
    "too_large",
    "unavailable",
    "unauthorised",
    "not_found",
    "interrupted",
    "journal_unavailable",
    "internal_error",
)
"""Every outcome a call can have, as the metrics label it (see
L{outcomeOf}); C{"ok"} is a result."""

_OUTCOME_BY_CODE: dict[int, str] = {
    ErrorCode.PARSE_ERROR: "invalid",
    ErrorCode.INVALID_REQUEST: "invalid",
    ErrorCode.METHOD_NOT_FOUND: "invalid",
    ErrorCode.INVALID_PARAMS: "invalid",
    ErrorCode.INTERNAL_ERROR: "internal_error",
    ErrorCode.TASK_FAILED: "task_error",
    ErrorCode.TIMED_OUT: "timeout",
    ErrorCode.WORKER_LOST: "worker_lost",
    ErrorCode.OVERLOADED: "overloaded",
    ErrorCode.TOO_LARGE: "too_large",
    ErrorCode.UNAUTHORISED: "unauthorised",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.JOB_NOT_FOUND: "not_found",
    ErrorCode.INTERRUPTED: "interrupted",
    ErrorCode.JOURNAL_UNAVAILABLE: "journal_unavailable",
    ErrorCode.CANCELLED: "cancelled",
}


def outcomeOf(error: TaskServiceError) -> str:
    """
    The outcome label (one of L{OUTCOMES}) of a call that failed with
    C{error}; an unknown code is C{"internal_error"}.
    """
    return _OUTCOME_BY_CODE.get(error.code, "internal_error")
