"""
Processes as Linux's C{/proc} shows them, for the benchmarks' CPU and
memory readings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def statFields(stat: str) -> list[str]:
    """
    The fields of the text of C{/proc/PID/stat} after the command name,
    starting with the state (field 3), so that the parent's pid is
    C{[1]}, utime C{[11]} and stime C{[12]}. The command name in
    parentheses may hold spaces and parentheses: fields are counted from the
    last C{")"}.
    """
    return stat[stat.rindex(")") + 1 :].split()


def parentPid(stat: str) -> int:
    """
    The parent's pid from the text of C{/proc/PID/stat}.
    """
    return int(statFields(stat)[1])


def processStats() -> Iterator[tuple[int, list[str]]]:
    """
    Every process's pid and L{statFields}; those that end meanwhile are
    skipped.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), statFields(stat)
