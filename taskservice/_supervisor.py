"""
Worker supervision: the pool's lifecycle, and starting, watching,
recycling and replacing its worker processes.

The pool's lifecycle (L{PoolState})::

    STOPPED --start--> RUNNING --stop--> DRAINING --drained/timeout--> CLOSING
       ^                                                                  |
       +-------------------------- every worker exited -------------------+

Calls are accepted only while RUNNING. Dead workers are replaced while
RUNNING and DRAINING (queued calls must get to run); in CLOSING workers are
closed or killed and nothing is started.

A worker that cannot be spawned (C{spawnProcess} raises C{OSError}: no file
descriptors or processes left, a missing executable) is never counted as a
worker: the attempt counts as a failed start (C{spawn_failed}), is logged
once per episode, and is retried with the back-off of a worker that exits
before it is ready (as Twisted's C{ProcessMonitor} does).

Which workers are idle is kept in one place: L{Supervisor.idle} follows the
workers' own states, updated only by L{Supervisor.workerStateChanged}.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from taskservice._call import poolLog
from taskservice._poolstate import ALLOWED, PoolState, SupervisorClient
from taskservice._recycling import Recycler
from taskservice._workerproc import (
    CHILD_FDS,
    WorkerProcess,
    WorkerState,
    exitDescription,
)

_RESTART_BACKOFF_BASE = 0.1
_RESTART_BACKOFF_MAX = 10.0
CRASH_WINDOW = 10.0
STOP_GRACE = 5.0


def backoff(failures: int) -> float:
    return min(_RESTART_BACKOFF_MAX, _RESTART_BACKOFF_BASE * 2.0 ** (failures - 1))


class Supervisor:
    """
    Keeps C{size} workers running the task modules.

    @ivar workers: every worker whose process exists (not yet seen exit).
    @ivar idle: the IDLE workers, the most recently freed last.
    @ivar workerExits: workers replaced (and failed spawns), by cause.
    """

    def __init__(
        self,
        reactor: Any,
        client: SupervisorClient,
        *,
        size: int,
        python: str,
        args: Sequence[str],
        env: Mapping[str, str],
        startTimeout: float,
        maxTasksPerChild: int | None,
        maxMemory: int | None,
        memoryOf: Callable[[int], int | None],
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.size = size
        self.python = python
        self.args = list(args)
        self.env = env
        self.startTimeout = startTimeout
        self.recycler = Recycler(self, maxTasksPerChild, maxMemory, memoryOf)
        self.state = PoolState.STOPPED
        self.workers: set[WorkerProcess] = set()
        self.idle: list[WorkerProcess] = []
        self.workerExits: Counter[str] = Counter()
        self._nextWorkerID = 1
        self._startFailures = 0
        self._spawnFailures = 0
        self._crashes: deque[float] = deque()
        self._respawn: IDelayedCall | None = None
        self._readyWaiters: list[Deferred[None]] = []

    # -- the pool's lifecycle ------------------------------------------------

    def setState(self, new: PoolState) -> None:
        if new not in ALLOWED[self.state]:
            raise RuntimeError(f"pool: {self.state} -> {new}")
        self.state = new

    def start(self) -> None:
        self.setState(PoolState.RUNNING)
        self._replenish()

    def close(self) -> list[Deferred[None]]:
        """
        Enter CLOSING: start nothing more; kill the workers still running
        calls and close the others. Returns their C{ended} Deferreds.
        """
        self.setState(PoolState.CLOSING)
        if self._respawn is not None and self._respawn.active():
            self._respawn.cancel()
        self._respawn = None
        ended = [worker.ended for worker in self.workers]
        for worker in list(self.workers):
            if worker.calls:
                worker.kill()
            elif worker.state is not WorkerState.DEAD:
                worker.close()
        return ended

    def stopped(self) -> None:
        if self.state is PoolState.CLOSING:
            self.setState(PoolState.STOPPED)

    def killAll(self) -> None:
        for worker in list(self.workers):
            worker.kill()

    def whenReady(self) -> Deferred[None]:
        if self.state is PoolState.RUNNING and self.workers and not self.starting():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    def checkReady(self) -> None:
        if self._readyWaiters and not self.starting() and self.workers:
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)

    def workerStats(self) -> dict[str, int]:
        """
        The workers by state, for C{$/stats} (the dead are not counted).
        """
        states = dict.fromkeys(WorkerState, 0)
        for worker in self.workers:
            states[worker.state] += 1
        return {
            "size": self.size,
            "idle": states[WorkerState.IDLE],
            "busy": states[WorkerState.BUSY],
            "starting": states[WorkerState.STARTING],
            "retiring": states[WorkerState.RETIRING],
        }

    def starting(self) -> int:
        return sum(1 for w in self.workers if w.state is WorkerState.STARTING)

    # -- starting workers ----------------------------------------------------

    def _spawn(self) -> WorkerProcess | None:
        """
        Start one worker; L{None} if C{spawnProcess} failed (no worker then
        exists: the failure counts as a failed start, retried with back-off).
        """
        worker = WorkerProcess(self, self._nextWorkerID)
        self._nextWorkerID += 1
        try:
            self.reactor.spawnProcess(
                worker, self.python, self.args, env=self.env, childFDs=CHILD_FDS
            )
        except OSError as e:
            self._spawnFailed(e)
            return None
        self.workers.add(worker)
        if self._spawnFailures:
            poolLog.info(
                "started worker {workerID} after {failures} failed attempts",
                workerID=worker.workerID,
                failures=self._spawnFailures,
            )
            self._spawnFailures = 0
        worker.startTimer = self.reactor.callLater(
            self.startTimeout, self._notReady, worker
        )
        poolLog.debug(
            "started worker {workerID} (pid {pid})",
            workerID=worker.workerID,
            pid=worker.pid,
        )
        return worker

    def _spawnFailed(self, error: OSError) -> None:
        """
        C{spawnProcess} raised (no file descriptors or processes left, say):
        count it, log it once per episode, and try again after a back-off.
        """
        self.workerExits["spawn_failed"] += 1
        self._spawnFailures += 1
        self._startFailures += 1
        delay = backoff(self._startFailures)
        if self._spawnFailures == 1:
            poolLog.error(
                "could not start a worker: {error}; retrying with back-off"
                " (first in {delay:.1f}s) until one starts",
                error=error,
                delay=delay,
            )
        self._scheduleReplenish(delay)

    def _notReady(self, worker: WorkerProcess) -> None:
        """
        C{worker} did not say it was ready within C{startTimeout}: kill it;
        it is then started again as one that exited before it was ready.
        """
        worker.startTimer = None
        if worker.state is not WorkerState.STARTING:
            return
        poolLog.error(
            "worker {workerID} (pid {pid}) not ready after {timeout:g}s"
            " (a task module's import hangs?); killing it",
            workerID=worker.workerID,
            pid=worker.pid,
            timeout=self.startTimeout,
        )
        self.workerExits["not_ready"] += 1
        worker.notReadyInTime = True
        worker.kill()

    def _replenish(self) -> None:
        """
        Start workers until C{size} of them are serving or starting.
        """
        self._respawn = None
        active = sum(
            1
            for w in self.workers
            if w.state not in (WorkerState.RETIRING, WorkerState.DEAD)
        )
        for _ in range(self.size - active):
            if self._spawn() is None:
                return

    def _scheduleReplenish(self, delay: float) -> None:
        if self._respawn is None:
            self._respawn = self.reactor.callLater(delay, self._replenish)

    # -- what workers say (WorkerOwner) --------------------------------------

    def workerStateChanged(
        self, worker: WorkerProcess, old: WorkerState, new: WorkerState
    ) -> None:
        idle = self.idle
        if old is WorkerState.IDLE:
            if idle and idle[-1] is worker:
                idle.pop()
            else:
                idle.remove(worker)
        elif new is WorkerState.IDLE:
            idle.append(worker)

    def workerResults(
        self, worker: WorkerProcess, results: list[tuple[int, bytes]]
    ) -> None:
        self.client.callResults(worker, results)

    def workerMessage(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op not in {"ready", "fatal"}:
            self.client.callMessage(worker, message)
            return
        if op == "ready":
            if worker.state is WorkerState.STARTING:
                worker.stopStartTimer()
                worker.setState(WorkerState.IDLE)
                self._startFailures = 0
                predecessor = worker.predecessor
                if (
                    predecessor is not None
                    and predecessor.retireCause is not None
                    and predecessor.state in (WorkerState.IDLE, WorkerState.BUSY)
                ):
                    self.recycler.retire(predecessor)
                self.client.workerReady(worker)
                self.checkReady()
            return
        if op == "fatal":
            error = message.get("error", {})
            poolLog.error(
                "worker {workerID} could not load the tasks: {type}: {message}"
                "\n{traceback}",
                workerID=worker.workerID,
                type=error.get("type"),
                message=error.get("message"),
                traceback=error.get("traceback", ""),
            )

    def workerEnded(self, worker: WorkerProcess, reason: BaseException) -> None:
        self.workers.discard(worker)
        worker.stopStartTimer()
        wasStarting = worker.state is WorkerState.STARTING or worker.notReadyInTime
        crashed = not worker.killedByPool and not wasStarting
        worker.setState(WorkerState.DEAD)
        calls = worker.takeAll()
        description = exitDescription(reason)
        if crashed:
            self.workerExits["crash"] += 1
            if not calls:
                poolLog.warn(
                    "worker {workerID} (pid {pid}) exited unexpectedly: {how}",
                    workerID=worker.workerID,
                    pid=worker.pid,
                    how=description,
                )
        # Replace the worker before telling anyone: a caller reacting to the
        # error must find the pool whole again. While draining, dead workers
        # are still replaced: queued calls must get to run.
        if self.state in (PoolState.RUNNING, PoolState.DRAINING):
            self._replace(worker, wasStarting, crashed, description)
        self.client.workerLost(worker, calls, description)

    def _replace(
        self,
        worker: WorkerProcess,
        wasStarting: bool,
        crashed: bool,
        description: dict[str, int],
    ) -> None:
        now = self.reactor.seconds()
        if wasStarting:
            self._startFailures += 1
            delay = backoff(self._startFailures)
            poolLog.error(
                "worker {workerID} exited before it was ready ({how});"
                " retrying in {delay:.1f}s",
                workerID=worker.workerID,
                how=description,
                delay=delay,
            )
            self._scheduleReplenish(delay)
            return
        if crashed:
            self._crashes.append(now)
            while self._crashes and self._crashes[0] < now - CRASH_WINDOW:
                self._crashes.popleft()
            excess = len(self._crashes) - 2 * self.size
            if excess > 0:
                delay = backoff(excess)
                poolLog.error(
                    "{crashes} workers crashed in {window:g}s: replacing the next"
                    " in {delay:.1f}s",
                    crashes=len(self._crashes),
                    window=CRASH_WINDOW,
                    delay=delay,
                )
                self._scheduleReplenish(delay)
                return
        self._replenish()

    # -- stopping workers ------------------------------------------------------

    def canStart(self) -> bool:
        """
        Whether a worker may be started now to succeed another: not while
        starts fail, nor once the pool is closing.
        """
        return not self._startFailures and self.state is not PoolState.CLOSING

    def spawn(self) -> WorkerProcess | None:
        return self._spawn()

    def kill(self, worker: WorkerProcess, cause: str) -> None:
        """
        Kill C{worker} to stop a call (C{cause}: "timeout", "cancel",
        "unresponsive"), counted as a replacement for that cause.
        """
        self.workerExits[cause] += 1
        worker.kill()
