"""
Recycling: replacing a worker after C{maxTasksPerChild} calls, or when its
resident memory passes C{maxMemory}, without ever leaving the pool short.

The successor is started ahead of time (for C{maxTasksPerChild}, at about
90% of it); the worker due for replacement serves on until its successor
has said it is ready, and only then becomes RETIRING: it finishes the calls
it has, takes no new ones, and its command pipe is closed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from taskservice._call import poolLog
from taskservice._workerproc import WorkerProcess, WorkerState


class Workers(Protocol):
    """
    What recycling needs of the supervisor.
    """

    workerExits: Counter[str]

    def canStart(self) -> bool: ...

    def spawn(self) -> WorkerProcess | None: ...


class Recycler:
    """
    Decides, after each call, whether its worker is due for replacement.
    """

    def __init__(
        self,
        workers: Workers,
        maxTasksPerChild: int | None,
        maxMemory: int | None,
        memoryOf: Callable[[int], int | None],
    ) -> None:
        self.workers = workers
        self.maxTasksPerChild = maxTasksPerChild
        self.maxMemory = maxMemory
        self.memoryOf = memoryOf

    def afterCall(self, worker: WorkerProcess) -> None:
        """
        A call left C{worker}: close it if it is retiring and done, or
        recycle it when it is due.
        """
        state = worker.state
        if state is WorkerState.RETIRING:
            if not worker.calls:
                worker.close()
        elif state is not WorkerState.DEAD:
            self._maybeRecycle(worker)

    def _maybeRecycle(self, worker: WorkerProcess) -> None:
        """
        Recycling never stalls callers: a worker due for replacement keeps
        serving until its successor is ready, and the successor is started
        ahead of time (at 90% of C{maxTasksPerChild}).
        """
        limit = self.maxTasksPerChild
        if limit is not None:
            if worker.completed >= limit:
                self._dueForRetirement(worker, "recycled")
                return
            if worker.completed >= limit - max(1, limit // 10):
                self._ensureSuccessor(worker)
        if self.maxMemory is not None and worker.pid is not None:
            rss = self.memoryOf(worker.pid)
            if rss is not None and rss > self.maxMemory:
                if worker.retireCause is None:
                    poolLog.info(
                        "worker {workerID} uses {rss} bytes, over {limit}:"
                        " replacing it",
                        workerID=worker.workerID,
                        rss=rss,
                        limit=self.maxMemory,
                    )
                self._dueForRetirement(worker, "memory")

    def _ensureSuccessor(self, worker: WorkerProcess) -> None:
        successor = worker.successor
        if successor is not None and successor.state is not WorkerState.DEAD:
            return
        if not self.workers.canStart():
            return  # workers cannot start now: keep this one
        successor = self.workers.spawn()
        if successor is not None:
            successor.predecessor = worker
        worker.successor = successor

    def _dueForRetirement(self, worker: WorkerProcess, cause: str) -> None:
        worker.retireCause = worker.retireCause or cause
        self._ensureSuccessor(worker)
        successor = worker.successor
        if successor is not None and successor.state in (
            WorkerState.IDLE,
            WorkerState.BUSY,
        ):
            self.retire(worker)

    def retire(self, worker: WorkerProcess) -> None:
        cause = worker.retireCause or "recycled"
        self.workers.workerExits[cause] += 1
        poolLog.info(
            "replacing worker {workerID} (pid {pid}) after {completed} calls: {cause}",
            workerID=worker.workerID,
            pid=worker.pid,
            completed=worker.completed,
            cause=cause,
        )
        worker.setState(WorkerState.RETIRING)
        if not worker.calls:
            worker.close()


def residentMemory(pid: int) -> int | None:
    """
    The resident set size of process C{pid} in bytes (Linux C{/proc}), or
    L{None} if unknown.
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
