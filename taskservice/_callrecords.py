"""
The timings of ended calls, kept per call as one tuple and handed to those
who read them (the pool's Prometheus metrics, its recent calls for
C{$/stats}) in batches: whenever one of them is read, and every
L{FOLD_AT} calls, so that what waits stays bounded.

Per call the pool appends one tuple; a batch is handed over as columns
(L{Columns}), which its readers fold into their counts with C-speed
passes (C{map}, C{sorted}, C{bisect}) instead of Python per call. Only
the calls that ran and did not fail are kept this way: the others (rare:
refused, cancelled while queued, failed) are told one by one, after what
is pending, so every reader sees the calls in the order they ended.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

FOLD_AT = 1024
"""Calls kept before they are handed to the readers unasked."""

Record = tuple[str, str, float, float, float]
"""One ended call: its task, outcome, and when it was queued, started and
ended (reactor time)."""


class Columns(NamedTuple):
    """
    A batch of L{Record}s, column by column (in the order the calls ended).
    """

    tasks: tuple[str, ...]
    outcomes: tuple[str, ...]
    queuedAt: tuple[float, ...]
    startedAt: tuple[float, ...]
    endedAt: tuple[float, ...]


class CallsReader(Protocol):
    """
    Who folds ended calls in batches.
    """

    def callsFinished(self, calls: Columns) -> None:
        """
        These calls ended (each ran, and none failed), oldest first.
        """


class CallRecords:
    """
    The ended calls not yet handed to the readers.

    @ivar pending: the L{Record}s waiting (the pool appends to it).
    @ivar readers: the L{CallsReader}s told of each batch.
    """

    __slots__ = ("pending", "readers")

    def __init__(self) -> None:
        self.pending: list[Record] = []
        self.readers: list[CallsReader] = []

    def fold(self) -> None:
        """
        Hand what is pending to every reader.
        """
        pending = self.pending
        if not pending:
            return
        self.pending = []
        if not self.readers:
            return
        columns = Columns(*zip(*pending, strict=True))
        for reader in self.readers:
            reader.callsFinished(columns)
