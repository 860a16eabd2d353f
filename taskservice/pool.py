"""
The process pool: a Twisted L{Service} that runs registered tasks in worker
processes (see L{taskservice.worker} and L{taskservice._workerproc}).

Calls wait in one bounded queue in the parent (first in, first out). A
plain (blocking) call goes only to an IDLE worker, so no call waits behind a
long task while a worker is free; coroutine calls share a worker up to
C{concurrency} at a time. Every accepted call ends in exactly one outcome:
its result, or an error from L{taskservice.errors}.

L{ProcessPool} is the facade over the pool's parts (docs/pool.rst):

- L{taskservice._call}: one call, its states and its single end;
- L{taskservice._queue}: where calls wait (L{taskservice._queue.CallQueue});
- L{taskservice._placement}: which worker takes a call;
- L{taskservice._scheduler}: dispatch, answers, and every call's end told
  to the observers;
- L{taskservice._deadlines}: deadlines and cancellation;
- L{taskservice._supervisor}: the pool's lifecycle, and the workers'
  start, ready timeout, crash back-off, recycling and replacement;
- L{taskservice._workerproc}: one worker process, as the parent sees it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from taskservice._call import (
    Call,
    CallListener,
    CallObserver,
    CallSink,
    CallState,
    Outcome,
    ProgressCallback,
)
from taskservice._defaults import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_RESULT,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_PIPELINE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    EXAMPLE_TASKS,
)
from taskservice._placement import SHORT_CALL, Placement
from taskservice._poolstate import PoolState
from taskservice._poolview import PoolView
from taskservice._queue import CallQueue, FifoQueue
from taskservice._recentcalls import RecentCalls
from taskservice._recycling import residentMemory
from taskservice._scheduler import Scheduler
from taskservice._supervisor import STOP_GRACE, Supervisor
from taskservice._task import Registry, specOf
from taskservice._workerproc import (
    WorkerProcess,
    WorkerState,
    workerCommand,
    workerEnvironment,
)
from taskservice.errors import MethodNotFound
from taskservice.wire import NO_OPTIONS, CallOptions, callOptions

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_RESULT",
    "DEFAULT_MAX_TIMEOUT",
    "DEFAULT_PIPELINE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "EXAMPLE_TASKS",
    "SHORT_CALL",
    "Call",
    "CallListener",
    "CallObserver",
    "CallSink",
    "CallState",
    "Outcome",
    "PoolState",
    "ProcessPool",
    "WorkerProcess",
    "WorkerState",
    "residentMemory",
]


class ProcessPool(PoolView, Service):
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
        C{shortCall} on average), never behind a long call. 1 turns
        pipelining off.
    @param shortCall: the mean run time in seconds under which a task's
        calls count as short (default L{SHORT_CALL}).
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
    @param queue: where calls wait (default: a new L{FifoQueue}).

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
        shortCall: float = SHORT_CALL,
        maxTasksPerChild: int | None = None,
        maxMemory: int | None = None,
        maxResult: int = DEFAULT_MAX_RESULT,
        shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        startTimeout: float = DEFAULT_START_TIMEOUT,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        includeTracebacks: bool = False,
        memoryOf: Callable[[int], int | None] = residentMemory,
        queue: CallQueue | None = None,
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
        self.maxTasksPerChild = maxTasksPerChild
        self.maxMemory = maxMemory
        self.maxResult = maxResult
        self.shutdownTimeout = shutdownTimeout
        self.startTimeout = startTimeout
        self.python = python
        self.includeTracebacks = includeTracebacks
        self._env = workerEnvironment(env)
        self._placement = Placement(concurrency, self.pipeline, shortCall)
        self._scheduler = Scheduler(
            reactor,
            queue if queue is not None else FifoQueue(),
            self._placement,
            self.registry,
            defaultTimeout=defaultTimeout,
            maxTimeout=self.maxTimeout,
            maxQueue=maxQueue,
            maxResult=maxResult,
            includeTracebacks=includeTracebacks,
        )
        self._supervisor = Supervisor(
            reactor,
            self._scheduler,
            size=self.size,
            python=python,
            args=workerCommand(python, self.registry, maxResult),
            env=self._env,
            startTimeout=startTimeout,
            maxTasksPerChild=maxTasksPerChild,
            maxMemory=maxMemory,
            memoryOf=memoryOf,
        )
        self._scheduler.supervisor = self._supervisor
        self._memoryOf = memoryOf
        self.recentCalls: RecentCalls = self._scheduler.recentCalls
        """The percentiles of recent calls' times and the last failures,
        for C{$/stats} (read after L{foldCalls})."""

    # -- lifecycle ---------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """
        Where the pool is in its lifecycle (see L{PoolState}).
        """
        return self._supervisor.state

    def startService(self) -> None:
        super().startService()
        self._scheduler.startedAt = self.reactor.seconds()
        self._supervisor.start()

    def whenReady(self) -> Deferred[None]:
        """
        Fire when no worker is starting (all are ready or busy).
        """
        return self._supervisor.whenReady()

    def stopService(self) -> Deferred[None]:
        """
        Stop taking calls; let queued and running calls finish for up to
        C{shutdownTimeout} seconds (then kill what is left: those calls get
        L{WorkerLost}, queued ones L{Unavailable}); then close every worker
        and wait for it to exit.
        """
        super().stopService()
        supervisor = self._supervisor
        supervisor.setState(PoolState.DRAINING)
        drained = self._scheduler.whenDrained()
        timer = self.reactor.callLater(self.shutdownTimeout, drained.cancel)

        def closeAll(_: object) -> Deferred[Any]:
            if timer.active():
                timer.cancel()
            ended = supervisor.close()
            self._scheduler.refuseQueued()
            killer = self.reactor.callLater(STOP_GRACE, supervisor.killAll)

            def stopped(result: object) -> None:
                if killer.active():
                    killer.cancel()
                self._scheduler.deadlines.stop()
                supervisor.stopped()

            return DeferredList(ended).addBoth(stopped)

        drained.addErrback(lambda f: None)
        return drained.addCallback(closeAll)

    # -- calls -------------------------------------------------------------

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        options: CallOptions = NO_OPTIONS,
        timeout: float | None = None,
        onProgress: ProgressCallback | None = None,
        owner: object = None,
        job: Mapping[str, Any] | None = None,
    ) -> Deferred[Any]:
        """
        Run the task registered as C{name} in a worker.

        @param options: how the call is to run (L{CallOptions}): its
            C{timeout} is this call's deadline in seconds (default: the
            task's own, else the pool's C{defaultTimeout}; at most
            C{maxTimeout}).
        @param timeout: shorthand for C{options=CallOptions(timeout=...)}.
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
        if kwargs is None:
            kwargs = {}
        if timeout is not None:
            options = callOptions(options, timeout)
        scheduler = self._scheduler
        try:
            call = scheduler.accept(name, args, kwargs, options, onProgress, owner, job)
        except Exception as e:
            return scheduler.refuse(name, args, kwargs, options, owner, job, e).deferred
        scheduler.enqueue(call)
        return call.deferred

    def start(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: CallOptions,
        sink: CallSink,
        tag: Any = None,
        owner: object = None,
    ) -> Call:
        """
        L{submit} on the lean lane: no L{Deferred}; C{sink} is told of the
        call's end (and its progress), which may happen before this
        returns (a call refused at once). Returns the L{Call}
        (C{call.cancel()} cancels it as cancelling L{submit}'s Deferred
        does).
        """
        scheduler = self._scheduler
        try:
            call = scheduler.accept(
                name, args, kwargs, options, None, owner, None, sink, tag
            )
        except Exception as e:
            return scheduler.refuse(
                name, args, kwargs, options, owner, None, e, sink, tag
            )
        scheduler.enqueue(call)
        return call

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

    def dropQueued(self, owner: object) -> int:
        """
        Remove every queued call of C{owner} without running it; their
        Deferreds fail with C{CancelledError}. Running calls are left to
        finish. Returns how many were dropped.
        """
        return self._scheduler.dropQueued(owner)

    def cancelIfQueued(self, deferred: Deferred[Any]) -> bool:
        """
        Cancel the call behind C{deferred} if it has not started; a running
        call is left alone. Returns whether it was cancelled.
        """
        for call in self._scheduler.queue:
            if call.owns(deferred):
                deferred.cancel()
                return True
        return False
