"""
Unit tests of C{$/submit} with C{"wait": true} (one request: the job is
recorded, its id reaches the caller first as the request's first
C{$/progress}, and the reply is the job's outcome), through the one place
the task server and the gateway turn job methods into job-service calls
(L{callJobMethod}): a pool on the in-memory FakeProcessReactor and an
inline SQLite journal on a real file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from taskservice._jobrequest import callJobMethod, parseSubmit
from taskservice.errors import Cancelled, InvalidParams, MethodNotFound, TaskFailed
from tests.test_jobservice import Rig, failure, noResult, result


class Waiting:
    """
    One waiting submit: its Deferred, and the progress it was told.
    """

    def __init__(self, rig: Rig, **params: Any) -> None:
        self.told: list[dict[str, Any]] = []
        self.owner = object()
        self.deferred: Deferred[Any] = callJobMethod(
            rig.jobs,
            rig.pool,
            "$/submit",
            {**params, "wait": True},
            owner=self.owner,
            onProgress=self.told.append,
        )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_waitParsed(rig: Rig) -> None:
    """
    C{"wait"} is a boolean, false unless given; anything else is -32602
    naming it.
    """
    registry = rig.pool.registry
    add = {"method": "add", "params": [1, 2]}
    assert parseSubmit(add, registry, 10).wait is False
    assert parseSubmit({**add, "wait": True}, registry, 10).wait is True
    for wrong in (1, "yes", None):
        with pytest.raises(InvalidParams) as raised:
            parseSubmit({**add, "wait": wrong}, registry, 10)
        assert raised.value.data == '"wait" must be true or false'


def test_waitAnswersTheResultAfterTheJobId(rig: Rig) -> None:
    """
    The job's id and state come first (once the job is committed), then its
    progress naming it, then the reply: the job's result; the job is
    recorded succeeded, as a submit and an attach would leave it.
    """
    waiting = Waiting(rig, method="count", params=[2])
    [first] = waiting.told
    jobId = first["job"]
    assert first == {"job": jobId, "state": "queued"}
    noResult(waiting.deferred)
    rig.turn()
    assert result(waiting.deferred) == 2
    progress = waiting.told[1:]
    assert progress and all(update["job"] == jobId for update in progress)
    assert progress[-1]["total"] == 2
    assert rig.state(jobId)["state"] == "succeeded"


def test_waitOnAFailingJob(rig: Rig) -> None:
    """
    A job that fails (its retries used) is the request's error, after its
    id: the caller tells it from a refused submit by the id before it.
    """
    waiting = Waiting(rig, method="boom", retries=0)
    assert len(waiting.told) == 1
    rig.turn()
    assert isinstance(failure(waiting.deferred, TaskFailed), TaskFailed)
    assert rig.state(waiting.told[0]["job"])["state"] == "failed"


def test_waitOnACancelledJob(rig: Rig) -> None:
    """
    A delayed job is told "scheduled"; cancelled ($/cancelJob), the waiting
    request answers -32800.
    """
    waiting = Waiting(rig, method="add", params=[1, 2], delay=60)
    [first] = waiting.told
    assert first["state"] == "scheduled"
    assert result(rig.jobs.cancel(first["job"]))["state"] == "cancelled"
    assert isinstance(failure(waiting.deferred, Cancelled), Cancelled)


def test_refusedSubmitIsAnErrorWithNoJobId(rig: Rig) -> None:
    """
    A submit refused before it is recorded (unknown task, wrong params) is
    an error with nothing told before it: no job exists.
    """
    for params, error in (
        ({"method": "nope"}, MethodNotFound),
        ({"method": "add", "params": [1]}, InvalidParams),
    ):
        with pytest.raises(error):
            callJobMethod(rig.jobs, rig.pool, "$/submit", {**params, "wait": True})
    assert result(rig.jobs.jobs(None, None, 10)) == []


def test_givingUpMidWaitLeavesTheJob(rig: Rig) -> None:
    """
    A caller giving up while it waits ($/cancelRequest, or its connection
    lost: the session cancels the request) is detached; the job runs on
    and ends succeeded, and an attach afterwards gets its result.
    """
    waiting = Waiting(rig, method="add", params=[1, 2])
    jobId = waiting.told[0]["job"]
    waiting.deferred.cancel()
    failure(waiting.deferred, CancelledError)
    assert rig.jobs._attached == {}
    rig.turn()
    assert rig.state(jobId)["state"] == "succeeded"
    assert result(rig.jobs.attach(jobId)) == 3


def test_connectionLostMidWait(rig: Rig) -> None:
    """
    The task server forgets a lost connection's attaches (detachAll of its
    owner): the waiting submit's among them; the job is left to run.
    """
    waiting = Waiting(rig, method="add", params=[2, 2])
    jobId = waiting.told[0]["job"]
    rig.jobs.detachAll(waiting.owner)
    assert rig.jobs._attached == {}
    rig.turn()
    noResult(waiting.deferred)
    assert result(rig.jobs.attach(jobId)) == 4


def test_waitWithAKeyAlreadyHeld(rig: Rig) -> None:
    """
    A waiting submit whose key an unfinished job holds waits for that job
    (told "existing"); once it ended, a waiting submit with the key gets
    its result at once, told "existing" too.
    """
    first = Waiting(rig, method="add", params=[1, 1], key="k")
    second = Waiting(rig, method="add", params=[1, 1], key="k")
    jobId = first.told[0]["job"]
    assert second.told == [{"job": jobId, "state": "queued", "existing": True}]
    rig.turn()
    assert result(first.deferred) == result(second.deferred) == 2
    third = Waiting(rig, method="add", params=[1, 1], key="k")
    assert third.told == [{"job": jobId, "state": "succeeded", "existing": True}]
    assert result(third.deferred) == 2
