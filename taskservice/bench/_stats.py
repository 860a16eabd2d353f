"""
Small statistics helpers for the benchmarks: medians of interleaved runs,
percentiles, and a Markdown table.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Summary:
    """
    The median of several runs, with their spread.
    """

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, runs: Sequence[float]) -> Summary:
        return cls(statistics.median(runs), min(runs), max(runs))

    def show(self, unit: str, digits: int = 0) -> str:
        return (
            f"{self.median:,.{digits}f} {unit}"
            f" ({self.low:,.{digits}f}-{self.high:,.{digits}f})"
        )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
