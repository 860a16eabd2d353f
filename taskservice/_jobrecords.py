"""
What a job journal holds and hands out: the states, the records, the JSON
text of its columns, and what one transaction changed (L{Batch}); shared by
the journal interface (L{taskservice._journal}), the group-commit writer and
both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskservice import _json

QUEUED = "queued"
SCHEDULED = "scheduled"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"

PENDING_STATES = (QUEUED, SCHEDULED)
"""States of a job waiting to run."""
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
"""States a job never leaves (until it is purged)."""
STATES = (QUEUED, SCHEDULED, RUNNING, *FINAL_STATES)


@dataclass(frozen=True, slots=True)
class NewJob:
    """
    A job to record, as C{$/submit} validated it.

    @ivar params: the task's params, already JSON text.
    @ivar maxAttempts: how many runs it may have (retries + 1).
    @ivar backoff: the first retry's delay in seconds.
    @ivar runAt: when it may run (epoch seconds).
    """

    id: str
    method: str
    params: str
    key: str | None
    maxAttempts: int
    backoff: float
    timeout: float | None
    runAt: float
    createdAt: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """
    A job as the journal holds it. Times are epoch seconds.

    @ivar params: the task's params as JSON text.
    @ivar result: the task's result as JSON text, once it succeeded.
    @ivar error: the wire error object (code, message, data) of a failed,
        cancelled or interrupted job, or of the last failed attempt of a
        job waiting to be retried.
    @ivar progress: the last progress update recorded, decoded.
    """

    id: str
    method: str
    params: str
    key: str | None
    state: str
    attempts: int
    maxAttempts: int
    backoff: float
    timeout: float | None
    runAt: float
    createdAt: float
    startedAt: float | None
    finishedAt: float | None
    progress: Mapping[str, Any] | None
    result: str | None
    error: Mapping[str, Any] | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def recordFromRow(row: Sequence[Any]) -> JobRecord:
    """
    The record of a journal row whose first 16 columns are L{JobRecord}'s
    fields in order, progress and error as JSON text (L{columnText});
    both backends select them so.
    """
    (jobId, method, params, key, state, attempts, maxAttempts, backoff) = row[:8]
    (timeout, runAt, createdAt, startedAt, finishedAt) = row[8:13]
    progress, result, error = row[13:16]
    return JobRecord(
        jobId,
        method,
        params,
        key,
        state,
        attempts,
        maxAttempts,
        backoff,
        timeout,
        runAt,
        createdAt,
        startedAt,
        finishedAt,
        fromColumnText(progress),
        result,
        fromColumnText(error),
    )


def columnText(value: Any) -> str:
    """
    C{value} as the JSON text a journal column holds.
    """
    return _json.dumps(value).decode()


def fromColumnText(text: str | None) -> Any:
    """
    The value of a journal column's JSON text (L{None} stays L{None}).
    """
    return None if text is None else _json.loads(text.encode())


class ProgressBuffer:
    """
    The latest progress of each running job, held until the next reactor
    pass hands them all to C{write} at once: what both journals'
    L{IJournal.progress <taskservice._journal.IJournal.progress>} keep.
    """

    def __init__(
        self, reactor: Any, write: Callable[[dict[str, Mapping[str, Any]]], None]
    ) -> None:
        self._reactor = reactor
        self._write = write
        self._updates: dict[str, Mapping[str, Any]] = {}
        self._queued = False

    def add(self, jobId: str, update: Mapping[str, Any]) -> None:
        """
        Keep C{update} as C{jobId}'s latest; write them next pass.
        """
        self._updates[jobId] = update
        if not self._queued:
            self._queued = True
            self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write what is held now (before an operation that must see it).
        """
        self._queued = False
        if self._updates:
            updates, self._updates = self._updates, {}
            self._write(updates)

    def pop(self, jobId: str) -> Mapping[str, Any] | None:
        """
        Take C{jobId}'s held update, if any, so its end writes it instead.
        """
        return self._updates.pop(jobId, None)


@dataclass(frozen=True, slots=True)
class Claimed:
    """
    What L{IJournal.claim} hands out: the jobs now running here, and when
    the next job waiting for its time is due (L{None}: none waits).
    """

    jobs: Sequence[JobRecord]
    nextRunAt: float | None


@dataclass(frozen=True, slots=True)
class Recovered:
    """
    What L{IJournal.recover} did with the jobs found running at start.
    """

    requeued: Sequence[str]
    interrupted: Sequence[str]


class JournalError(Exception):
    """
    The journal cannot be opened or written (not a journal of ours, a newer
    schema, disk full, read-only ...). The message says which.
    """


class Batch:
    """
    What one transaction of the writer changed, handed to its operations:
    they note state transitions here, applied to the counts only once the
    transaction committed.
    """

    __slots__ = ("transitions",)

    def __init__(self) -> None:
        self.transitions: list[tuple[str | None, str | None]] = []

    def moved(self, old: str | None, new: str | None) -> None:
        self.transitions.append((old, new))

    def applyTo(self, counts: dict[str, int]) -> None:
        """
        Move the jobs this transaction moved in C{counts} (jobs by state).
        """
        for old, new in self.transitions:
            if old is not None:
                counts[old] -= 1
            if new is not None:
                counts[new] += 1
