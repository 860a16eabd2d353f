"""
The job journal's contract: job records, their states, the interface every
backend implements, and the group-commit writer the SQLite backend runs on.

A journal is written only by the task server's parent process. Every
operation returns a L{Deferred} that fires once what it wrote is committed
(so an answer to C{$/submit} means the job is on disk). Operations queued in
one reactor pass are committed together, in one transaction, by one writer
thread (L{GroupCommitWriter}): a burst of submits costs one commit, not one
each.

The records and states are defined in L{taskservice._jobrecords}, the
writer in L{taskservice._groupcommit}; both are re-exported here, so
C{from taskservice._journal import X} keeps working for every name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from taskservice._groupcommit import BatchedOperation, GroupCommitWriter
from taskservice._jobrecords import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    INTERRUPTED,
    PENDING_STATES,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
    Batch,
    Claimed,
    JobRecord,
    JournalError,
    NewJob,
    Recovered,
    columnText,
    fromColumnText,
    recordFromRow,
)

__all__ = [
    "CANCELLED",
    "FAILED",
    "FINAL_STATES",
    "INTERRUPTED",
    "PENDING_STATES",
    "QUEUED",
    "RUNNING",
    "SCHEDULED",
    "STATES",
    "SUCCEEDED",
    "Batch",
    "BatchedOperation",
    "Claimed",
    "GroupCommitWriter",
    "IJournal",
    "JobRecord",
    "JournalError",
    "NewJob",
    "Recovered",
    "columnText",
    "fromColumnText",
    "recordFromRow",
]


class IJournal(Protocol):
    """
    Where durable jobs live. Every method's Deferred fires once what it
    wrote is committed, or fails with L{JournalError}.
    """

    def open(self) -> None:
        """
        Open (create or migrate) the journal, at once; raise L{JournalError}
        for a file that is not a journal of ours, or cannot be opened.
        """

    def close(self) -> Deferred[None]:
        """
        Commit what is pending and close.
        """

    def submit(
        self, job: NewJob, *, running: bool = False
    ) -> Deferred[tuple[JobRecord, bool]]:
        """
        Record C{job}; fire with its record and whether it is new. With a
        C{key} that an unpurged job already holds, that job is returned
        instead (and nothing is written).

        With C{running=True} (the caller has a free slot, and runs the job
        once this fires) the job is recorded already claimed: state
        C{running}, its first attempt counted, started at its C{createdAt},
        as L{claim} would leave it; one write instead of an insert and a
        claim. The caller passes it only for a job due now.
        """

    def claim(self, limit: int, now: float) -> Deferred[Claimed]:
        """
        Move up to C{limit} jobs due by C{now} (oldest first) to running,
        counting an attempt each.
        """

    def progress(self, jobId: str, update: Mapping[str, Any]) -> None:
        """
        Remember C{update} as the running job's progress (written with the
        next commit; only the latest per job is kept).
        """

    def finish(
        self,
        jobId: str,
        state: str,
        now: float,
        expiresAt: float,
        *,
        result: str | None = None,
        error: Mapping[str, Any] | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> Deferred[bool]:
        """
        End a running job in a final C{state}; fire with whether it was
        running.
        """

    def retryAt(
        self, jobId: str, runAt: float, error: Mapping[str, Any]
    ) -> Deferred[bool]:
        """
        Put a running job back to wait until C{runAt}, with its last error.
        """

    def release(self, jobId: str) -> Deferred[bool]:
        """
        Put a running job back in the queue without counting the attempt
        (it never started: the pool refused it).
        """

    def cancel(
        self, jobId: str, now: float, expiresAt: float, error: Mapping[str, Any]
    ) -> Deferred[JobRecord | None]:
        """
        Cancel a waiting job; fire with the job as it now is (a running or
        finished job is returned unchanged), or L{None} if there is none.
        """

    def recordTick(
        self, schedule: str, tick: float, job: NewJob
    ) -> Deferred[JobRecord | None]:
        """
        Run schedule C{schedule}'s tick at C{tick} (epoch seconds), once
        across every server sharing this journal: in ONE transaction, if
        no tick of C{schedule} at or after C{tick} is recorded, record
        C{tick} as its last tick (a row per schedule, updated only to a
        later tick: a conditional update, never a second row) and insert
        C{job} as L{submit} would (queued, or scheduled if its C{runAt} is
        after its C{createdAt}); fire with the job's record. If C{job}'s
        key is already held, the tick is recorded all the same and the job
        holding the key is returned.

        Otherwise (this tick, or a later one, was recorded: by another
        server, or by this one before a restart) write nothing and fire
        with L{None}. So each tick yields at most one job, and a tick older
        than one already run never runs.
        """

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        The job C{jobId}, or L{None}.
        """

    def list(
        self, state: str | None, method: str | None, limit: int
    ) -> Deferred[list[JobRecord]]:
        """
        The newest C{limit} jobs, optionally only those in C{state} or of
        C{method}.
        """

    def recover(
        self, now: float, expiresAt: float, rerun: Callable[[JobRecord], bool]
    ) -> Deferred[Recovered]:
        """
        At start: every job left running by an earlier process is queued
        again where C{rerun(job)} allows, else interrupted.
        """

    def purge(self, now: float) -> Deferred[int]:
        """
        Delete finished jobs whose time to be kept has passed.
        """

    def counts(self) -> dict[str, int]:
        """
        Jobs by state, as last committed.
        """

    def sizeBytes(self) -> int:
        """
        The journal's size on disk.
        """
