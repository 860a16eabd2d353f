"""
Tasks for the durable-job fault tests (tests/test_jobs_integration.py and
tests/test_jobs.py). Each run leaves a file in the directory it is given,
named after the run (C{NAME.runATTEMPT.PID}), holding what the run saw: so a
test counts the runs of a job, and sees their attempts, times and
checkpoints, whatever happened to the processes meanwhile.

Tasks that must be caught mid-run wait for a gate file the test creates.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from taskservice import currentJob, progress, task

RUNS_ENVIRONMENT = "TASKSERVICE_TEST_RUNS"
"""Where L{ticked}, which a schedule calls without arguments, leaves its runs."""
GATE_DEADLINE = 120.0
"""A gated task gives up waiting after this (a test that went wrong)."""


def _mark(directory: str, name: str) -> int:
    """
    Leave this run's file; return its attempt (0: not a job).
    """
    job = currentJob()
    attempt = 0 if job is None else job.attempt
    seen = {
        "attempt": attempt,
        "job": None if job is None else job.id,
        "progress": None if job is None else job.progress,
        "at": time.time(),
        "pid": os.getpid(),
    }
    path = Path(directory) / f"{name}.run{attempt}.{os.getpid()}"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(seen))
    partial.rename(path)
    return attempt


def _wait(directory: str, gate: str) -> None:
    path = Path(directory) / gate
    end = time.monotonic() + GATE_DEADLINE
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)


def runs(directory: Path, name: str) -> list[dict[str, Any]]:
    """
    What each run of C{name} saw, in the order they started.
    """
    found = [
        json.loads(path.read_text())
        for path in directory.glob(f"{name}.run*")
        if not path.name.endswith(".partial")
    ]
    return sorted(found, key=lambda run: run["at"])


@task(idempotent=True)
def again(directory: str, name: str, gate: str = "release") -> int:
    """
    Idempotent: safe to run again after a crash. Waits for C{gate}.
    """
    attempt = _mark(directory, name)
    _wait(directory, gate)
    return attempt


@task
def once(directory: str, name: str, gate: str = "release") -> int:
    """
    Not idempotent: never to be run twice. Waits for C{gate}.
    """
    attempt = _mark(directory, name)
    _wait(directory, gate)
    return attempt


@task(resumable=True)
def resume(
    directory: str, name: str, steps: int = 4, pauseAt: int = 2, gate: str = "release"
) -> dict[str, int]:
    """
    Resumable: skips the steps an earlier attempt reported done, pausing
    after step C{pauseAt} until C{gate} opens.
    """
    job = currentJob()
    start = 0
    if job is not None and job.progress is not None:
        start = int(job.progress["done"])
    attempt = _mark(directory, name)
    for step in range(start + 1, steps + 1):
        progress(step, steps)
        if step == pauseAt:
            _wait(directory, gate)
    return {"attempt": attempt, "resumedAt": start}


@task
def quick(directory: str, name: str) -> int:
    """
    Runs and returns at once.
    """
    return _mark(directory, name)


@task
def killsWorker(directory: str, name: str, survives: int = 0) -> int:
    """
    SIGKILLs its own worker process, unless this is attempt C{survives}
    or later (0: always dies).
    """
    attempt = _mark(directory, name)
    if not survives or attempt < survives:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


@task(retries=2, backoff=0.2)
def alwaysKillsWorker(directory: str, name: str) -> None:
    """
    SIGKILLs its worker every time; its jobs may be retried twice.
    """
    _mark(directory, name)
    os.kill(os.getpid(), signal.SIGKILL)


@task
def echo(value: Any) -> Any:
    """
    A plain call's answer.
    """
    return value


@task
def ticked() -> int:
    """
    For schedules (called with no arguments): leave a run in the directory
    that C{$TASKSERVICE_TEST_RUNS} names.
    """
    return _mark(os.environ[RUNS_ENVIRONMENT], "ticked")
