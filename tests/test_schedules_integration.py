"""
Schedules as an operator meets them: real C{twistd taskservice} processes on
a real SQLite journal, real workers, real sockets, started and stopped over
a tick.

Five-field cron ticks are a minute apart at best, so no test waits for one:
the schedule's latest tick is put a few minutes in the past, where it has
not run, and the tests watch what a start does with it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from taskservice._cron import isoTick
from taskservice.testing import Twistd, freePort
from tests.jobtasks import RUNS_ENVIRONMENT, runs
from tests.test_jobs_integration import Rpc, jobServer, pythonPath, runsOf
from tests.test_twistd import DEADLINE, waitFor

pytestmark = pytest.mark.integration

__all__ = ["pythonPath"]  # (the autouse fixture that lets twistd import tests.*)


def armed(rpc: Rpc) -> dict[str, Any]:
    """
    Wait until the server has tried its schedule's latest tick and armed
    the next (C{$/stats} shows when): a job read after this sees what that
    try recorded (the journal's writer takes operations in order).
    """

    def schedules() -> dict[str, Any] | None:
        found: dict[str, Any] = rpc.result("$/stats")["jobs"].get("schedules", {})
        return found if found.get("ticked", {}).get("next") else None

    return waitFor("the schedule to be armed", schedules)


def tickJobs(rpc: Rpc) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = rpc.result("$/jobs", {"method": "ticked"})
    return jobs


def test_aMissedTickRunsOnceAcrossRestarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A server started with a schedule whose latest tick (three minutes ago,
    daily) has not run runs it once, as a durable job keyed
    C{cron:ticked:<tick>} that succeeds; started again (after SIGTERM, then
    after SIGKILL) on the same journal, it does not run it again.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    monkeypatch.setenv(RUNS_ENVIRONMENT, str(runsDir))
    tick = (time.time() // 60) * 60 - 180
    hour, minute = time.gmtime(tick).tm_hour, time.gmtime(tick).tm_min
    schedule = ("--schedule", f"ticked={minute} {hour} * * *")
    journal = tmp_path / "jobs.sqlite3"
    port = freePort()

    with jobServer(tmp_path / "first", journal, port, *schedule) as (server, rpc):
        (run,) = runsOf(runsDir, "ticked", 1)
        stats = armed(rpc)
        assert stats["ticked"]["cron"] == f"{minute} {hour} * * *"
        assert stats["ticked"]["next"] == isoTick(tick + 86400)
        (job,) = tickJobs(rpc)
        assert job["key"] == f"cron:ticked:{isoTick(tick)}"
        assert job["job"] == run["job"]
        assert rpc.until(job["job"], "succeeded")["runAt"] == tick
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=DEADLINE) == -signal.SIGTERM

    for name, stop in (("second", signal.SIGKILL), ("third", signal.SIGTERM)):
        with jobServer(tmp_path / name, journal, port, *schedule) as (server, rpc):
            armed(rpc)
            assert [j["job"] for j in tickJobs(rpc)] == [job["job"]]
            assert rpc.result("$/stats")["jobs"]["ticks"] == 0
            server.process.send_signal(stop)
            assert server.process.wait(timeout=DEADLINE) == -stop
    assert len(runs(runsDir, "ticked")) == 1


def test_aWrongScheduleStopsTheStart(tmp_path: Path) -> None:
    """
    twistd with a wrong --schedule exits at once with a usage error saying
    what is wrong, before anything listens.
    """
    with Twistd(
        tmp_path,
        "--no-websocket",
        "--no-smtp-sink",
        "--jobs-db",
        ":memory:",
        "--schedule",
        "fib=*/5 * * *",
    ) as server:
        assert server.wait() != 0
        assert (
            "--schedule fib: cron expression '*/5 * * *' has 4 fields; it needs five"
            in server.output()
        )
