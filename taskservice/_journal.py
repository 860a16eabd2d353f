"""
The job journal's contract: job records, their states, the interface every
backend implements, and the group-commit writer the SQLite backend runs on.

A journal is written only by the task server's parent process. Every
operation returns a L{Deferred} that fires once what it wrote is committed
(so an answer to C{$/submit} means the job is on disk). Operations queued in
one reactor pass are committed together, in one transaction, by one writer
thread (L{GroupCommitWriter}): a burst of submits costs one commit, not one
each.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

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

T = TypeVar("T")


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


Item = TypeVar("Item")
I_contra = TypeVar("I_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


class BatchedOperation(Protocol[I_contra, T_co]):
    """
    An operation kind the writer runs for many items at once (one
    C{executemany} for a run of them, say), instead of one function call,
    one closure and one statement each.
    """

    def runMany(
        self, connection: Any, batch: Batch, items: Sequence[I_contra]
    ) -> Sequence[T_co]:
        """
        Apply C{items} (in their order) in the open transaction; return one
        result per item. Raise to have each item run again alone, in a
        transaction of its own, so only an item at fault fails.
        """


class _Operation:
    """
    One queued operation: a function (C{run}), or an item of a batched
    kind (C{kind}, C{item}); and the Deferred its result fires.
    """

    __slots__ = ("deferred", "item", "kind", "run")

    def __init__(
        self,
        run: Callable[[Any, Batch], Any] | None,
        deferred: Deferred[Any],
        kind: BatchedOperation[Any, Any] | None = None,
        item: Any = None,
    ) -> None:
        self.run = run
        self.deferred = deferred
        self.kind = kind
        self.item = item

    def alone(self, connection: Any, batch: Batch) -> Any:
        if self.kind is None:
            assert self.run is not None
            return self.run(connection, batch)
        (value,) = self.kind.runMany(connection, batch, [self.item])
        return value


_Results = list[tuple[_Operation, bool, Any]]


class GroupCommitWriter:
    """
    One thread owning one database connection, committing every operation
    queued meanwhile in one transaction.

    Operations queued in one reactor pass reach the thread together, at
    the pass's end; a group is what reached it while it committed the last
    one (at most C{maxBatch} operations, unless one pass queued more).

    C{connect} opens the connection (in the thread). An operation is a
    function of C{(connection, batch)} (L{run}), or an item of a
    L{BatchedOperation} (L{runItem}): consecutive items of one kind in a
    group are handed to it together, in the order they were queued. Either
    result fires its Deferred in the reactor thread after the commit. If an
    operation raises, the group is rolled back and its operations (items
    too) are run again one transaction each, so only the one at fault
    fails.

    With C{threaded=False} operations run at once in the caller's thread
    (deterministic unit tests on a fake reactor).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        *,
        threaded: bool = True,
        onCommitted: Callable[[Batch], None] | None = None,
        maxBatch: int = 10_000,
        name: str = "the job journal",
    ) -> None:
        self.reactor = reactor
        self._connect = connect
        self._threaded = threaded
        self._onCommitted = onCommitted
        self._maxBatch = maxBatch
        self._name = name
        self._queue: queue.SimpleQueue[list[_Operation] | None] = queue.SimpleQueue()
        self._pending: list[_Operation] = []
        """Operations queued in this reactor pass, handed over at its end."""
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._stopped: Deferred[None] | None = None
        self.commits = 0
        """Transactions committed so far (a group of operations each)."""

    def start(self) -> None:
        """
        Open the connection, here and now (so a journal that cannot be
        opened fails the caller at once, with L{JournalError}), then start
        the thread that uses it from then on.
        """
        self._connection = self._connect()
        if self._threaded:
            self._thread = threading.Thread(
                target=self._main, name="taskservice-journal", daemon=True
            )
            self._thread.start()

    def run(self, operation: Callable[[Any, Batch], T]) -> Deferred[T]:
        """
        Queue C{operation}; its Deferred fires after the commit.
        """
        d: Deferred[T] = Deferred()
        self._queued(_Operation(operation, d))
        return d

    def runItem(self, kind: BatchedOperation[Item, T], item: Item) -> Deferred[T]:
        """
        Queue C{item} for C{kind}; its Deferred fires with the item's result
        after the commit.
        """
        d: Deferred[T] = Deferred()
        self._queued(_Operation(None, d, kind, item))
        return d

    def _queued(self, op: _Operation) -> None:
        if not self._threaded:
            self._runBatch([op], deliver=self._deliver)
            return
        pending = self._pending
        if not pending:
            self.reactor.callLater(0, self._handOver)
        pending.append(op)

    def _handOver(self) -> None:
        """
        At the end of a reactor pass: give the writer thread what the pass
        queued, as one entry (one wake of the thread, and a group that
        holds the whole pass rather than its first operation alone).
        """
        pending, self._pending = self._pending, []
        if pending:
            self._queue.put(pending)

    def stop(self) -> Deferred[None]:
        """
        Commit what is queued, close the connection, end the thread.
        """
        if not self._threaded:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        if self._stopped is None:
            self._stopped = Deferred()
            self._handOver()
            self._queue.put(None)
        return self._stopped

    # -- the writer thread -------------------------------------------------

    def _main(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[_Operation] = []
            stopping = first is None
            if first is not None:
                batch += first
            while not stopping and len(batch) < self._maxBatch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch += more
            if batch:
                self._runBatch(
                    batch,
                    deliver=lambda committed, results: self.reactor.callFromThread(
                        self._deliver, committed, results
                    ),
                )
            if stopping:
                self._connection.close()
                self._connection = None
                stopped = self._stopped
                assert stopped is not None
                self.reactor.callFromThread(stopped.callback, None)
                return

    def _runBatch(
        self,
        ops: list[_Operation],
        deliver: Callable[[list[Batch], _Results], None],
    ) -> None:
        connection = self._connection
        batch = Batch()
        try:
            values = _runGroup(connection, batch, ops)
            connection.commit()
        except BaseException as e:
            _rollback(connection)
            if len(ops) == 1:
                deliver([], [(ops[0], False, e)])
                return
            # Find the one at fault: each again, alone.
            committed: list[Batch] = []
            results: _Results = []
            for op in ops:
                alone = Batch()
                try:
                    value = op.alone(connection, alone)
                    connection.commit()
                except BaseException as error:
                    _rollback(connection)
                    results.append((op, False, error))
                else:
                    committed.append(alone)
                    results.append((op, True, value))
            deliver(committed, results)
            return
        deliver(
            [batch], [(op, True, value) for op, value in zip(ops, values, strict=True)]
        )

    def _deliver(self, committed: list[Batch], results: _Results) -> None:
        self.commits += len(committed)
        onCommitted = self._onCommitted
        if onCommitted is not None:
            for batch in committed:
                onCommitted(batch)
        for op, ok, value in results:
            if ok:
                op.deferred.callback(value)
            else:
                op.deferred.errback(Failure(_asJournalError(value, self._name)))


def _runGroup(connection: Any, batch: Batch, ops: list[_Operation]) -> list[Any]:
    """
    Run C{ops} in order in one transaction: a function each, and each run
    of consecutive items of one kind in one L{BatchedOperation.runMany}.
    """
    values: list[Any] = []
    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        kind = op.kind
        if kind is None:
            assert op.run is not None
            values.append(op.run(connection, batch))
            i += 1
            continue
        j = i + 1
        while j < n and ops[j].kind is kind:
            j += 1
        items = [other.item for other in ops[i:j]]
        out = kind.runMany(connection, batch, items)
        if len(out) != len(items):
            raise RuntimeError(f"{kind!r} gave {len(out)} results for {len(items)}")
        values += out
        i = j
    return values


def _rollback(connection: Any) -> None:
    with contextlib.suppress(Exception):
        connection.rollback()


def _asJournalError(error: BaseException, name: str) -> BaseException:
    if isinstance(error, JournalError) or not isinstance(error, Exception):
        return error
    return JournalError(f"{name}: {type(error).__name__}: {error}")
