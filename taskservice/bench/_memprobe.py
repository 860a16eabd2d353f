"""
Reading the memory scenario's processes (see L{taskservice.bench._memory}):
the C{kB} lines of C{/proc/PID/status} and C{smaps_rollup}, a process's
resident and private bytes, its children, the lines of
C{python -X importtime}, and the units and change the rows show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taskservice.bench._procfs import processStats

MIB = 1 << 20


def kilobytes(text: str) -> dict[str, int]:
    """
    The C{"Name:   123 kB"} lines of C{/proc/PID/status} or
    C{/proc/PID/smaps_rollup}, as bytes by name; other lines are skipped.
    """
    sizes = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        fields = value.split()
        if sep and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            sizes[name.strip()] = int(fields[0]) * 1024
    return sizes


@dataclass(frozen=True)
class Import:
    """
    One line of C{python -X importtime}: microseconds spent in the module
    itself, and with everything it imported.
    """

    module: str
    selfMicros: int
    cumulativeMicros: int
    depth: int


def parseImportTime(text: str) -> list[Import]:
    """
    The imports C{python -X importtime} reported on standard error, in its
    order (a module after those it imported); other lines are skipped.
    """
    imports = []
    for line in text.splitlines():
        prefix, sep, rest = line.partition("import time:")
        if prefix or not sep:
            continue
        fields = rest.split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        module = name.lstrip()
        depth = (len(name) - len(module) - 1) // 2
        imports.append(Import(module, int(fields[0]), int(fields[1]), max(0, depth)))
    return imports


def percentChange(before: float, after: float) -> float:
    return (after - before) / before * 100.0


def mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"


def residentBytes(pid: int) -> int:
    """
    C{VmRSS} of process C{pid} in bytes.
    """
    return kilobytes(Path(f"/proc/{pid}/status").read_text())["VmRSS"]


def uniqueBytes(pid: int) -> int:
    """
    Memory only process C{pid} holds (private pages, clean and dirty): what
    it costs beyond what it shares with others.
    """
    sizes = kilobytes(Path(f"/proc/{pid}/smaps_rollup").read_text())
    return sizes.get("Private_Clean", 0) + sizes.get("Private_Dirty", 0)


def childrenOf(pid: int) -> list[int]:
    """
    The pids of C{pid}'s children (C{/proc/PID/task/*/children} needs a
    kernel option: scan every process's C{stat} instead).
    """
    return sorted(
        process for process, fields in processStats() if int(fields[1]) == pid
    )
