"""
The process pool: a Twisted L{Service} that runs registered tasks in worker
processes (see L{taskservice.worker}).

Lifecycle of a worker (L{WorkerState})::

    STARTING --ready--> IDLE <--> BUSY
        |                |         |
        +------ exit, kill, or stop ----> DEAD

Calls wait in one bounded queue in the parent and go only to IDLE workers,
so a call never waits behind a long task while another worker is free. Every
accepted call ends in exactly one outcome: its result, or an error from
L{taskservice.errors}.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._task import Registry, TaskSpec, specOf
from taskservice.errors import (
    InvalidParams,
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TimedOut,
    Unavailable,
    WorkerLost,
)

EXAMPLE_TASKS = ("taskservice.examples",)
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_QUEUE = 10_000
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
_STOP_GRACE = 5.0
_MAX_OUTPUT_LINE = 64 * 1024
_RESTART_BACKOFF_BASE = 0.1
_RESTART_BACKOFF_MAX = 10.0

ProgressCallback = Callable[[dict[str, Any]], object]


class WorkerState(Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


_ALLOWED = {
    WorkerState.STARTING: {WorkerState.IDLE, WorkerState.DEAD},
    WorkerState.IDLE: {WorkerState.BUSY, WorkerState.DEAD},
    WorkerState.BUSY: {WorkerState.IDLE, WorkerState.DEAD},
    WorkerState.DEAD: set(),
}


class _Call:
    """
    One accepted call, from submission to its single outcome.
    """

    __slots__ = (
        "args",
        "cid",
        "deferred",
        "kwargs",
        "onProgress",
        "owner",
        "spec",
        "timeout",
        "timer",
        "worker",
    )

    def __init__(
        self,
        cid: int,
        spec: TaskSpec,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timeout: float,
        onProgress: ProgressCallback | None,
        owner: object = None,
    ) -> None:
        self.cid = cid
        self.owner = owner
        self.spec = spec
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.onProgress = onProgress
        self.deferred: Deferred[Any] = Deferred()
        self.worker: WorkerProcess | None = None
        self.timer: IDelayedCall | None = None

    def finish(self, outcome: Any) -> None:
        """
        Deliver the outcome unless one was delivered already (a cancelled or
        timed-out call may still hear from its worker).
        """
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        if not self.deferred.called:
            if isinstance(outcome, BaseException):
                self.deferred.errback(Failure(outcome))
            else:
                self.deferred.callback(outcome)


class WorkerProcess(ProcessProtocol):
    """
    The parent's side of one worker: frames in and out, output logged.
    """

    log = Logger()

    def __init__(self, pool: ProcessPool, workerID: int) -> None:
        self.pool = pool
        self.workerID = workerID
        self.state = WorkerState.STARTING
        self.call: _Call | None = None
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._frames = FrameDecoder()
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.workerID} pid={self.pid} {self.state.value}>"

    def setState(self, new: WorkerState) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"worker {self.workerID}: {self.state} -> {new}")
        self.state = new

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        # Tasks that read stdin get end-of-file rather than hang.
        self.transport.closeStdin()

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.writeToChild(COMMANDS_FD, frame(_json.dumps(message)))

    def kill(self) -> None:
        """
        SIGKILL the process (it will never receive another call).
        """
        if self.state is not WorkerState.DEAD:
            self.setState(WorkerState.DEAD)
        try:
            assert self.transport is not None
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def close(self) -> None:
        """
        Close the command pipe: the worker exits when it sees end of file.
        """
        if self.state is not WorkerState.DEAD:
            self.setState(WorkerState.DEAD)
        assert self.transport is not None
        self.transport.closeChildFD(COMMANDS_FD)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == RESULTS_FD:
            for payload in self._frames.feed(data):
                self.pool._messageReceived(self, _json.loads(payload))
            return
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > _MAX_OUTPUT_LINE:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            self._logOutput(childFD, line)

    def _logOutput(self, childFD: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if childFD == 2:
            self.log.warn(
                "worker {workerID} (pid {pid}) stderr: {line}",
                workerID=self.workerID,
                pid=self.pid,
                line=text,
            )
        else:
            self.log.info(
                "worker {workerID} (pid {pid}) stdout: {line}",
                workerID=self.workerID,
                pid=self.pid,
                line=text,
            )

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._partial.items():
            if rest:
                self._logOutput(childFD, rest)
        assert reason.value is not None
        self.pool._workerEnded(self, reason.value)
        self.ended.callback(None)


def exitDescription(reason: BaseException) -> dict[str, int]:
    """
    C{{"signal": n}} or C{{"exitCode": n}} for a process-ended reason.
    """
    if isinstance(reason, ProcessTerminated) and reason.signal is not None:
        return {"signal": reason.signal}
    return {"exitCode": getattr(reason, "exitCode", None) or 0}


class ProcessPool(Service):
    """
    Run registered tasks in worker processes.

    @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
    @param modules: the task modules; the parent imports them to know the
        tasks and their policies, and each worker imports them to run them.
    @param size: the number of workers.
    @param defaultTimeout: deadline in seconds for tasks without their own.
    @param maxQueue: calls that may wait for a worker; past it, L{Overloaded}.
    @param shutdownTimeout: how long L{stopService} lets calls finish.
    @param env: the workers' environment (default: this process's).
    @param includeTracebacks: put task tracebacks in L{TaskFailed} errors.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        modules: Iterable[str] = EXAMPLE_TASKS,
        *,
        size: int | None = None,
        defaultTimeout: float = DEFAULT_TIMEOUT,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        includeTracebacks: bool = False,
    ) -> None:
        if not IReactorProcess.providedBy(reactor) or not IReactorTime.providedBy(
            reactor
        ):
            raise TypeError("the reactor must provide IReactorProcess and IReactorTime")
        self.reactor = reactor
        self.registry = Registry.fromModules(modules)
        self.size = size if size is not None else (os.cpu_count() or 1)
        if self.size < 1:
            raise ValueError("a pool needs at least one worker")
        self.defaultTimeout = defaultTimeout
        self.maxQueue = maxQueue
        self.shutdownTimeout = shutdownTimeout
        self.python = python
        self.includeTracebacks = includeTracebacks
        self._env = dict(os.environ if env is None else env)
        self._env["PYTHONUNBUFFERED"] = "1"
        self._env.setdefault("PYTHONPATH", os.pathsep.join(_importPath()))
        self._workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        self._queue: deque[_Call] = deque()
        self._nextWorkerID = 1
        self._nextCallID = 1
        self._startFailures = 0
        self._respawn: IDelayedCall | None = None
        self._readyWaiters: list[Deferred[None]] = []
        self._drainWaiters: list[Deferred[None]] = []
        self._stopping = False
        self._closing = False
        self._startedAt: float | None = None
        self.completed = 0
        self.failed = 0
        self.restarts = 0

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = self._closing = False
        self._startedAt = self.reactor.seconds()
        for _ in range(self.size):
            self._spawn()

    def whenReady(self) -> Deferred[None]:
        """
        Fire when no worker is starting (all are ready or busy).
        """
        if self.running and not self._starting():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop taking calls; let queued and running calls finish for up to
        C{shutdownTimeout} seconds (then kill what is left: those calls get
        L{WorkerLost}); then close every worker and wait for it to exit.
        """
        super().stopService()
        self._stopping = True
        drained = self._whenDrained()
        timer = self.reactor.callLater(self.shutdownTimeout, drained.cancel)

        def closeAll(_: object) -> Deferred[Any]:
            if timer.active():
                timer.cancel()
            self._closing = True
            if self._respawn is not None and self._respawn.active():
                self._respawn.cancel()
            self._respawn = None
            for call in list(self._queue):
                call.finish(Unavailable("the pool stopped before this call ran"))
            self._queue.clear()
            ended = [worker.ended for worker in self._workers]
            for worker in list(self._workers):
                if worker.call is not None:
                    worker.kill()
                else:
                    worker.close()
            killer = self.reactor.callLater(_STOP_GRACE, self._killAll)
            done = DeferredList(ended)

            def cancelKiller(result: object) -> None:
                if killer.active():
                    killer.cancel()

            return done.addBoth(cancelKiller)

        drained.addErrback(lambda f: None)
        return drained.addCallback(closeAll)

    def _killAll(self) -> None:
        for worker in list(self._workers):
            worker.kill()

    def _whenDrained(self) -> Deferred[None]:
        if self._busyCount() == 0 and not self._queue:
            return succeed(None)
        d: Deferred[None] = Deferred(self._drainWaiters.remove)
        self._drainWaiters.append(d)
        return d

    # -- calls -------------------------------------------------------------

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        onProgress: ProgressCallback | None = None,
        owner: object = None,
    ) -> Deferred[Any]:
        """
        Run the task registered as C{name} in a worker.

        @param timeout: this call's deadline (default: the task's own, else
            the pool's C{defaultTimeout}).
        @param onProgress: called with each progress update of the task.
        @param owner: any object; L{dropQueued} forgets the queued calls of
            an owner (a connection that went away) in one pass.
        @return: a L{Deferred} firing with the task's result, or failing
            with a L{taskservice.errors.TaskServiceError}. Cancelling it
            removes a queued call, or kills the worker running it.
        """
        kwargs = {} if kwargs is None else kwargs
        try:
            call = self._accept(name, args, kwargs, timeout, onProgress, owner)
        except Exception as e:
            return fail(e)
        self._queue.append(call)
        self._dispatch()
        return call.deferred

    def deferToProcess(
        self, task: Callable[..., Any] | str, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Run C{task} (a C{@task} function, or a registered name) in a worker:
        C{pool.deferToProcess(send_mail, to="a@example.com")}.
        """
        if isinstance(task, str):
            return self.submit(task, args, kwargs)
        spec = specOf(task)
        if spec is None:
            return fail(
                MethodNotFound("method not found", f"{task!r} is not a @task function")
            )
        registered = self.registry.get(spec.name)
        if registered is None or registered.function is not spec.function:
            return fail(
                MethodNotFound(
                    "method not found",
                    f"{spec.name!r} is not a task of this pool's modules"
                    f" {self.registry.modules}",
                )
            )
        return self.submit(spec.name, args, kwargs)

    def _accept(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timeout: float | None,
        onProgress: ProgressCallback | None,
        owner: object,
    ) -> _Call:
        if not self.running or self._stopping:
            raise Unavailable("the pool is not running")
        spec = self.registry.get(name)
        if spec is None:
            raise MethodNotFound("method not found", name)
        try:
            spec.checkArguments(args, kwargs)
        except TypeError as e:
            raise InvalidParams("invalid params", str(e)) from None
        if len(self._queue) >= self.maxQueue:
            raise Overloaded(
                "overloaded",
                {"retryAfter": self._retryAfter(), "queued": len(self._queue)},
            )
        if timeout is None:
            timeout = spec.timeout if spec.timeout is not None else self.defaultTimeout
        call = _Call(self._nextCallID, spec, args, kwargs, timeout, onProgress, owner)
        self._nextCallID += 1
        call.deferred = Deferred(lambda d: self._cancel(call))
        return call

    def dropQueued(self, owner: object) -> int:
        """
        Remove every queued call of C{owner} without running it; their
        Deferreds fail with C{CancelledError}. Running calls are left to
        finish. Returns how many were dropped.
        """
        mine = [call for call in self._queue if call.owner is owner]
        if not mine:
            return 0
        self._queue = deque(call for call in self._queue if call.owner is not owner)
        for call in mine:
            call.worker = None
            call.deferred.cancel()
        self._checkDrained()
        return len(mine)

    def _retryAfter(self) -> float:
        return 1.0

    def _dispatch(self) -> None:
        queue, idle = self._queue, self._idle
        while queue and idle:
            worker = idle.pop()
            call = queue.popleft()
            worker.setState(WorkerState.BUSY)
            worker.call = call
            call.worker = worker
            message: dict[str, Any] = {
                "op": "call",
                "cid": call.cid,
                "task": call.spec.name,
                "args": call.args,
                "kwargs": call.kwargs,
            }
            if self.includeTracebacks:
                message["tb"] = True
            try:
                worker.send(message)
            except (TypeError, ValueError) as e:
                self._release(worker)
                call.finish(InvalidParams("invalid params", f"not JSON: {e}"))
                continue
            call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)

    def _timedOut(self, call: _Call) -> None:
        call.timer = None
        worker = call.worker
        self.log.warn(
            "task {task} (call {cid}) passed its {timeout}s deadline;"
            " killing worker {workerID}",
            task=call.spec.name,
            cid=call.cid,
            timeout=call.timeout,
            workerID=worker.workerID if worker else None,
        )
        self.failed += 1
        call.finish(TimedOut("timed out", {"timeout": call.timeout}))
        if worker is not None:
            worker.kill()

    def _cancel(self, call: _Call) -> None:
        """
        The canceller of a call's Deferred (which then fails with
        C{CancelledError}, shown on the wire as "cancelled").
        """
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if call.worker is None:
            if call in self._queue:
                self._queue.remove(call)
            return
        self.log.info(
            "call {cid} ({task}) cancelled while running; killing worker {workerID}",
            cid=call.cid,
            task=call.spec.name,
            workerID=call.worker.workerID,
        )
        call.worker.kill()

    # -- workers -----------------------------------------------------------

    def _spawn(self) -> None:
        worker = WorkerProcess(self, self._nextWorkerID)
        self._nextWorkerID += 1
        self._workers.add(worker)
        args = [self.python, "-m", "taskservice.worker", *self.registry.modules]
        self.reactor.spawnProcess(
            worker,
            self.python,
            args,
            env=self._env,
            childFDs={0: "w", 1: "r", 2: "r", COMMANDS_FD: "w", RESULTS_FD: "r"},
        )
        self.log.debug(
            "started worker {workerID} (pid {pid})",
            workerID=worker.workerID,
            pid=worker.pid,
        )

    def _release(self, worker: WorkerProcess) -> None:
        worker.call = None
        if worker.state is WorkerState.BUSY:
            worker.setState(WorkerState.IDLE)
            self._idle.append(worker)

    def _messageReceived(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        call = worker.call
        if op == "progress":
            if (
                call is not None
                and call.onProgress is not None
                and not call.deferred.called
            ):
                call.onProgress(message["update"])
            return
        if op in ("result", "error"):
            if (
                call is None
                or call.cid != message.get("cid")
                or worker.state is WorkerState.DEAD
            ):
                # A late answer from a worker that was killed (deadline or
                # cancel): its caller has had its one outcome already.
                return
            self._release(worker)
            if op == "result":
                self.completed += 1
                call.finish(message["result"])
            else:
                self.failed += 1
                error = message["error"]
                call.finish(
                    TaskFailed(f"{error.get('type')}: {error.get('message')}", error)
                )
            self._dispatch()
            self._checkDrained()
            return
        if op == "ready":
            if worker.state is WorkerState.STARTING:
                worker.setState(WorkerState.IDLE)
                self._startFailures = 0
                self._idle.append(worker)
                self._dispatch()
                self._checkReady()
            return
        if op == "fatal":
            self.log.error(
                "worker {workerID} could not load the tasks: {error[type]}: "
                "{error[message]}\n{error[traceback]}",
                workerID=worker.workerID,
                error=message.get("error", {}),
            )

    def _workerEnded(self, worker: WorkerProcess, reason: BaseException) -> None:
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        wasStarting = worker.state is WorkerState.STARTING
        if worker.state is not WorkerState.DEAD:
            worker.setState(WorkerState.DEAD)
        call, worker.call = worker.call, None
        description = exitDescription(reason)
        # Replace the worker before telling anyone: a caller reacting to the
        # error below must find the pool whole again. While draining, dead
        # workers are still replaced: queued calls must get to run.
        if self._startedAt is not None and not self._closing:
            self.restarts += 1
            if wasStarting:
                self._startFailures += 1
                delay = min(
                    _RESTART_BACKOFF_MAX,
                    _RESTART_BACKOFF_BASE * 2 ** (self._startFailures - 1),
                )
                self.log.error(
                    "worker {workerID} exited before it was ready ({how});"
                    " retrying in {delay:.1f}s",
                    workerID=worker.workerID,
                    how=description,
                    delay=delay,
                )
                self._scheduleRespawn(delay)
            else:
                self._spawn()
        if call is not None and not call.deferred.called:
            self.failed += 1
            self.log.warn(
                "worker {workerID} (pid {pid}) died running {task} (call {cid}): {how}",
                workerID=worker.workerID,
                pid=worker.pid,
                task=call.spec.name,
                cid=call.cid,
                how=description,
            )
            call.finish(WorkerLost("worker lost", description))
        self._checkReady()
        self._checkDrained()

    def _scheduleRespawn(self, delay: float) -> None:
        def respawn() -> None:
            self._respawn = None
            missing = self.size - len(self._workers)
            for _ in range(missing):
                self._spawn()

        if self._respawn is None:
            self._respawn = self.reactor.callLater(delay, respawn)

    # -- observation -------------------------------------------------------

    def _starting(self) -> int:
        return sum(1 for w in self._workers if w.state is WorkerState.STARTING)

    def _busyCount(self) -> int:
        return sum(1 for w in self._workers if w.call is not None)

    def _checkReady(self) -> None:
        if self._readyWaiters and not self._starting() and self._workers:
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)

    def _checkDrained(self) -> None:
        if self._drainWaiters and not self._queue and self._busyCount() == 0:
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    @property
    def workers(self) -> frozenset[WorkerProcess]:
        return frozenset(self._workers)

    def stats(self) -> dict[str, Any]:
        """
        Counters for C{$/stats}.
        """
        states = {state: 0 for state in WorkerState}
        for worker in self._workers:
            states[worker.state] += 1
        uptime = (
            self.reactor.seconds() - self._startedAt
            if self._startedAt is not None
            else 0.0
        )
        return {
            "workers": {
                "size": self.size,
                "idle": states[WorkerState.IDLE],
                "busy": states[WorkerState.BUSY],
                "starting": states[WorkerState.STARTING],
            },
            "queued": len(self._queue),
            "maxQueue": self.maxQueue,
            "completed": self.completed,
            "failed": self.failed,
            "restarts": self.restarts,
            "uptime": round(uptime, 3),
            "tasks": sorted(self.registry),
        }


def _importPath() -> list[str]:
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
