"""
TaskClient's job handles against a real task server in this process: real
worker processes, a real socket, a real SQLite journal file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from taskservice._sqlitejournal import SQLiteJournal
from taskservice.client import TaskClient
from taskservice.errors import Cancelled, InvalidParams, JobNotFound, TaskFailed
from taskservice.jobs import JobService
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.service import TaskServerService
from taskservice.testing import freePort

pytestmark = pytest.mark.integration


@pytest_twisted.async_yield_fixture
async def client(tmp_path: Path) -> AsyncIterator[TaskClient]:
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=2)
    jobs = JobService(reactor, pool, SQLiteJournal(reactor, str(tmp_path / "j.db")))
    factory = TaskServerFactory(pool, jobs=jobs)
    port = freePort()
    service = TaskServerService(
        reactor, f"tcp:{port}:interface=127.0.0.1", pool, factory, jobs
    )
    service.startService()
    try:
        await pool.whenReady()
        client = TaskClient(reactor, f"tcp:127.0.0.1:{port}")
        client.startService()
        try:
            yield client
        finally:
            await client.stopService()
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_submitFollowAndAsk(client: TaskClient) -> None:
    """
    submit() fires with a handle once the job is recorded; its result()
    hears the progress and gets the result; status() tells the final
    state; a second submit with the same key gets the same job.
    """
    seen: list[dict[str, Any]] = []
    job = await client.submit("count", [5], key="five", onProgress=seen.append)
    assert not job.existing
    assert await job.result() == 5
    assert all(update["job"] == job.id for update in seen)
    status = await job.status()
    assert (status["state"], status["result"], status["progress"]) == (
        "succeeded",
        5,
        {"done": 5, "total": 5},
    )
    again = await client.submit("count", [5], key="five")
    assert again.existing and again.id == job.id
    assert await client.attach(job.id).result() == 5


@pytest_twisted.ensureDeferred
async def test_errorsAndCancel(client: TaskClient) -> None:
    """
    A job whose task raises fails its result() with TaskFailed; a delayed
    job cancelled fails its result() with Cancelled; an unknown id raises
    JobNotFound; bad options are refused at submit with InvalidParams.
    """
    failing = await client.submit("boom", ["nope"])
    with pytest.raises(TaskFailed, match="nope"):
        await failing.result()
    later = await client.submit("add", [1, 2], delay=3600)
    waiting = later.result()
    assert await later.cancel() == {"job": later.id, "state": "cancelled"}
    with pytest.raises(Cancelled):
        await waiting
    with pytest.raises(JobNotFound):
        await client.attach("no-such-job").status()
    with pytest.raises(InvalidParams) as refused:
        await client.submit("add", [1, 2], retries=-1)
    assert "retries" in refused.value.data
