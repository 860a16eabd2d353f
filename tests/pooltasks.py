"""
Tasks for the pool tests: well-behaved ones and ones that misbehave on
purpose (crash, hang, print). Workers import this module by name.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from taskservice import currentJob, progress, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(timeout=0.5)
def hang(seconds: float = 60.0) -> None:
    time.sleep(seconds)


@task
def crash(code: int = 7) -> None:
    os._exit(code)


@task
def pid() -> int:
    return os.getpid()


@task
def chatty(text: str) -> str:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text


@task
def count(n: int) -> int:
    for i in range(1, n + 1):
        progress(i, n)
    return n


@task
def unserialisable() -> object:
    return object()


@task(name="renamed.task")
def originalName() -> str:
    return "renamed"


@task
async def coroutine(value: int) -> int:
    return value * 2


@task
def getenv(name: str) -> str | None:
    return os.environ.get(name)


_naps = {"inFlight": 0}


@task
async def nap(seconds: float) -> int:
    """
    Sleep without blocking; return how many naps were in flight at once in
    this worker when this one started (proof of concurrency, not timing).
    """
    import asyncio

    _naps["inFlight"] += 1
    seen = _naps["inFlight"]
    try:
        await asyncio.sleep(seconds)
    finally:
        _naps["inFlight"] -= 1
    return seen


_hoard: list[bytes] = []


@task
def hoard(megabytes: int) -> int:
    """
    Keep C{megabytes} of memory allocated in this worker.
    """
    _hoard.append(b"x" * (megabytes * 1024 * 1024))
    return os.getpid()


@task
def big(n: int) -> str:
    return "x" * n


@task
def plainReturningCoroutine(value: int) -> object:
    """
    A plain function that returns a coroutine (in a module that also has
    async def tasks, so the worker runs an event loop).
    """

    async def later() -> int:
        return value + 1

    return later()


@task
def returnsDeferred() -> object:
    from twisted.internet.defer import succeed

    return succeed(1)


@task
def jobInfo() -> dict[str, Any] | None:
    job = currentJob()
    return None if job is None else dataclasses.asdict(job)


@task
async def asyncJobInfo() -> dict[str, Any] | None:
    job = currentJob()
    return None if job is None else dataclasses.asdict(job)


@task
def boom(message: str = "boom") -> None:
    raise ValueError(message)
