"""
The pool's lifecycle states (L{PoolState}, drawn in
L{taskservice._supervisor}) and what the supervisor tells the part of the
pool that runs calls (L{SupervisorClient}).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from taskservice._call import Call
    from taskservice._workerproc import WorkerProcess


class PoolState(Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSING = "closing"


ALLOWED = {
    PoolState.STOPPED: {PoolState.RUNNING, PoolState.DRAINING},
    PoolState.RUNNING: {PoolState.DRAINING},
    PoolState.DRAINING: {PoolState.CLOSING},
    PoolState.CLOSING: {PoolState.STOPPED, PoolState.RUNNING},
}


class SupervisorClient(Protocol):
    """
    What the supervisor tells the part of the pool that runs calls.
    """

    def workerReady(self, worker: WorkerProcess) -> None:
        """
        C{worker} takes calls now.
        """

    def callMessage(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """
        C{worker} sent a frame about a call (progress, result, error).
        """

    def callResults(
        self, worker: WorkerProcess, results: list[tuple[int, bytes]]
    ) -> None:
        """
        C{worker} answered calls: C{(cid, result)} pairs, results still JSON.
        """

    def workerLost(
        self, worker: WorkerProcess, calls: list[Call], how: dict[str, int]
    ) -> None:
        """
        C{worker} exited holding C{calls}; its replacement is under way.
        """
