"""
What a pool's recent calls looked like, for C{$/stats} (and the gateway's
dashboard): the percentiles of their times over the last minute, and the
last calls that failed, with their errors.

L{RecentCalls} is a L{taskservice.pool.CallListener} the pool keeps, and
a L{taskservice._callrecords.CallsReader}: the calls that ran and did not
fail come in batches (one pass appends their pairs to a bounded deque),
the others one by one (a failure adds one small dict to another deque);
the percentiles are computed only when C{$/stats} asks.
"""

from __future__ import annotations

import math
from collections import deque
from operator import sub
from typing import TYPE_CHECKING, Any

from taskservice._call import FAILED
from taskservice.errors import toWireError

if TYPE_CHECKING:
    from taskservice._call import Call
    from taskservice._callrecords import Columns

LATENCY_WINDOW = 60.0
"""Seconds of calls the percentiles cover."""
MAX_TIMED = 4096
"""The most recent calls kept for the percentiles (at a higher rate than
C{MAX_TIMED / LATENCY_WINDOW} calls a second, they cover less than the
window: the document says how many calls they cover)."""
MAX_FAILURES = 20
"""Failed calls remembered."""
MAX_TEXT = 500
"""Characters of an error's message (and type) kept."""
FAILURE_OUTCOMES = FAILED | {"internal_error"}
"""The outcomes remembered as failures: the task raised, timed out, lost
its worker, returned too much, or the pool failed unexpectedly. Refusals
(overloaded, invalid params) and cancellations are not failures."""


def _clip(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def percentile(ordered: list[float], fraction: float) -> float:
    """
    The C{fraction} (0 to 1) percentile of the ascending C{ordered} (not
    empty), by the nearest-rank method: the smallest value with at least
    that fraction of the values at or below it.
    """
    rank = math.ceil(fraction * len(ordered) - 1e-9)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


class RecentCalls:
    """
    Listens to every call's end (see L{taskservice.pool.CallListener}).
    """

    def __init__(self) -> None:
        self._timed: deque[tuple[float, float]] = deque(maxlen=MAX_TIMED)
        self._failures: deque[dict[str, Any]] = deque(maxlen=MAX_FAILURES)

    def callEnded(self, call: Call) -> None:
        endedAt = call.endedAt
        if endedAt is None or call.queuedAt is None:
            # Refused at submission (or overloaded): it never waited or ran.
            return
        outcome = call.outcome
        assert outcome is not None
        self._timed.append((endedAt, endedAt - call.queuedAt))
        if outcome.kind in FAILURE_OUTCOMES:
            self._failures.append(self._failure(call, outcome.kind, outcome.error))

    def callsFinished(self, calls: Columns) -> None:
        """
        A batch of calls that ran and did not fail (oldest first).
        """
        endedAt = calls.endedAt
        self._timed.extend(zip(endedAt, map(sub, endedAt, calls.queuedAt), strict=True))

    def _failure(
        self, call: Call, kind: str, error: BaseException | None
    ) -> dict[str, Any]:
        failure: dict[str, Any] = {
            "at": call.endedAt,
            "task": call.task,
            "outcome": kind,
        }
        if call.job is not None and "id" in call.job:
            failure["job"] = call.job["id"]
        if error is not None:
            wire = toWireError(error)
            failure["code"] = int(wire.code)
            data = wire.data
            if isinstance(data, dict) and "type" in data:
                failure["type"] = _clip(data["type"])
                failure["message"] = _clip(data.get("message", ""))
            else:
                failure["message"] = _clip(wire.message)
        return failure

    def latency(self, now: float) -> dict[str, Any]:
        """
        The percentiles (seconds, submission to outcome) of the calls that
        ended in the last L{LATENCY_WINDOW} seconds before C{now}: C{calls}
        counted, C{p50}, C{p90}, C{p99}, C{max} (L{None} when none ended).
        """
        since = now - LATENCY_WINDOW
        times = sorted(seconds for at, seconds in self._timed if at >= since)
        result: dict[str, Any] = {"window": LATENCY_WINDOW, "calls": len(times)}
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            result[name] = round(percentile(times, fraction), 6) if times else None
        result["max"] = round(times[-1], 6) if times else None
        return result

    def failures(self) -> list[dict[str, Any]]:
        """
        The last L{MAX_FAILURES} failed calls, newest first.
        """
        return list(reversed(self._failures))
