"""
The floor under every sequential latency here: one round trip of a few bytes
between two plain Python processes over pipes, with no work at either end.
A sequential call through the task server makes two such trips (client to
parent, parent to worker) and a call through the pool alone one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

_ECHO = (
    "import os\n"
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    os.write(1, data)\n"
)


def pipeRoundTrips(count: int) -> list[float]:
    """
    Seconds per round trip of C{count} 60-byte messages to an echoing child.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    out, back = child.stdin.fileno(), child.stdout.fileno()
    message = b"x" * 60
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(out, message)
            received = 0
            while received < len(message):
                received += len(os.read(back, 65536))
            samples.append(time.perf_counter() - started)
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()
    return samples
