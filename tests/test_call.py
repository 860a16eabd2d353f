"""
Unit tests of a call's lifecycle (L{taskservice._call}), of the one point
where every call's end is told (L{CallListener}), of the queue interface
(L{taskservice._queue}) and of the pool's own lifecycle states, on the
in-memory FakeProcessReactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import CancelledError

from taskservice._call import Call, CallState
from taskservice.errors import (
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TimedOut,
    Unavailable,
    WorkerLost,
)
from taskservice.pool import PoolState, ProcessPool
from taskservice.testing import FakeProcessReactor
from tests.test_pool import failure, makePool, result


def _state(call: Call) -> CallState:
    return call.state  # (read afresh: mypy would narrow call.state)


def _poolState(pool: ProcessPool) -> PoolState:
    return pool.state


class Journal:
    """
    A listener keeping what a job journal would: a copy of each end.
    """

    def __init__(self) -> None:
        self.ends: list[dict[str, Any]] = []

    def callEnded(self, call: Call) -> None:
        assert call.outcome is not None
        self.ends.append(
            {
                "cid": call.cid,
                "task": call.task,
                "args": list(call.args),
                "job": call.job,
                "timeout": call.timeout,
                "kind": call.outcome.kind,
                "value": call.outcome.value,
                "error": type(call.outcome.error),
                "queued": call.queuedSeconds,
                "run": call.runSeconds,
                "answered": call.deferred.called,
            }
        )


class Legacy:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float | None, float | None]] = []

    def callFinished(
        self, task: str, outcome: str, queued: float | None, run: float | None
    ) -> None:
        self.seen.append((task, outcome, queued, run))


def test_everyEndIsHeardOnceWithEverything() -> None:
    """
    A listener hears every call's end once, before its caller, with task,
    arguments, options, outcome (result or error) and timings; the
    C{CallObserver} hears the same ends as before.
    """
    reactor, pool = makePool(size=1, maxQueue=1)
    journal, legacy = Journal(), Legacy()
    pool.addCallListener(journal)
    pool.observer = legacy
    reactor.readyAll()
    ok = pool.submit("add", [1, 2], job={"id": "j", "attempt": 1}, timeout=5)
    queued = pool.submit("add", [3, 4])
    refused = pool.submit("add", [5, 6])
    unknown = pool.submit("nope")
    reactor.advance(2)
    reactor.workers[0].runCalls(pool.registry)
    assert (result(ok), result(queued)) == (3, 7)
    failure(refused, Overloaded)
    failure(unknown, MethodNotFound)
    ends = {(e["task"], e["cid"]): e for e in journal.ends}
    assert len(journal.ends) == 4
    first = ends[("add", 1)]
    assert first["args"] == [1, 2] and first["job"] == {"id": "j", "attempt": 1}
    assert first["timeout"] == 5 and first["kind"] == "ok" and first["value"] == 3
    assert first["queued"] == 0 and first["run"] == 2
    assert not first["answered"], "listeners hear it before the caller"
    assert ends[("add", 3)]["kind"] == "overloaded"
    assert ends[("add", 3)]["queued"] is None
    assert ends[("", 0)]["kind"] == "invalid"
    assert ends[("", 0)]["error"] is MethodNotFound
    assert legacy.seen == [
        ("add", "overloaded", None, None),
        ("", "invalid", None, None),
        ("add", "ok", 0.0, 2.0),
        ("add", "ok", 2.0, 0.0),
    ]
    pool.stopService()


def test_errorEndsCarryTheError() -> None:
    """
    Task errors, deadlines, cancels and lost workers each reach the listener
    with their error; calls still queued when the pool stops too.
    """
    reactor, pool = makePool(size=2)
    journal = Journal()
    pool.addCallListener(journal)
    reactor.readyAll()
    raised = pool.submit("add", [1, "x"])
    reactor.runAllCalls(pool.registry)
    slow = pool.submit("hang", timeout=1)
    lost = pool.submit("hang", timeout=5)
    reactor.advance(1)
    failure(slow, TimedOut)
    next(w for w in reactor.alive if w.calls and not w.killed).exit(signal=9)
    failure(lost, WorkerLost)
    cancelled = pool.submit("add", [1, 1])
    cancelled.cancel()
    failure(raised, TaskFailed)
    failure(cancelled, CancelledError)
    kinds = [(e["kind"], e["error"]) for e in journal.ends]
    assert kinds == [
        ("task_error", TaskFailed),
        ("timeout", TimedOut),
        ("worker_lost", WorkerLost),
        ("cancelled", CancelledError),
    ]
    reactor.reapAll()
    pool.stopService()
    reactor.reapAll()


def test_queuedCallsAtStopAreUnavailable() -> None:
    """
    Calls still queued when the drain time is up end as unavailable, heard
    by the listener.
    """
    reactor, pool = makePool(size=1, shutdownTimeout=1)
    journal = Journal()
    pool.addCallListener(journal)
    reactor.readyAll()
    running = pool.submit("hang", timeout=10)
    waiting = pool.submit("add", [1, 1])
    pool.stopService()
    assert _poolState(pool) is PoolState.DRAINING
    reactor.advance(1)
    assert _poolState(pool) is PoolState.CLOSING
    failure(waiting, Unavailable)
    reactor.reapAll()
    failure(running, WorkerLost)
    assert _poolState(pool) is PoolState.STOPPED
    assert [e["kind"] for e in journal.ends] == ["unavailable", "worker_lost"]


def test_callStates() -> None:
    """
    A call goes QUEUED -> RUNNING -> DONE; one cancelled while its
    coroutine runs is ABANDONED until its worker lets it go.
    """
    reactor, pool = makePool(size=1)
    seen: list[Call] = []

    class Keep:
        def callEnded(self, call: Call) -> None:
            seen.append(call)

    pool.addCallListener(Keep())
    d = pool.submit("add", [1, 1])
    (call,) = pool._scheduler.queue
    assert _state(call) is CallState.QUEUED
    reactor.readyAll()
    assert _state(call) is CallState.RUNNING
    reactor.runAllCalls(pool.registry)
    assert _state(call) is CallState.DONE and result(d) == 2
    n = pool.submit("nap", [10])
    worker = reactor.workers[0]
    n.cancel()
    (napping,) = [c for c in seen if c.task == "nap"]
    assert _state(napping) is CallState.ABANDONED
    worker.acknowledgeCancel(worker.calls[0]["cid"])
    assert _state(napping) is CallState.DONE
    pool.stopService()
    reactor.reapAll()


class Lifo:
    """
    A queue that places the newest call first: the pool must not assume
    FIFO (its overload check included).
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(self.calls)

    def push(self, call: Call) -> None:
        self.calls.append(call)

    def peek(self) -> Call | None:
        return self.calls[-1] if self.calls else None

    def pop(self) -> Call:
        return self.calls.pop()

    def remove(self, call: Call) -> None:
        self.calls.remove(call)

    def removeWhere(self, predicate: Callable[[Call], bool]) -> list[Call]:
        taken = [c for c in self.calls if predicate(c)]
        self.calls = [c for c in self.calls if not predicate(c)]
        return taken

    def clear(self) -> list[Call]:
        taken, self.calls = self.calls, []
        return taken


def test_anotherQueue() -> None:
    """
    A pool runs calls in the order its queue gives; a full queue still
    refuses the newcomer as overloaded.
    """
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1, maxQueue=3, queue=Lifo())
    pool.startService()
    first, second, third = (pool.submit("add", [i, 0]) for i in (1, 2, 3))
    failure(pool.submit("add", [4, 0]), Overloaded)
    assert len(pool._scheduler.queue) == 3
    reactor.readyAll()
    reactor.runAllCalls(pool.registry)
    assert [result(d) for d in (first, second, third)] == [1, 2, 3]
    worker = reactor.workers[0]
    sent = [m["args"][0] for m in worker.messages if m["op"] == "call"]
    assert sent == [3, 2, 1], "newest first, as the queue says"
    stopped = pool.stopService()
    reactor.reapAll()
    assert result(stopped) is None


def test_poolStates() -> None:
    """
    The pool goes STOPPED -> RUNNING -> DRAINING -> CLOSING -> STOPPED, and
    takes calls only while RUNNING.
    """
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    assert _poolState(pool) is PoolState.STOPPED
    failure(pool.submit("add", [1, 1]), Unavailable)
    pool.startService()
    assert _poolState(pool) is PoolState.RUNNING
    reactor.readyAll()
    stopped = pool.stopService()
    assert _poolState(pool) is PoolState.CLOSING, "nothing to drain"
    failure(pool.submit("add", [1, 1]), Unavailable)
    reactor.reapAll()
    assert result(stopped) is None
    assert _poolState(pool) is PoolState.STOPPED
