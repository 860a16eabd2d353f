"""
The small pieces of the job service: job ids, a caller waiting for a job's
end, a job running here, and the helpers that deliver a job's outcome.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskservice._journal import SUCCEEDED, JobRecord, fromColumnText
from taskservice.errors import JournalUnavailable, fromWireError

if TYPE_CHECKING:
    from taskservice._jobengine import JobEngine

ProgressCallback = Callable[[Mapping[str, Any]], None]


class JobIds:
    """
    Job ids: 16 url-safe characters, a random prefix drawn once per process
    (48 bits from L{secrets}) and a counter (48 bits), so a new id costs a
    counter step rather than a read of the system's random source.

    Ids are names, not secrets: anyone allowed to call the server (the
    token, see docs/security) may list every job with C{$/jobs}. They are
    unique: the prefix differs from process to process (a clash of two
    processes' prefixes, about 1 in 2**48 for any two, would make the
    journal refuse the clashing submit with -32009, never mix two jobs up).
    """

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._next = 1 << 48

    def __call__(self) -> str:
        n = self._next
        if n >= 1 << 48:
            self._prefix = secrets.token_urlsafe(6)
            n = 0
        self._next = n + 1
        return self._prefix + base64.urlsafe_b64encode(n.to_bytes(6, "big")).decode()


class _Attacher:
    """
    One caller waiting for a job's end (C{$/attach}), with its progress
    callback.
    """

    __slots__ = ("deferred", "onProgress", "owner")

    def __init__(
        self,
        jobs: JobEngine,
        jobId: str,
        onProgress: ProgressCallback | None,
        owner: object,
    ) -> None:
        self.onProgress = onProgress
        self.owner = owner
        self.deferred: Deferred[Any] = Deferred(lambda d: jobs._detach(jobId, self))


class _Run:
    """
    A job running here: its pool call, latest progress, and who waits.
    """

    __slots__ = ("call", "cancelling", "job", "progress")

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        self.progress: Mapping[str, Any] | None = job.progress
        self.call: Deferred[Any] | None = None
        self.cancelling: list[Deferred[dict[str, Any]]] | None = None


def _detached(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred firing as C{d} does, whose cancelling (a caller giving up)
    leaves C{d}, and the bookkeeping its callbacks do, alone.
    """
    out: Deferred[Any] = Deferred()
    d.chainDeferred(out)
    return out


def _deliver(attacher: _Attacher, job: JobRecord) -> None:
    if job.state == SUCCEEDED:
        value = fromColumnText(job.result)
        attacher.deferred.callback(value)
    else:
        attacher.deferred.errback(Failure(fromWireError(job.error or {})))


def _journalError(failure: Failure) -> JournalUnavailable:
    return JournalUnavailable(
        "the job journal is unavailable", {"reason": failure.getErrorMessage()}
    )
