"""
Tasks with schedules of their own, for tests/test_schedules.py (a module of
their own: a registry of any other test module stays schedule-free).
"""

from __future__ import annotations

from taskservice import task


@task(schedule="*/5 * * * *", retries=2, backoff=3.0, timeout=7.0)
def everyFive() -> str:
    return "ticked"


@task(schedule="@daily")
def daily(kind: str = "daily") -> str:
    return kind


@task
def unscheduled(value: int) -> int:
    return value
