"""
Small statistics helpers for the benchmarks: medians of interleaved runs,
percentiles, a Markdown table, and a section of a generated page.
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


def mergeSection(document: str, name: str, section: str) -> str:
    """
    C{document} with C{section} between the markers of C{name}: in place of
    what they held, or appended at the end if they are not there yet.
    Everything outside the markers is kept as it is.
    """
    begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->\n"
    body = begin + section.rstrip("\n") + "\n" + end
    start = document.find(begin)
    stop = document.find(end, start) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        return document[:start] + body + document[stop + len(end) :]
    return document.rstrip("\n") + "\n\n" + body
