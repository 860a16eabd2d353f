"""
The group-commit writer: one thread owning one database connection,
committing every operation queued meanwhile in one transaction (the SQLite
and PostgreSQL journals run on it).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._jobrecords import Batch, JournalError

T = TypeVar("T")
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
