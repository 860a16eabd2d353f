"""
Small statistics helpers for the benchmarks: medians of interleaved runs,
percentiles, the few words the reports' cells and notes are made of
(latencies, ratios, a target met or missed), a Markdown table, and a
section of a generated page.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Rows = list[list[str]]
"""A report's rows: scenario, ours, the baseline, the ratio."""


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency(samples: list[float], withMax: bool = False) -> str:
    """
    C{"p50 … ms, p99 … ms"} (and the maximum) of round-trip samples.
    """
    text = (
        f"p50 {percentile(samples, 0.5) * 1e3:.3f} ms,"
        f" p99 {percentile(samples, 0.99) * 1e3:.3f} ms"
    )
    if withMax:
        text += f", max {max(samples) * 1e3:.1f} ms"
    return text


def ratio(ours: float, theirs: float, what: str = "") -> str:
    """
    C{"1.23x"}, or C{"1.23x (what)"}: C{ours} over C{theirs}.
    """
    return f"{ours / theirs:.2f}x{f' ({what})' if what else ''}"


def met(condition: bool) -> str:
    """
    A target in a note: C{"met"} or C{"missed"}.
    """
    return "met" if condition else "missed"


def verdict(ok: bool) -> str:
    """
    A target in the memory scenario's notes: C{"met"} or C{"MISSED"}.
    """
    return "met" if ok else "MISSED"


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
