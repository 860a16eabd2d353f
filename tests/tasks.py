"""
Tasks used only by the tests.

Imported in-process by the pools under test (to build their registry) and,
through the C{PYTHONPATH} the pool passes on from C{sys.path}, by real worker
processes in the integration tests. Standard library only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from taskservice import progress, task

GATE_LIMIT = 30.0
"""The longest a L{wait_for} task waits for its file (a safety net)."""

SHORT_TIMEOUT = 2.5
"""The deadline of L{short}, in seconds."""


@task
def add(a: Any, b: Any) -> Any:
    """
    Return C{a + b}.
    """
    return a + b


@task
def boom(message: str = "boom") -> None:
    """
    Raise C{ValueError(message)}.
    """
    raise ValueError(message)


@task
def echo(value: Any) -> Any:
    """
    Return C{value} unchanged.
    """
    return value


@task
def steps(total: int) -> int:
    """
    Report progress C{1..total} of C{total}, then return C{total}.
    """
    for done in range(1, total + 1):
        progress(done, total)
    return total


@task(timeout=SHORT_TIMEOUT)
def short(value: Any = None) -> Any:
    """
    A task with its own deadline of L{SHORT_TIMEOUT} seconds.
    """
    return value


@task
def die(exitCode: int = 7) -> None:
    """
    End the worker process at once with C{exitCode}, as a crash would.
    """
    os._exit(exitCode)


@task
def wait_for(path: str, limit: float = GATE_LIMIT) -> str:
    """
    Block the worker until the file C{path} exists (at most C{limit}
    seconds), then return C{path}. The integration tests use it as a gate
    they open by creating the file.
    """
    deadline = time.monotonic() + limit
    gate = Path(path)
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)
    return path


@task
def record(path: str, tag: str, seconds: float = 0.0) -> str:
    """
    Sleep C{seconds}, then append C{tag} and a newline to the file C{path}:
    proof that the call ran, and in which order.
    """
    time.sleep(seconds)
    with open(path, "a", encoding="utf-8") as f:
        f.write(tag + "\n")
    return tag


@task(idempotent=True)
def nap(seconds: float) -> float:
    """
    Sleep C{seconds}, then return them: safe to run twice (idempotent).
    """
    time.sleep(seconds)
    return seconds


@task
def nap_once(seconds: float) -> float:
    """
    Sleep C{seconds}, then return them; not declared idempotent, so never
    retried elsewhere.
    """
    time.sleep(seconds)
    return seconds
