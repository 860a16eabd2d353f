"""
Operations of one kind merged into one statement per transaction.

Each statement to PostgreSQL costs a round trip (about 0.1 ms on loopback,
more across machines) in the journal's one writer thread; a group commit of
a hundred submits made of a hundred INSERTs spends most of its time waiting
for them. A L{Merger} queues the operations of one kind (submits, ends,
reads) and hands them to one function that does them all in one statement
(C{unnest} of arrays), inside the writer's current transaction.

An item joins the group queued last only while nothing else was queued to
the writer after it, so every operation still runs after every operation
queued before it (a read sees every write asked for before it).

A kind's statement may be sent without waiting for its result (its
results a L{taskservice._pgwire.Later}, known after the commit): the
writer's pipeline then carries the group's statements and its commit in
one round trip.

If the merged statement fails (at once, or when the pipeline reaches the
server), its transaction is rolled back (the writer then runs each
operation again alone) and the group's items are done again one by one,
each in a savepoint of its own and run there and then, so only the item
at fault fails (a bad item loses nothing else). The happy path costs no
savepoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskservice._journal import Batch, JournalError
from taskservice._pgwire import Later, settled

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class Writer(Protocol):
    """
    The journal's way to its writer, counting the operations queued.
    """

    queued: int

    def enqueue(self, operation: Callable[[Any, Batch], Any]) -> Deferred[Any]: ...


class Merger(Generic[I, R]):
    """
    Queue items; do each group of them with C{together(db, batch, items)}
    (one result per item, in order, or an L{ItemError} for an item that
    failed alone; or a L{Later} of them), or, if that transaction fails,
    with C{together(db, batch, [item])} for each, in a savepoint.
    """

    def __init__(
        self,
        writer: Writer,
        together: Callable[
            [Any, Batch, Sequence[I]],
            Sequence[R | ItemError] | Later[list[R | ItemError]],
        ],
        name: str,
    ) -> None:
        self._writer = writer
        self._together = together
        self._name = name
        self._lock = threading.Lock()
        self._open: _Group[I, R] | None = None
        self._openAt = -1

    def add(self, item: I) -> Deferred[R]:
        d: Deferred[R] = Deferred()
        with self._lock:
            group = self._open
            if group is not None and self._openAt == self._writer.queued:
                group.items.append((item, d))
                return d
            group = self._open = _Group(self)
            group.items.append((item, d))
        done = self._writer.enqueue(group)
        with self._lock:
            if self._open is group:
                self._openAt = self._writer.queued
        done.addCallbacks(self._done, self._failed, errbackArgs=(group,))
        return d

    def _started(self, group: _Group[I, R]) -> None:
        with self._lock:
            if self._open is group:
                self._open = None

    def _run(self, db: Any, batch: Batch, items: list[I], group: _Group[I, R]) -> Any:
        if len(items) <= 1 or not group.failed:
            return self._together(db, batch, items)
        results: list[Any] = []
        for item in items:
            db.execute("SAVEPOINT one")
            alone = Batch()
            try:
                out = self._together(db, alone, [item])
                # Run it here and now: its error is its own.
                db.settle()
                (result,) = settled(out)
            except Exception as e:
                db.execute("ROLLBACK TO SAVEPOINT one")
                results.append(ItemError(e))
            else:
                db.execute("RELEASE SAVEPOINT one")
                results.append(result)
                batch.transitions.extend(alone.transitions)
        return results

    def _done(self, outcome: tuple[list[tuple[I, Deferred[R]]], Any]) -> None:
        items, results = outcome
        results = settled(results)
        for (_, d), result in zip(items, results, strict=True):
            if isinstance(result, ItemError):
                error = result.error
                d.errback(
                    Failure(
                        JournalError(f"{self._name}: {type(error).__name__}: {error}")
                    )
                )
            else:
                d.callback(result)

    def _failed(self, failure: Failure, group: _Group[I, R]) -> None:
        # The whole transaction failed (the connection, the commit): every
        # item of the group fails with it.
        self._started(group)
        for _, d in group.items:
            d.errback(failure)


class _Group(Generic[I, R]):
    """
    One writer operation of a L{Merger}: the items that joined it until it
    started (the same ones if the writer runs it again alone, after its
    transaction failed).
    """

    def __init__(self, merger: Merger[I, R]) -> None:
        self.merger = merger
        self.items: list[tuple[I, Deferred[R]]] = []
        self.ran = False
        self.failed = False

    def __call__(
        self, db: Any, batch: Batch
    ) -> tuple[list[tuple[I, Deferred[R]]], Any]:
        self.merger._started(self)
        # Run again: the writer rolled back the transaction it ran in (its
        # statement failed, or perhaps another's: each item alone finds out).
        self.failed = self.ran
        self.ran = True
        return self.items, self.merger._run(db, batch, [i for i, _ in self.items], self)


class ItemError:
    """
    An item's own error, as a result (so the others' results stand).
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
