"""
The params of the job methods (C{$/submit}, C{$/job}, C{$/attach},
C{$/cancelJob}, C{$/jobs}), checked and turned into values. No I/O, no
Twisted: the task server and the gateway's forwarding share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskservice._cron import TICK_KEY_PREFIX
from taskservice._journal import STATES, columnText
from taskservice._task import Registry
from taskservice.errors import InvalidParams, MethodNotFound
from taskservice.wire import ATTACH, CANCEL_JOB, JOB, JOBS, SUBMIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred

    from taskservice.jobs import JobService
    from taskservice.pool import ProcessPool

MAX_RETRIES = 100
MAX_KEY = 255
MAX_DELAY = 366 * 86400.0
MAX_BACKOFF = 86400.0
MAX_LIST = 1000
DEFAULT_LIST = 50

_SUBMIT_FIELDS = frozenset(
    ("method", "params", "key", "delay", "at", "retries", "backoff", "timeout", "wait")
)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """
    A checked C{$/submit}.

    @ivar paramsJSON: the task's params, as JSON text.
    @ivar retries: runs after a failed first one (the submit's, else the
        task's C{@task(retries=)}).
    @ivar at: when to run it (epoch seconds), if C{"at"} was given; else
        C{delay} seconds after it is recorded.
    @ivar wait: C{"wait": true}: the caller waits for the job's end in the
        same request (see L{callJobMethod}).
    """

    method: str
    paramsJSON: str
    key: str | None
    retries: int
    backoff: float
    timeout: float | None
    delay: float
    at: float | None
    wait: bool = False

    def runAt(self, now: float) -> float:
        return self.at if self.at is not None else now + self.delay


def parseSubmit(params: object, registry: Registry, maxTimeout: float) -> JobRequest:
    """
    Check C{$/submit}'s params against the registered tasks.
    """
    if not isinstance(params, Mapping):
        raise _invalid('$/submit needs {"method": ..., "params": ...}')
    unknown = sorted(set(params) - _SUBMIT_FIELDS)
    if unknown:
        raise _invalid(f"$/submit does not take {', '.join(unknown)}")
    method = params.get("method")
    if not isinstance(method, str) or not method:
        raise _invalid('$/submit needs "method": the name of a task')
    spec = registry.get(method)
    if spec is None:
        raise MethodNotFound("method not found", method)
    taskParams = params.get("params")
    if taskParams is None:
        args: Any = ()
        kwargs: Mapping[str, Any] = {}
    elif isinstance(taskParams, list):
        args, kwargs = taskParams, {}
    elif isinstance(taskParams, Mapping):
        args, kwargs = (), taskParams
    else:
        raise _invalid('"params" must be an array or an object')
    try:
        spec.checkArguments(args, kwargs)
    except TypeError as e:
        raise InvalidParams("invalid params", str(e)) from None
    key = params.get("key")
    if key is not None and (
        not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or "\x00" in key
    ):
        # (No NUL: PostgreSQL's text cannot hold it, and a key must mean the
        # same in both journals.)
        raise _invalid(
            f'"key" must be a string of 1 to {MAX_KEY} characters, without NUL'
        )
    if key is not None and key.startswith(TICK_KEY_PREFIX):
        raise _invalid(
            f'"key" may not start with "{TICK_KEY_PREFIX}": those are the keys of'
            " schedules' ticks"
        )
    retries = params.get("retries", spec.retries)
    if not _isInt(retries) or not 0 <= retries <= MAX_RETRIES:
        raise _invalid(f'"retries" must be a whole number from 0 to {MAX_RETRIES}')
    backoff = _number(params, "backoff", spec.backoff, 0.0, MAX_BACKOFF)
    delay = _number(params, "delay", 0.0, 0.0, MAX_DELAY)
    timeout = params.get("timeout")
    if timeout is not None:
        timeout = _number(params, "timeout", 0.0, 0.0, maxTimeout)
        if timeout <= 0:
            raise _invalid(f'"timeout" must be more than 0 and at most {maxTimeout:g}')
    at = params.get("at")
    if at is not None:
        if "delay" in params:
            raise _invalid('give "delay" or "at", not both')
        at = _instant(at)
    wait = params.get("wait", False)
    if not isinstance(wait, bool):
        raise _invalid('"wait" must be true or false')
    return JobRequest(
        method=method,
        paramsJSON=columnText(taskParams),
        key=key,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        delay=delay,
        at=at,
        wait=wait,
    )


def parseJobId(params: object, method: str) -> str:
    """
    The C{"job"} of C{$/job}, C{$/attach} and C{$/cancelJob}.
    """
    jobId = params.get("job") if isinstance(params, Mapping) else None
    if not isinstance(jobId, str) or not jobId:
        raise _invalid(f'{method} needs {{"job": "<id>"}}')
    return jobId


def parseListing(params: object) -> tuple[str | None, str | None, int]:
    """
    C{$/jobs}'s C{"state"}, C{"method"} and C{"limit"}.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise _invalid('$/jobs takes {"state": ..., "method": ..., "limit": ...}')
    state = params.get("state")
    if state is not None and state not in STATES:
        raise _invalid(f'"state" must be one of {", ".join(STATES)}')
    method = params.get("method")
    if method is not None and not isinstance(method, str):
        raise _invalid('"method" must be a task name')
    limit = params.get("limit", DEFAULT_LIST)
    if not _isInt(limit) or not 0 < limit <= MAX_LIST:
        raise _invalid(f'"limit" must be a whole number from 1 to {MAX_LIST}')
    return state, method, limit


def _isInt(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(
    params: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    value = params.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _invalid(f'"{name}" must be a number of seconds from {low:g} to {high:g}')
    return float(value)


def _instant(value: object) -> float:
    if not isinstance(value, str):
        raise _invalid('"at" must be an ISO 8601 time, e.g. "2026-12-03T10:00:00Z"')
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(
            f'"at" is not an ISO 8601 time: {value!r} (e.g. "2026-12-03T10:00:00Z")'
        ) from None
    if when.tzinfo is None:
        raise _invalid('"at" must say its time zone, e.g. "2026-12-03T10:00:00Z"')
    return when.timestamp()


def _invalid(why: str) -> InvalidParams:
    return InvalidParams("invalid params", why)


def callJobMethod(
    jobs: JobService,
    pool: ProcessPool,
    method: str,
    params: object,
    *,
    owner: object = None,
    onProgress: Callable[[Any], object] | None = None,
) -> Deferred[Any]:
    """
    Run job method C{method} with its C{params} on C{jobs}: the one place
    the task server and the gateway beside it turn a job method into a
    call of the job service.
    """
    if method == SUBMIT:
        request = parseSubmit(params, pool.registry, pool.maxTimeout)
        if not request.wait:
            return jobs.submit(request)
        return jobs.submit(request).addCallback(_waitFor, jobs, owner, onProgress)
    if method == JOBS:
        return jobs.jobs(*parseListing(params))
    jobId = parseJobId(params, method)
    if method == JOB:
        return jobs.job(jobId)
    if method == CANCEL_JOB:
        return jobs.cancel(jobId)
    assert method == ATTACH
    return jobs.attach(jobId, _jobProgress(jobId, onProgress), owner)


def _waitFor(
    submitted: dict[str, Any],
    jobs: JobService,
    owner: object,
    onProgress: Callable[[Any], object] | None,
) -> Deferred[Any]:
    """
    C{$/submit} with C{"wait": true}, once the job is committed: its id and
    state reach the caller first, as the request's first C{$/progress}
    (C{{"job", "state"}}, and C{"existing"} for a key already held); then
    the request waits as C{$/attach} does, and its reply is the job's result
    or error. Giving up on the request (C{$/cancelRequest}, a lost
    connection) detaches and leaves the job running, as for C{$/attach}.
    """
    jobId = submitted["job"]
    if onProgress is not None:
        onProgress(submitted)
    return jobs.attach(jobId, _jobProgress(jobId, onProgress), owner)


def _jobProgress(
    jobId: str, onProgress: Callable[[Any], object] | None
) -> Callable[[Any], None]:
    """
    A job's progress updates to C{onProgress}, each naming the job.
    """

    def progress(update: Any) -> None:
        if onProgress is not None:
            onProgress({**update, "job": jobId})

    return progress
