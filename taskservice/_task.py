"""
The task registry: ``@task`` marks a function as callable from the network.

This module is imported by worker processes, so it imports nothing heavy (no
Twisted). Registration attaches a frozen L{TaskSpec} to the function; a
L{Registry} is built from an explicit list of modules, so only functions the
operator named can ever run. Nothing from the wire is imported or executed by
name.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, overload

SPEC_ATTRIBUTE = "__taskservice_task__"
RESERVED_PREFIX = "$/"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")

_T = TypeVar("_T")
F = TypeVar("F", bound=Callable[..., Any])

ProgressHook = Callable[[dict[str, Any]], None]
_progressHook: ContextVar[ProgressHook | None] = ContextVar(
    "taskservice_progress", default=None
)


@dataclass(frozen=True)
class JobContext:
    """
    What a task running as a durable job knows of its job (see
    L{currentJob}).

    @ivar id: the job's id.
    @ivar attempt: which attempt this run is (1 for the first).
    @ivar progress: the last progress update the journal holds from an
        earlier attempt (the task's checkpoint), or L{None} on a first run.
    """

    id: str
    attempt: int
    progress: Mapping[str, Any] | None = None


_jobContext: ContextVar[JobContext | None] = ContextVar("taskservice_job", default=None)


def currentJob() -> JobContext | None:
    """
    The job the calling task runs as, or L{None} for a plain call (and
    outside a worker).

    A task that must be safe to run again after a crash (see docs/tasks)
    reads C{currentJob().progress} to skip the work an earlier attempt
    reported done, and uses C{currentJob().id} to build keys that let the
    systems it calls drop a repeat.
    """
    return _jobContext.get()


def jobContextFrom(frame: Mapping[str, Any] | None) -> JobContext | None:
    """
    The L{JobContext} of a call frame's C{"job"} field (L{None}: not a job).
    """
    if not frame:
        return None
    return JobContext(
        id=str(frame["id"]),
        attempt=int(frame.get("attempt", 1)),
        progress=frame.get("progress"),
    )


@dataclass(frozen=True)
class TaskSpec:
    """
    What the registry knows about one task.

    @ivar name: the name callers use on the wire.
    @ivar function: the function itself (never sent anywhere).
    @ivar timeout: the task's own deadline in seconds, or L{None} to use the
        service default.
    @ivar idempotent: whether a failed call may be retried elsewhere.
    @ivar concurrent: the function returns a Twisted C{Deferred} (or
        another awaitable): its calls share a worker, which then runs a
        Twisted reactor (on asyncio).
    @ivar retries: for durable jobs, how many times a failed run is tried
        again by default (a submit may say otherwise).
    @ivar backoff: for durable jobs, the first retry's delay in seconds;
        each further retry doubles it (with jitter).
    @ivar resumable: safe to run again as a durable job, though not as a
        plain call: the task skips what L{currentJob}C{().progress} says an
        earlier attempt did, and keys its effects by the job's id. A job of
        a resumable (or idempotent) task that was running when its server
        went away runs again; any other is marked interrupted.
    @ivar validate: called with a call's arguments in the service process,
        before the call is queued, or L{None}: raising L{TypeError} or
        L{ValueError} refuses the call as invalid params.
    @ivar schedule: a cron expression (five fields, UTC; see
        L{taskservice._cron.parseCron}): the task server runs the task as a
        durable job, with no arguments, at each tick; or L{None}.
    """

    name: str
    function: Callable[..., Any] = field(repr=False, compare=False)
    timeout: float | None = None
    idempotent: bool = False
    concurrent: bool = False
    retries: int = 0
    backoff: float = 1.0
    resumable: bool = False
    validate: Callable[..., object] | None = field(
        default=None, repr=False, compare=False
    )
    schedule: str | None = None

    @cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.function)

    @cached_property
    def isAsync(self) -> bool:
        """
        Whether the task's calls are non-blocking (a coroutine function, or
        declared C{concurrent}): such calls share a worker.
        """
        return self.concurrent or inspect.iscoroutinefunction(self.function)

    @property
    def needsReactor(self) -> bool:
        """
        Whether the worker must run a Twisted reactor for this task (it may
        return a Deferred).
        """
        return self.concurrent and not inspect.iscoroutinefunction(self.function)

    @cached_property
    def _positional(self) -> tuple[int, int] | None:
        """
        For a function of plain parameters only (no C{*args}, C{**kwargs} or
        keyword-only ones): how many positional arguments it needs and takes.
        """
        parameters = self.signature.parameters.values()
        if any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in parameters):
            return None
        required = sum(1 for p in parameters if p.default is p.empty)
        return required, len(parameters)

    def checkArguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """
        Raise L{TypeError} if C{args} and C{kwargs} do not fit the function,
        or the task's C{validate} refuses them.
        """
        positional = self._positional
        # The common case first, without Signature.bind's cost (a third of
        # the pool's own time per trivial call).
        if not (
            not kwargs
            and positional is not None
            and positional[0] <= len(args) <= positional[1]
        ):
            self.signature.bind(*args, **kwargs)
        if self.validate is not None:
            try:
                self.validate(*args, **kwargs)
            except ValueError as e:
                raise TypeError(str(e)) from None


@overload
def task(function: F, /) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    concurrent: bool = False,
    retries: int = 0,
    backoff: float = 1.0,
    resumable: bool = False,
    validate: Callable[..., object] | None = None,
    schedule: str | None = None,
) -> Callable[[F], F]: ...


def task(
    function: F | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    concurrent: bool = False,
    retries: int = 0,
    backoff: float = 1.0,
    resumable: bool = False,
    validate: Callable[..., object] | None = None,
    schedule: str | None = None,
) -> F | Callable[[F], F]:
    """
    Register a function as a task callable over the network.

    Use bare (C{@task}) or with a policy (C{@task(name="mail.send",
    timeout=60)}). The function itself is returned unchanged, with its
    L{TaskSpec} attached, so it stays callable in-process.

    C{retries} and C{backoff} are the defaults for the task's durable jobs
    (C{$/submit}): a failed run is tried again up to C{retries} times, the
    first after C{backoff} seconds, doubling each time, with jitter.

    C{concurrent=True} declares a function that returns a Twisted
    C{Deferred} (say, an C{@inlineCallbacks} function): its calls then run
    concurrently in a worker that runs Twisted's asyncio reactor. (C{async
    def} tasks are concurrent without saying so.)

    C{validate}, a function taking the task's arguments, checks them in
    the service process before the call is queued (without it, only the
    signature is checked): raising L{TypeError} or L{ValueError} refuses
    the call with -32602 (invalid params), the exception's message as
    C{data}.

    C{schedule}, a cron expression (C{"*/5 * * * *"}: five fields, in UTC;
    or C{"@hourly"} and the like), makes the task server run the task as a
    durable job at each tick, with no arguments, once across every server
    sharing the journal (see docs/jobs, "Schedules"). A wrong expression,
    or a function that cannot be called without arguments, raises
    L{ValueError} here.
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
    if not backoff >= 0:
        raise ValueError(f"backoff must be >= 0 seconds, not {backoff!r}")
    if schedule is not None:
        from taskservice._cron import parseCron

        parseCron(schedule)

    def register(f: F) -> F:
        taskName = f.__name__ if name is None else name
        if not _NAME.match(taskName):
            raise ValueError(
                f"invalid task name {taskName!r}: letters, digits, '_', '.', '-'"
                " only, not starting with a digit or '$'"
            )
        if schedule is not None:
            checkCallableAlone(taskName, f)
        setattr(
            f,
            SPEC_ATTRIBUTE,
            TaskSpec(
                name=taskName,
                function=f,
                timeout=timeout,
                idempotent=idempotent,
                concurrent=concurrent,
                retries=retries,
                backoff=float(backoff),
                resumable=resumable,
                validate=validate,
                schedule=schedule,
            ),
        )
        return f

    if function is not None:
        return register(function)
    return register


def checkCallableAlone(name: str, function: Callable[..., Any]) -> None:
    """
    Raise L{ValueError} unless C{function} (task C{name}) can be called
    with no arguments, as a schedule's tick calls it.
    """
    try:
        inspect.signature(function).bind()
    except TypeError as e:
        raise ValueError(
            f"task {name!r} cannot be scheduled: a tick calls it with no"
            f" arguments ({e})"
        ) from None


def specOf(function: Callable[..., Any]) -> TaskSpec | None:
    """
    Return the L{TaskSpec} attached by L{task}, or L{None}.
    """
    spec = getattr(function, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, TaskSpec) else None


def progress(done: float, total: float | None = None, **extra: Any) -> None:
    """
    Report progress of the task running in this worker to its caller.

    Call it from inside a task (blocking code is fine). Outside a worker it
    does nothing, so tasks stay testable as plain functions. C{extra} keys
    must be JSON-serialisable and are passed to the caller as they are.
    """
    hook = _progressHook.get()
    if hook is None:
        return
    update: dict[str, Any] = dict(extra)
    update["done"] = done
    if total is not None:
        update["total"] = total
    hook(update)


class Registry(Mapping[str, TaskSpec]):
    """
    The tasks that may run, by name, built from explicit modules.
    """

    def __init__(self, specs: Iterable[TaskSpec] = (), modules: Iterable[str] = ()):
        self._specs: dict[str, TaskSpec] = {}
        self.modules: tuple[str, ...] = tuple(modules)
        for spec in specs:
            self.add(spec)

    @classmethod
    def fromModules(cls, modules: Iterable[str]) -> Registry:
        """
        Import each module and register every C{@task} function defined in
        it (functions merely imported into it from elsewhere are skipped).
        """
        moduleNames = tuple(modules)
        registry = cls(modules=moduleNames)
        for moduleName in moduleNames:
            module = importlib.import_module(moduleName)
            for value in vars(module).values():
                spec = specOf(value) if callable(value) else None
                if spec is not None and value.__module__ == module.__name__:
                    registry.add(spec)
        return registry

    def add(self, spec: TaskSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and existing.function is not spec.function:
            raise ValueError(f"two tasks are registered as {spec.name!r}")
        self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> TaskSpec:
        return self._specs[name]

    @overload
    def get(self, name: str, /) -> TaskSpec | None: ...

    @overload
    def get(self, name: str, default: TaskSpec | _T, /) -> TaskSpec | _T: ...

    def get(self, name: str, default: Any = None, /) -> Any:
        # (The dict's own get: the pool looks a task up per call.)
        return self._specs.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)
