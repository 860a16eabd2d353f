"""
What a L{taskservice.pool.ProcessPool} shows of itself: its observer and
call listeners, its counters, and C{$/stats}. A base of the pool, kept
apart from its lifecycle and calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from taskservice._call import CallListener, CallObserver
from taskservice._placement import Placement
from taskservice._recentcalls import RecentCalls
from taskservice._scheduler import Scheduler
from taskservice._supervisor import Supervisor
from taskservice._task import Registry
from taskservice._workerproc import WorkerProcess


class PoolView:
    """
    The pool's observation API (see L{taskservice.pool.ProcessPool}).
    """

    reactor: Any
    registry: Registry
    maxQueue: int
    recentCalls: RecentCalls
    _scheduler: Scheduler
    _supervisor: Supervisor
    _placement: Placement
    _memoryOf: Callable[[int], int | None]

    def isShort(self, name: str) -> bool:
        """
        Whether calls of task C{name} have been measured to be short.
        """
        return self._placement.isShort(name)

    # -- observation -------------------------------------------------------

    @property
    def observer(self) -> CallObserver | None:
        return self._scheduler.observer

    @observer.setter
    def observer(self, observer: CallObserver | None) -> None:
        self._scheduler.observer = observer

    def foldCalls(self) -> None:
        """
        Hand the calls ended since the last time to the readers that take
        them in batches (L{recentCalls}, an observer with
        C{callsFinished}): before reading them.
        """
        self._scheduler.records.fold()

    def addCallListener(self, listener: CallListener) -> None:
        """
        Tell C{listener} of the end of every call from now on (see
        L{CallListener}).
        """
        self._scheduler.listeners.append(listener)

    def removeCallListener(self, listener: CallListener) -> None:
        self._scheduler.listeners.remove(listener)

    @property
    def completed(self) -> int:
        """
        Calls that returned a result.
        """
        return self._scheduler.completed

    @property
    def failed(self) -> int:
        """
        Calls that ended in a task error, a too-large result, a deadline or
        a lost worker.
        """
        return self._scheduler.failed

    @property
    def workerExits(self) -> Counter[str]:
        """
        Workers replaced so far, and failed spawns, by cause.
        """
        return self._supervisor.workerExits

    @property
    def restarts(self) -> int:
        """
        Workers replaced so far (crashed, killed, or recycled), and failed
        spawns: the sum of L{workerExits}.
        """
        return sum(self._supervisor.workerExits.values())

    @property
    def workers(self) -> frozenset[WorkerProcess]:
        return frozenset(self._supervisor.workers)

    def stats(self) -> dict[str, Any]:
        """
        Counters for C{$/stats}.
        """
        supervisor = self._supervisor
        self.foldCalls()
        uptime = 0.0
        startedAt = self._scheduler.startedAt
        if startedAt is not None:
            uptime = self.reactor.seconds() - startedAt
        return {
            "workers": supervisor.workerStats(),
            "running": sum(len(w.calls) for w in supervisor.workers),
            "queued": len(self._scheduler.queue),
            "maxQueue": self.maxQueue,
            "completed": self.completed,
            "failed": self.failed,
            "restarts": self.restarts,
            "restartsByCause": dict(self.workerExits),
            "uptime": round(uptime, 3),
            "tasks": sorted(self.registry),
            "idempotentTasks": sorted(
                name for name, spec in self.registry.items() if spec.idempotent
            ),
            "workerList": self.workerList(),
            "latency": self.recentCalls.latency(self.reactor.seconds()),
            "recentFailures": self.recentCalls.failures(),
        }

    def workerList(self) -> list[dict[str, Any]]:
        """
        Each live worker, by id: C{id}, C{pid}, C{state}, C{rss} (resident
        memory in bytes, L{None} if unknown), C{served} (calls it answered)
        and C{holding} (calls it holds now, running or in its pipe).
        """
        return [
            {
                "id": worker.workerID,
                "pid": worker.pid,
                "state": worker.state.value,
                "rss": None if worker.pid is None else self._memoryOf(worker.pid),
                "served": worker.completed,
                "holding": len(worker.calls),
            }
            for worker in sorted(self._supervisor.workers, key=lambda w: w.workerID)
        ]
