"""
Tasks for the tests of several task servers on one PostgreSQL journal
(tests/test_pg_integration.py). Each run writes a file named after its job,
attempt and process (C{JOB.ATTEMPT.PID}) holding its start time, and adds
its end time when it returns: so a test sees, from outside, every run of
every job, and whether two runs of one job ever overlapped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from taskservice import currentJob, task


def _run(directory: str, pause: float) -> int:
    job = currentJob()
    assert job is not None, "a job, not a plain call"
    path = Path(directory) / f"{job.id}.{job.attempt}.{os.getpid()}"
    with path.open("w") as f:
        f.write(json.dumps({"start": time.time(), "pid": os.getpid()}) + "\n")
    time.sleep(pause)
    with path.open("a") as f:
        f.write(json.dumps({"end": time.time()}) + "\n")
    return job.attempt


@task(idempotent=True)
def safeStep(directory: str, pause: float = 0.005) -> int:
    """
    Safe to run again after its server died.
    """
    return _run(directory, pause)


@task
def unsafeStep(directory: str, pause: float = 0.005) -> int:
    """
    Never to be run twice.
    """
    return _run(directory, pause)


def runsByJob(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """
    Every run seen, by job: start, end (None if it never returned), pid,
    attempt.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for path in directory.iterdir():
        jobId, attempt, pid = path.name.rsplit(".", 2)
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        run = {
            "start": lines[0]["start"],
            "end": lines[1]["end"] if len(lines) > 1 else None,
            "pid": int(pid),
            "attempt": int(attempt),
        }
        found.setdefault(jobId, []).append(run)
    for runs in found.values():
        runs.sort(key=lambda run: run["start"])
    return found
