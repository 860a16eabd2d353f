"""
Tasks for the benchmarks only (not served by ``twistd taskservice``).

``taskservice.examples`` has a blocking ``sleep`` but no coroutine one: the
burst scenario needs an ``async def`` sleep to measure how many coroutine
calls a worker runs at once.
"""

from __future__ import annotations

import asyncio
import time

from taskservice import task

MAX_SLEEP = 60.0


@task(name="async_sleep")
async def asyncSleep(seconds: float) -> float:
    """
    Sleep C{seconds} (at most a minute) without blocking the worker's event
    loop, then return them.
    """
    if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_SLEEP:
        raise ValueError(f"seconds must be a number from 0 to {MAX_SLEEP:g}")
    await asyncio.sleep(seconds)
    return seconds


@task(name="started_at")
def startedAt() -> float:
    """
    The wall-clock time this call started in its worker (the claim-latency
    benchmark subtracts the time its job was submitted).
    """
    return time.time()
