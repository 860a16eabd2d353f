"""
Job handles for Twisted callers: L{Job} wraps the durable-job methods
(C{$/submit}, C{$/attach}, C{$/job}, C{$/cancelJob}) over anything that
makes calls the way L{taskservice.client.TaskClient} does (its C{request}),
so a TaskClient, a Balancer or the gateway's PoolCaller all give them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Unpack

from twisted.internet.defer import Deferred

from taskservice._clientbase import SubmitOptions
from taskservice._clientcore import ProgressCallback
from taskservice.wire import ATTACH, CANCEL_JOB, JOB, SUBMIT, submitParams


class Caller(Protocol):
    """
    What L{Job} calls through: C{TaskClient.request}'s signature.
    """

    def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        onProgress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]: ...


class Job:
    """
    A durable job, by id: ask for its state, wait for its end, cancel it.

    A handle holds nothing but the id and the caller: making one for an id
    (L{attach}) costs nothing, and an unknown id shows as
    L{taskservice.errors.JobNotFound} on first use.

    @ivar id: the job's id.
    @ivar existing: C{True} when C{submit} found a job holding its key
        instead of recording a new one.
    """

    def __init__(
        self,
        caller: Caller,
        jobId: str,
        onProgress: ProgressCallback | None = None,
        existing: bool = False,
    ) -> None:
        self.id = jobId
        self.existing = existing
        self._caller = caller
        self._onProgress = onProgress

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def result(self, onProgress: ProgressCallback | None = None) -> Deferred[Any]:
        """
        Fire with the job's result, or fail with its error, once it ends
        (at once if it has), through C{$/attach}. C{onProgress} (else the
        handle's) hears the job's progress meanwhile, the latest first.
        Cancelling the Deferred stops waiting and leaves the job running; so
        does a lost connection (the Deferred then fails with -32006:
        call C{result()} again once the client is back).
        """
        return self._caller.request(
            ATTACH, {"job": self.id}, onProgress=onProgress or self._onProgress
        )

    def status(self) -> Deferred[dict[str, Any]]:
        """
        The job as it is now (C{$/job}'s answer: state, attempts, progress,
        result or error, times).
        """
        return self._caller.request(JOB, {"job": self.id})

    def cancel(self) -> Deferred[dict[str, Any]]:
        """
        Cancel the job (C{$/cancelJob}); fire with C{{"job", "state"}}
        after.
        """
        return self._caller.request(CANCEL_JOB, {"job": self.id})


def submitJob(
    caller: Caller,
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    onProgress: ProgressCallback | None = None,
    **options: Unpack[SubmitOptions],
) -> Deferred[Job]:
    """
    Submit a durable job; fire with its L{Job} once the server has it on
    disk. The options are C{$/submit}'s (L{SubmitOptions}, see docs/jobs);
    one left out or L{None} is the server's default. C{onProgress} is the
    handle's, for its C{result()}.
    """
    request = submitParams(method, params, options)

    def made(answer: dict[str, Any]) -> Job:
        return Job(
            caller, answer["job"], onProgress, existing=bool(answer.get("existing"))
        )

    d: Deferred[Any] = caller.request(SUBMIT, request)
    return d.addCallback(made)
