"""
Tasks that return Deferreds (declared concurrent): their worker runs
Twisted's asyncio reactor. Kept apart from tests.pooltasks so that other
tests' workers stay reactor-free.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from taskservice import progress, task

_state = {"inFlight": 0}


@task(concurrent=True)
def later(seconds: float) -> Deferred[int]:
    """
    Wait on the reactor; return how many calls were in flight in this
    worker when this one started.
    """
    _state["inFlight"] += 1
    seen = _state["inFlight"]

    def done() -> int:
        _state["inFlight"] -= 1
        return seen

    return deferLater(reactor, seconds, done)


@task(concurrent=True)
@inlineCallbacks
def countDown(n: int) -> Generator[Deferred[Any], Any, int]:
    for i in range(n):
        yield deferLater(reactor, 0.01, lambda: None)
        progress(i + 1, n)
    return n


@task
def pid() -> int:
    return os.getpid()
