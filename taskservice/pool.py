"""
The process pool: a Twisted L{Service} that runs registered tasks in worker
processes (see L{taskservice.worker} and L{taskservice._workerproc}).

Calls wait in one bounded FIFO queue in the parent. A plain (blocking) call
goes only to an IDLE worker, so no call waits behind a long task while a
worker is free; coroutine calls share a worker up to C{concurrency} at a
time. Every accepted call ends in exactly one outcome: its result, or an
error from L{taskservice.errors}.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._frames import COMMANDS_FD, RESULTS_FD
from taskservice._task import Registry, TaskSpec, specOf
from taskservice._workerproc import WorkerProcess, WorkerState, exitDescription
from taskservice.errors import (
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    TaskFailed,
    TaskServiceError,
    TimedOut,
    TooLarge,
    Unavailable,
    WorkerLost,
    outcomeOf,
)
from taskservice.worker import DEFAULT_MAX_RESULT

EXAMPLE_TASKS = ("taskservice.examples",)
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_TIMEOUT = 3600.0
DEFAULT_MAX_QUEUE = 10_000
DEFAULT_CONCURRENCY = 100
DEFAULT_PIPELINE = 8
SHORT_CALL = 0.001
"""A task whose calls average less than this many seconds is "short": its
calls may wait in a busy worker's pipe behind other short calls."""
_SHORT_SAMPLES = 5
_EWMA = 0.2
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_START_TIMEOUT = 60.0
_STOP_GRACE = 5.0
_CANCEL_GRACE = 2.0
_RESTART_BACKOFF_BASE = 0.1
_RESTART_BACKOFF_MAX = 10.0
_CRASH_WINDOW = 10.0

ProgressCallback = Callable[[dict[str, Any]], object]

__all__ = [
    "EXAMPLE_TASKS",
    "CallObserver",
    "ProcessPool",
    "WorkerProcess",
    "WorkerState",
]


class CallObserver(Protocol):
    """
    What a pool tells about each call it answers (see
    L{taskservice.metrics.PoolMetrics}); set it as C{pool.observer}.
    """

    def callFinished(
        self,
        task: str,
        outcome: str,
        queuedSeconds: float | None,
        runSeconds: float | None,
    ) -> None:
        """
        A call got its one outcome. Called in the reactor thread, once per
        call, on the pool's hot path: keep it cheap and never raise.

        @param task: the registered task name; C{""} for a call naming no
            registered task (never a name taken from the network).
        @param outcome: C{"ok"}, or the error's outcome (see
            L{taskservice.errors.OUTCOMES}).
        @param queuedSeconds: from submission until a worker took the call
            (or, for a call that never ran, until its outcome); L{None} for
            a call refused at submission.
        @param runSeconds: from dispatch to a worker until the outcome;
            L{None} for a call that never ran.
        """


class _Call:
    """
    One accepted call, from submission to its single outcome.

    @ivar abandoned: the caller has had its outcome (deadline or cancel) but
        the coroutine call still occupies a slot in its worker until the
        worker acknowledges the cancellation.
    """

    __slots__ = (
        "abandoned",
        "args",
        "cid",
        "context",
        "deferred",
        "kwargs",
        "onCancel",
        "onProgress",
        "owner",
        "queuedAt",
        "spec",
        "startedAt",
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
        queuedAt: float = 0.0,
        onCancel: Callable[[_Call], object] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.cid = cid
        self.context = context
        self.onCancel = onCancel
        self.spec = spec
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.onProgress = onProgress
        self.owner = owner
        self.deferred: Deferred[Any] = Deferred(
            None if onCancel is None else self._cancelled
        )
        self.worker: WorkerProcess | None = None
        self.timer: IDelayedCall | None = None
        self.abandoned = False
        self.queuedAt = queuedAt
        self.startedAt: float | None = None

    def _cancelled(self, d: Deferred[Any]) -> None:
        assert self.onCancel is not None
        self.onCancel(self)

    def stopTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def finish(self, outcome: Any) -> None:
        """
        Deliver the outcome unless one was delivered already.
        """
        self.stopTimer()
        if not self.deferred.called:
            if isinstance(outcome, BaseException):
                self.deferred.errback(Failure(outcome))
            else:
                self.deferred.callback(outcome)


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


class ProcessPool(Service):
    """
    Run registered tasks in worker processes.

    @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
    @param modules: the task modules; the parent imports them to know the
        tasks and their policies, and each worker imports them to run them.
    @param size: the number of workers (default: one per CPU).
    @param defaultTimeout: deadline in seconds for tasks without their own.
    @param maxTimeout: the longest deadline a caller may ask for.
    @param maxQueue: calls that may wait for a worker; past it, L{Overloaded}.
    @param concurrency: coroutine calls a worker runs at once.
    @param pipeline: plain calls a worker may hold at once, the extra ones
        waiting in its pipe; only for tasks measured to be short (under
        L{SHORT_CALL} on average), never behind a long call. 1 turns
        pipelining off.
    @param maxTasksPerChild: recycle a worker after this many calls (its
        successor is started beforehand, so callers see no stall).
    @param maxMemory: recycle a worker whose resident memory passes this
        many bytes after a call.
    @param maxResult: results longer than this many bytes (as JSON) fail
        with L{TooLarge}.
    @param shutdownTimeout: how long L{stopService} lets calls finish.
    @param startTimeout: how long a new worker has to import the task
        modules and say it is ready; one that takes longer (an import that
        hangs) is killed and started again, with back-off, as a worker that
        exits before it is ready is.
    @param env: the workers' environment (default: this process's).
    @param includeTracebacks: put task tracebacks in L{TaskFailed} errors.
    @param memoryOf: how to read a worker's memory (for tests).

    @ivar observer: a L{CallObserver} told of every call's outcome and
        timings (L{None}: nobody is told; see L{taskservice.metrics}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        modules: Iterable[str] = EXAMPLE_TASKS,
        *,
        size: int | None = None,
        defaultTimeout: float = DEFAULT_TIMEOUT,
        maxTimeout: float = DEFAULT_MAX_TIMEOUT,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        concurrency: int = DEFAULT_CONCURRENCY,
        pipeline: int = DEFAULT_PIPELINE,
        maxTasksPerChild: int | None = None,
        maxMemory: int | None = None,
        maxResult: int = DEFAULT_MAX_RESULT,
        shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        startTimeout: float = DEFAULT_START_TIMEOUT,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        includeTracebacks: bool = False,
        memoryOf: Callable[[int], int | None] = residentMemory,
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
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.defaultTimeout = defaultTimeout
        self.maxTimeout = max(maxTimeout, defaultTimeout)
        self.maxQueue = maxQueue
        self.concurrency = concurrency
        self.pipeline = max(1, pipeline)
        self._runTime: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._short: set[str] = set()
        self.maxTasksPerChild = maxTasksPerChild
        self.maxMemory = maxMemory
        self.maxResult = maxResult
        self.shutdownTimeout = shutdownTimeout
        self.startTimeout = startTimeout
        self.python = python
        self.includeTracebacks = includeTracebacks
        self._memoryOf = memoryOf
        self._env = dict(os.environ if env is None else env)
        self._env["PYTHONUNBUFFERED"] = "1"
        self._env.setdefault("PYTHONPATH", os.pathsep.join(_importPath()))
        self._workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        self._queue: deque[_Call] = deque()
        self._nextWorkerID = 1
        self._nextCallID = 1
        self._startFailures = 0
        self._spawnFailures = 0
        self._crashes: deque[float] = deque()
        self._respawn: IDelayedCall | None = None
        self._readyWaiters: list[Deferred[None]] = []
        self._drainWaiters: list[Deferred[None]] = []
        self._stopping = False
        self._closing = False
        self._startedAt: float | None = None
        self.completed = 0
        self.failed = 0
        self.workerExits: Counter[str] = Counter()
        self.observer: CallObserver | None = None

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = self._closing = False
        self._startedAt = self.reactor.seconds()
        self._replenish()

    def whenReady(self) -> Deferred[None]:
        """
        Fire when no worker is starting (all are ready or busy).
        """
        if self.running and self._workers and not self._starting():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop taking calls; let queued and running calls finish for up to
        C{shutdownTimeout} seconds (then kill what is left: those calls get
        L{WorkerLost}, queued ones L{Unavailable}); then close every worker
        and wait for it to exit.
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
                self._observe(call, "unavailable")
                call.finish(Unavailable("the pool stopped before this call ran"))
            self._queue.clear()
            ended = [worker.ended for worker in self._workers]
            for worker in list(self._workers):
                if worker.calls:
                    worker.kill()
                elif worker.state is not WorkerState.DEAD:
                    worker.close()
            killer = self.reactor.callLater(_STOP_GRACE, self._killAll)

            def cancelKiller(result: object) -> None:
                if killer.active():
                    killer.cancel()

            return DeferredList(ended).addBoth(cancelKiller)

        drained.addErrback(lambda f: None)
        return drained.addCallback(closeAll)

    def _killAll(self) -> None:
        for worker in list(self._workers):
            worker.kill()

    def _whenDrained(self) -> Deferred[None]:
        if not self._queue and not self._busy():
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
        job: Mapping[str, Any] | None = None,
    ) -> Deferred[Any]:
        """
        Run the task registered as C{name} in a worker.

        @param timeout: this call's deadline in seconds (default: the task's
            own, else the pool's C{defaultTimeout}; at most C{maxTimeout}).
        @param onProgress: called with each progress update of the task.
        @param owner: any object; L{dropQueued} forgets the queued calls of
            an owner (a connection that went away) in one pass.
        @param job: for a durable job's run, C{{"id", "attempt",
            "progress"}} (JSON), which the task reads with
            L{taskservice.currentJob}.
        @return: a L{Deferred} firing with the task's result, or failing
            with a L{taskservice.errors.TaskServiceError}. Cancelling it
            removes a queued call, or stops the running one (a plain call's
            worker is killed; a coroutine call is cancelled in its worker).
        """
        try:
            call = self._accept(name, args, kwargs or {}, timeout, onProgress, owner)
            if job is not None:
                call.context = job
        except Exception as e:
            if self.observer is not None:
                self._refused(name, e)
            return fail(e)
        self._queue.append(call)
        if len(self._queue) == 1:
            # Calls already waiting mean the last dispatch could not place
            # the first of them (whatever frees a worker or removes a queued
            # call dispatches again): this one, behind it, waits too.
            self._dispatch()
        queue = self._queue
        if len(queue) > self.maxQueue and queue[-1] is call:
            # It would have to wait, and the waiting room is full.
            queue.pop()
            if self.observer is not None:
                self.observer.callFinished(call.spec.name, "overloaded", None, None)
            return fail(
                Overloaded(
                    "overloaded",
                    {"retryAfter": self._retryAfter(), "queued": len(self._queue)},
                )
            )
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
        if timeout is None:
            timeout = spec.timeout if spec.timeout is not None else self.defaultTimeout
        elif not 0 < timeout <= self.maxTimeout:
            raise InvalidRequest(
                "invalid request",
                f"timeout must be more than 0 and at most {self.maxTimeout:g} seconds",
            )
        call = _Call(
            self._nextCallID,
            spec,
            args,
            kwargs,
            timeout,
            onProgress,
            owner,
            self.reactor.seconds(),
            self._cancel,
        )
        self._nextCallID += 1
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
            call.deferred.cancel()
        self._dispatch()
        self._checkDrained()
        return len(mine)

    def cancelIfQueued(self, deferred: Deferred[Any]) -> bool:
        """
        Cancel the call behind C{deferred} if it has not started; a running
        call is left alone. Returns whether it was cancelled.
        """
        for call in self._queue:
            if call.deferred is deferred:
                deferred.cancel()
                return True
        return False

    def _retryAfter(self) -> float:
        """
        A hint for callers refused as overloaded: roughly how long the queue
        ahead of them takes to drain, from the calls completed so far.
        """
        uptime = self.reactor.seconds() - (self._startedAt or 0.0)
        rate = self.completed / uptime if uptime > 0 and self.completed else 0.0
        if not rate:
            return 1.0
        return round(min(60.0, max(0.1, len(self._queue) / rate)), 1)

    def _dispatch(self) -> None:
        queue = self._queue
        while queue:
            call = queue[0]
            worker = self._workerFor(call)
            if worker is None:
                return
            queue.popleft()
            self._run(worker, call)

    def _workerFor(self, call: _Call) -> WorkerProcess | None:
        if call.spec.isAsync:
            # Pack coroutine calls onto workers already running some, keeping
            # idle workers free for plain calls.
            for worker in self._workers:
                if (
                    worker.state is WorkerState.BUSY
                    and not worker.blocking
                    and len(worker.calls) < self.concurrency
                ):
                    return worker
        if self._idle:
            return self._idle.pop()
        if self.pipeline > 1 and self.isShort(call.spec.name):
            # No idle worker: a short call may wait in the pipe of a worker
            # running only short calls (never behind a long one).
            best: WorkerProcess | None = None
            for worker in self._workers:
                if (
                    worker.state is WorkerState.BUSY
                    and worker.blocking
                    and worker.shortOnly
                    and len(worker.calls) < self.pipeline
                    and (best is None or len(worker.calls) < len(best.calls))
                ):
                    best = worker
            return best
        return None

    def isShort(self, name: str) -> bool:
        """
        Whether calls of task C{name} have been measured to be short.
        """
        return name in self._short

    def _measure(self, worker: WorkerProcess, call: _Call, now: float) -> None:
        """
        Learn how long the task's calls run: from when the call could start
        (dispatch, or the worker's previous answer) to its answer.
        """
        started = max(call.startedAt or now, worker.lastAnswerAt)
        worker.lastAnswerAt = now
        name = call.spec.name
        seconds = now - started
        samples = self._samples.get(name, 0)
        self._samples[name] = samples + 1
        if samples:
            runTime = self._runTime[name] + _EWMA * (seconds - self._runTime[name])
        else:
            runTime = seconds
        self._runTime[name] = runTime
        if samples + 1 >= _SHORT_SAMPLES and runTime < SHORT_CALL:
            self._short.add(name)
        else:
            self._short.discard(name)

    def _run(self, worker: WorkerProcess, call: _Call) -> None:
        worker.setState(WorkerState.BUSY)
        short = self.isShort(call.spec.name)
        worker.shortOnly = short and (worker.shortOnly or not worker.calls)
        worker.calls[call.cid] = call
        worker.blocking = not call.spec.isAsync
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
        if call.context is not None:
            message["job"] = call.context
        try:
            worker.send(message)
        except (TypeError, ValueError) as e:
            del worker.calls[call.cid]
            self._afterCall(worker, countIt=False)
            self._observe(call, "invalid")
            call.finish(InvalidParams("invalid params", f"not JSON: {e}"))
            return
        call.startedAt = self.reactor.seconds()
        call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)

    def _timedOut(self, call: _Call) -> None:
        call.timer = None
        worker = call.worker
        self.log.warn(
            "task {task} (call {cid}) passed its {timeout}s deadline"
            " in worker {workerID}",
            task=call.spec.name,
            cid=call.cid,
            timeout=call.timeout,
            workerID=worker.workerID if worker else None,
            pid=worker.pid if worker else None,
        )
        self.failed += 1
        self._observe(call, "timeout")
        call.finish(TimedOut("timed out", {"timeout": call.timeout}))
        self._stop(call, "timeout")

    def _cancel(self, call: _Call) -> None:
        """
        The canceller of a call's Deferred (which then fails with
        C{CancelledError}, shown on the wire as "cancelled").
        """
        self._observe(call, "cancelled")
        call.stopTimer()
        if call.worker is None:
            if call in self._queue:
                self._queue.remove(call)
                self._dispatch()
                self._checkDrained()
            return
        self.log.info(
            "call {cid} ({task}) cancelled while running in worker {workerID}",
            cid=call.cid,
            task=call.spec.name,
            workerID=call.worker.workerID,
            pid=call.worker.pid,
        )
        self._stop(call, "cancel")

    def _stop(self, call: _Call, cause: str) -> None:
        """
        Stop a running call whose caller has had its outcome: kill a plain
        call's worker; ask the worker to cancel a coroutine call, or to skip
        a short call still waiting in its pipe (one already running is let
        finish: it is short), and kill it if it does not answer within a
        grace period.
        """
        worker = call.worker
        if worker is None or worker.state is WorkerState.DEAD:
            return
        if call.spec.isAsync or worker.shortOnly:
            call.abandoned = True
            worker.send({"op": "cancel", "cid": call.cid})
            call.timer = self.reactor.callLater(
                _CANCEL_GRACE, self._unresponsive, worker, call
            )
        else:
            self.workerExits[cause] += 1
            worker.kill()

    def _unresponsive(self, worker: WorkerProcess, call: _Call) -> None:
        call.timer = None
        if worker.calls.get(call.cid) is call and worker.state is not WorkerState.DEAD:
            self.log.warn(
                "worker {workerID} did not cancel call {cid} ({task}) within"
                " {grace}s; killing it",
                workerID=worker.workerID,
                pid=worker.pid,
                cid=call.cid,
                task=call.spec.name,
                grace=_CANCEL_GRACE,
            )
            self.workerExits["unresponsive"] += 1
            worker.kill()

    # -- observation of calls -----------------------------------------------

    def _observe(self, call: _Call, outcome: str) -> None:
        """
        Tell the observer, if any, that C{call} got its C{outcome}.
        """
        observer = self.observer
        if observer is None:
            return
        now = self.reactor.seconds()
        startedAt = call.startedAt
        if startedAt is None:
            observer.callFinished(call.spec.name, outcome, now - call.queuedAt, None)
        else:
            observer.callFinished(
                call.spec.name, outcome, startedAt - call.queuedAt, now - startedAt
            )

    def _refused(self, name: str, error: Exception) -> None:
        """
        Tell the observer of a call refused at submission, labelled with
        its task only if C{name} is registered.
        """
        assert self.observer is not None
        task = name if isinstance(name, str) and name in self.registry else ""
        if isinstance(error, TaskServiceError):
            outcome = outcomeOf(error)
        else:
            outcome = "internal_error"
        self.observer.callFinished(task, outcome, None, None)

    # -- workers -----------------------------------------------------------

    def _spawn(self) -> WorkerProcess | None:
        """
        Start one worker; L{None} if C{spawnProcess} failed (no worker then
        exists: the failure counts as a failed start, retried with back-off).
        """
        worker = WorkerProcess(self, self._nextWorkerID)
        self._nextWorkerID += 1
        args = [self.python, "-m", "taskservice.worker"]
        if self.maxResult != DEFAULT_MAX_RESULT:
            args += ["--max-result", str(self.maxResult)]
        if any(spec.needsReactor for spec in self.registry.values()):
            args.append("--reactor")
        args += self.registry.modules
        try:
            self.reactor.spawnProcess(
                worker,
                self.python,
                args,
                env=self._env,
                childFDs={0: "w", 1: "r", 2: "r", COMMANDS_FD: "w", RESULTS_FD: "r"},
            )
        except OSError as e:
            self._spawnFailed(e)
            return None
        self._workers.add(worker)
        if self._spawnFailures:
            self.log.info(
                "started worker {workerID} after {failures} failed attempts",
                workerID=worker.workerID,
                failures=self._spawnFailures,
            )
            self._spawnFailures = 0
        worker.startTimer = self.reactor.callLater(
            self.startTimeout, self._notReady, worker
        )
        self.log.debug(
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
        delay = _backoff(self._startFailures)
        if self._spawnFailures == 1:
            self.log.error(
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
        self.log.error(
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
            for w in self._workers
            if w.state not in (WorkerState.RETIRING, WorkerState.DEAD)
        )
        for _ in range(self.size - active):
            if self._spawn() is None:
                return

    def _scheduleReplenish(self, delay: float) -> None:
        if self._respawn is None:
            self._respawn = self.reactor.callLater(delay, self._replenish)

    def _afterCall(self, worker: WorkerProcess, countIt: bool = True) -> None:
        """
        A call left C{worker}: free it, and recycle it when it is due.
        """
        if countIt:
            worker.completed += 1
        if not worker.calls:
            worker.blocking = worker.shortOnly = False
            if worker.state is WorkerState.RETIRING:
                worker.close()
                return
            if worker.state is WorkerState.BUSY:
                worker.setState(WorkerState.IDLE)
                self._idle.append(worker)
        if worker.state in (WorkerState.IDLE, WorkerState.BUSY):
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
            rss = self._memoryOf(worker.pid)
            if rss is not None and rss > self.maxMemory:
                if worker.retireCause is None:
                    self.log.info(
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
        if self._startFailures or self._closing:
            return  # workers cannot start now: keep this one
        successor = self._spawn()
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
            self._retire(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        cause = worker.retireCause or "recycled"
        self.workerExits[cause] += 1
        self.log.info(
            "replacing worker {workerID} (pid {pid}) after {completed} calls: {cause}",
            workerID=worker.workerID,
            pid=worker.pid,
            completed=worker.completed,
            cause=cause,
        )
        if worker in self._idle:
            self._idle.remove(worker)
        worker.setState(WorkerState.RETIRING)
        if not worker.calls:
            worker.close()

    def _messageReceived(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "progress":
            call = worker.calls.get(message.get("cid", -1))
            if (
                call is not None
                and call.onProgress is not None
                and not call.deferred.called
            ):
                call.onProgress(message["update"])
            return
        if op in ("result", "error"):
            if worker.state is WorkerState.DEAD:
                # A late answer from a killed worker: its callers have had
                # (or will get, when it exits) their one outcome.
                return
            call = worker.calls.pop(message.get("cid", -1), None)
            if call is None:
                return
            if worker.blocking:
                self._measure(worker, call, self.reactor.seconds())
            self._afterCall(worker)
            if call.abandoned:
                call.stopTimer()
            elif op == "result":
                self.completed += 1
                if self.observer is not None:
                    self._observe(call, "ok")
                call.finish(message["result"])
            else:
                self.failed += 1
                error = self._taskError(message)
                self._observe(call, outcomeOf(error))
                call.finish(error)
            self._dispatch()
            self._checkDrained()
            return
        if op == "ready":
            if worker.state is WorkerState.STARTING:
                worker.stopStartTimer()
                worker.setState(WorkerState.IDLE)
                self._startFailures = 0
                self._idle.append(worker)
                predecessor = worker.predecessor
                if (
                    predecessor is not None
                    and predecessor.retireCause is not None
                    and predecessor.state in (WorkerState.IDLE, WorkerState.BUSY)
                ):
                    self._retire(predecessor)
                self._dispatch()
                self._checkReady()
            return
        if op == "fatal":
            error = message.get("error", {})
            self.log.error(
                "worker {workerID} could not load the tasks: {type}: {message}"
                "\n{traceback}",
                workerID=worker.workerID,
                type=error.get("type"),
                message=error.get("message"),
                traceback=error.get("traceback", ""),
            )

    def _taskError(self, message: dict[str, Any]) -> TaskServiceError:
        error = message.get("error", {})
        if message.get("code") == "too_large":
            return TooLarge(
                error.get("message", "too large"), {"limit": self.maxResult}
            )
        return TaskFailed(f"{error.get('type')}: {error.get('message')}", error)

    def _workerEnded(self, worker: WorkerProcess, reason: BaseException) -> None:
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.stopStartTimer()
        wasStarting = worker.state is WorkerState.STARTING or worker.notReadyInTime
        crashed = not worker.killedByPool and not wasStarting
        worker.setState(WorkerState.DEAD)
        calls, worker.calls = worker.calls, {}
        description = exitDescription(reason)
        if crashed:
            self.workerExits["crash"] += 1
            if not calls:
                self.log.warn(
                    "worker {workerID} (pid {pid}) exited unexpectedly: {how}",
                    workerID=worker.workerID,
                    pid=worker.pid,
                    how=description,
                )
        # Replace the worker before telling anyone: a caller reacting to the
        # error below must find the pool whole again. While draining, dead
        # workers are still replaced: queued calls must get to run.
        if self._startedAt is not None and not self._closing:
            self._replace(worker, wasStarting, crashed, description)
        for call in calls.values():
            if call.deferred.called:
                call.stopTimer()
                continue
            self.failed += 1
            self.log.warn(
                "worker {workerID} (pid {pid}) died running {task} (call {cid}): {how}",
                workerID=worker.workerID,
                pid=worker.pid,
                task=call.spec.name,
                cid=call.cid,
                how=description,
            )
            self._observe(call, "worker_lost")
            call.finish(WorkerLost("worker lost", description))
        self._checkReady()
        self._checkDrained()
        self._dispatch()

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
            delay = _backoff(self._startFailures)
            self.log.error(
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
            while self._crashes and self._crashes[0] < now - _CRASH_WINDOW:
                self._crashes.popleft()
            excess = len(self._crashes) - 2 * self.size
            if excess > 0:
                delay = _backoff(excess)
                self.log.error(
                    "{crashes} workers crashed in {window:g}s: replacing the next"
                    " in {delay:.1f}s",
                    crashes=len(self._crashes),
                    window=_CRASH_WINDOW,
                    delay=delay,
                )
                self._scheduleReplenish(delay)
                return
        self._replenish()

    # -- observation -------------------------------------------------------

    def _starting(self) -> int:
        return sum(1 for w in self._workers if w.state is WorkerState.STARTING)

    def _busy(self) -> int:
        return sum(1 for w in self._workers if w.calls)

    def _checkReady(self) -> None:
        if self._readyWaiters and not self._starting() and self._workers:
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)

    def _checkDrained(self) -> None:
        if self._drainWaiters and not self._queue and not self._busy():
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    @property
    def restarts(self) -> int:
        """
        Workers replaced so far (crashed, killed, or recycled).
        """
        return sum(self.workerExits.values())

    @property
    def workers(self) -> frozenset[WorkerProcess]:
        return frozenset(self._workers)

    def stats(self) -> dict[str, Any]:
        """
        Counters for C{$/stats}.
        """
        states = dict.fromkeys(WorkerState, 0)
        for worker in self._workers:
            states[worker.state] += 1
        uptime = 0.0
        if self._startedAt is not None:
            uptime = self.reactor.seconds() - self._startedAt
        return {
            "workers": {
                "size": self.size,
                "idle": states[WorkerState.IDLE],
                "busy": states[WorkerState.BUSY],
                "starting": states[WorkerState.STARTING],
                "retiring": states[WorkerState.RETIRING],
            },
            "running": sum(len(w.calls) for w in self._workers),
            "queued": len(self._queue),
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
        }


def _backoff(failures: int) -> float:
    return min(_RESTART_BACKOFF_MAX, _RESTART_BACKOFF_BASE * 2.0 ** (failures - 1))


def _importPath() -> list[str]:
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
