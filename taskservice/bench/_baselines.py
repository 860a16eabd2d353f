"""
The baselines of the pool scenarios (see L{taskservice.bench._poolscenarios}):
C{multiprocessing.Pool} and C{concurrent.futures.ProcessPoolExecutor}
running the same example task, L{WINDOW} calls in flight or one at a time.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

from taskservice.examples import echo as _echo

POOL_SIZE = 2
WINDOW = 200

# The baselines' worker processes must not be forked from this process: they
# would inherit Twisted's signal handlers and ignore Pool.terminate().
MP_CONTEXT = "forkserver"


def mpThroughput(total: int) -> float:
    with multiprocessing.get_context(MP_CONTEXT).Pool(POOL_SIZE) as pool:
        pool.apply(_echo, (0,))
        return _throughputWithPool(
            lambda value, done: pool.apply_async(
                _echo, (value,), callback=done, error_callback=done
            ),
            total,
        )


def executorThroughput(total: int) -> float:
    context = multiprocessing.get_context(MP_CONTEXT)
    with concurrent.futures.ProcessPoolExecutor(POOL_SIZE, mp_context=context) as ex:
        ex.submit(_echo, 0).result()
        return _throughputWithPool(
            lambda value, done: ex.submit(_echo, value).add_done_callback(done),
            total,
        )


def _throughputWithPool(submit: Callable[[int, Any], object], total: int) -> float:
    slots = threading.Semaphore(WINDOW)
    finished = threading.Event()
    remaining = [total]
    lock = threading.Lock()

    def done(_: object) -> None:
        slots.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                finished.set()

    started = time.perf_counter()
    for i in range(total):
        slots.acquire()
        submit(i, done)
    finished.wait()
    return total / (time.perf_counter() - started)


def mpSequential(count: int) -> list[float]:
    with multiprocessing.get_context(MP_CONTEXT).Pool(POOL_SIZE) as pool:
        pool.apply(_echo, (0,))
        samples = []
        for i in range(count):
            started = time.perf_counter()
            pool.apply(_echo, (i,))
            samples.append(time.perf_counter() - started)
        return samples
