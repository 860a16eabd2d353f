"""
The pure helpers of the benchmarks' burst, memory and jobs scenarios:
parsing C{/proc} and C{-X importtime} text, the arithmetic of the rows, the
page section a partial run writes, and the journal the restart scenario
builds (a small real SQLite file). No processes, no timing.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from taskservice import Registry
from taskservice.bench._burst import idealSeconds
from taskservice.bench._memory import (
    Import,
    kilobytes,
    parseImportTime,
    percentChange,
)
from taskservice.bench._procfs import parentPid

STATUS = """\
Name:\tpython
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
PPid:\t4200
VmPeak:\t   30000 kB
VmRSS:\t   20812 kB
RssAnon:\t    9000 kB
Threads:\t2
"""

SMAPS_ROLLUP = """\
55b6bb5d5000-7ffdfd87e000 ---p 00000000 00:00 0                          [rollup]
Rss:                1724 kB
Private_Clean:        44 kB
Private_Dirty:       116 kB
"""

IMPORT_TIME = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 |   _io
import time:       416 |        536 | io
import time:      3119 |      13496 |     inspect
import time:      1676 |      20809 |   taskservice._task
import time:       233 |      21204 | taskservice
Traceback (most recent call last):
something else entirely
"""


def test_kilobytesOfStatus() -> None:
    """
    The kB lines of /proc/PID/status become bytes by name; lines without a
    kB size (names, states, counts) are skipped.
    """
    sizes = kilobytes(STATUS)
    assert sizes["VmRSS"] == 20812 * 1024
    assert sizes["RssAnon"] == 9000 * 1024
    assert "Threads" not in sizes
    assert "Pid" not in sizes


def test_kilobytesOfSmapsRollup() -> None:
    """
    smaps_rollup has the same form after its address line.
    """
    sizes = kilobytes(SMAPS_ROLLUP)
    assert sizes == {
        "Rss": 1724 * 1024,
        "Private_Clean": 44 * 1024,
        "Private_Dirty": 116 * 1024,
    }


def test_parentPid() -> None:
    """
    The parent pid is the second field after the command name, which may
    hold spaces and parentheses.
    """
    assert parentPid("4242 (python) S 4200 4242 4242 0 -1 4194560") == 4200
    assert parentPid("77 (odd) name) (x) R 1 77 77 0 -1") == 1


def test_parseImportTime() -> None:
    """
    Each "import time:" line becomes an Import with its depth (two spaces a
    level); the header and other output are skipped.
    """
    assert parseImportTime(IMPORT_TIME) == [
        Import("_io", 120, 120, 1),
        Import("io", 416, 536, 0),
        Import("inspect", 3119, 13496, 2),
        Import("taskservice._task", 1676, 20809, 1),
        Import("taskservice", 233, 21204, 0),
    ]


def test_percentChange() -> None:
    """
    Growth is relative to the value before.
    """
    assert percentChange(200, 210) == pytest.approx(5.0)
    assert percentChange(200, 190) == pytest.approx(-5.0)


def test_idealSeconds() -> None:
    """
    The ideal burst time counts whole rounds of at most atOnce calls.
    """
    assert idealSeconds(1000, 0.05, 10) == pytest.approx(5.0)
    assert idealSeconds(1000, 0.05, 200) == pytest.approx(0.25)
    assert idealSeconds(1000, 0.05, 1000) == pytest.approx(0.05)
    assert idealSeconds(1001, 0.05, 1000) == pytest.approx(0.1)


def test_benchTasksRegisterACoroutineSleep() -> None:
    """
    The bench-only task module serves async_sleep as a coroutine task, so
    the pool packs its calls onto workers.
    """
    registry = Registry.fromModules(["taskservice.bench._tasks"])
    spec = registry["async_sleep"]
    assert spec.isAsync
    assert inspect.iscoroutinefunction(spec.function)
    with pytest.raises(ValueError, match="seconds"):
        spec.function(-1).send(None)


def test_pipeRoundTrips() -> None:
    """
    The 2c floor measures one sample per round trip, through a real child
    that echoes what it reads, and leaves no child behind.
    """
    from taskservice.bench._pingpong import pipeRoundTrips

    samples = pipeRoundTrips(5)
    assert len(samples) == 5
    assert all(0 < s < 10 for s in samples)


def test_mergeSectionAppendsThenReplaces() -> None:
    """
    A partial run's section goes at the end of the page the first time,
    and replaces only itself after that: the rest of the page is kept.
    """
    from taskservice.bench._stats import mergeSection

    page = "# Benchmarks\n\n| full run |\n\n- a note\n"
    once = mergeSection(page, "--only jobs", "## jobs\n\nfirst\n")
    assert once.startswith(page)
    assert (
        "<!-- begin --only jobs -->\n## jobs\n\nfirst\n<!-- end --only jobs -->\n"
        in once
    )
    twice = mergeSection(once + "trailer\n", "--only jobs", "## jobs\n\nsecond\n")
    assert twice.startswith(page)
    assert "first" not in twice
    assert "second" in twice
    assert twice.endswith("<!-- end --only jobs -->\ntrailer\n")
    other = mergeSection(twice, "--only tcp", "tcp\n")
    assert "second" in other
    assert other.endswith("<!-- begin --only tcp -->\ntcp\n<!-- end --only tcp -->\n")


def test_buildJournalIsAJournalOfOurs(tmp_path: Path) -> None:
    """
    The restart scenario's journal, written directly in SQLite, opens as a
    job journal with the jobs asked for, and the queued ones can be claimed.
    """
    from twisted.internet.task import Clock

    from taskservice._sqlitejournal import SQLiteJournal
    from taskservice.bench._jobs import buildJournal, fileSizes

    path = tmp_path / "jobs.sqlite3"
    buildJournal(path, finished=30, queued=5, now=1_000.0)
    assert fileSizes(path)[0] > 0
    journal = SQLiteJournal(Clock(), str(path), threaded=False)
    journal.open()
    try:
        counts = journal.counts()
        assert (counts["succeeded"], counts["queued"]) == (30, 5)
        claimed = journal.claim(100, 1_000.0).result
        assert sorted(job.params for job in claimed.jobs) == [
            f"[{i}]" for i in range(5)
        ]
    finally:
        journal.close()


def test_fileSizesOfAMissingLog(tmp_path: Path) -> None:
    """
    The sizes of a journal file and its write-ahead log: 0 for what is not
    there.
    """
    from taskservice.bench._jobs import fileSizes

    (tmp_path / "j").write_bytes(b"x" * 10)
    assert fileSizes(tmp_path / "j") == (10, 0)
    assert fileSizes(tmp_path / "none") == (0, 0)


def test_mib() -> None:
    """
    Sizes read in MiB, or in KiB below one MiB.
    """
    from taskservice.bench._jobs import mib

    assert mib(36 * 1024) == "36 KiB"
    assert mib(21.4 * 2**20) == "21.4 MiB"


def test_reportWords() -> None:
    """
    The words the reports' cells and notes share, spelled once in
    C{_stats}: latencies in ms (with the maximum if asked), ratios with an
    optional qualifier, and a target met or missed (the memory scenario's
    verdict shouts a miss).
    """
    from taskservice.bench._stats import latency, met, ratio, verdict

    samples = [0.001, 0.002, 0.003, 0.0125]
    assert latency(samples) == "p50 3.000 ms, p99 12.500 ms"
    assert latency(samples, withMax=True) == "p50 3.000 ms, p99 12.500 ms, max 12.5 ms"
    assert ratio(3, 2) == "1.50x"
    assert ratio(1, 3, "p50") == "0.33x (p50)"
    assert (met(True), met(False)) == ("met", "missed")
    assert (verdict(True), verdict(False)) == ("met", "MISSED")


# What each split bench module defined before it was split (issue 11); the
# tests, _pgjobs and readers import these from where they always were.
KEPT_NAMES = {
    "taskservice.bench._jobs": (
        "CONNECTIONS SIZES TIMEOUT TTL Rows SizeRound Sizes askStats buildJournal"
        " fileSizes fsyncSamples jobsScenario journalSize met mib ms restart"
        " throughput whenJobs whenServing"
    ),
    "taskservice.bench._memory": (
        "CALLS GROWTH_TARGET HOST IDLE_RUNS MIB PARENT_TARGET QUICK_CALLS"
        " QUICK_START_SAMPLES SETTLE START_SAMPLES START_TARGET WARM_UP WINDOW"
        " WORKERS WORKER_TARGET Import Rows bareAutobahn barePython callMany"
        " childrenOf growth idleMemory idleRows importNote interpreterStart"
        " kilobytes memoryScenario memoryUnderLoad mib mpPool mpStart"
        " parseImportTime percentChange poolStart residentBytes startTimes"
        " twistdTaskservice uniqueBytes verdict whenWorkersReady workerImports"
    ),
    "taskservice.bench.__main__": (
        "POOL_SIZE WINDOW Rows deadlineToError executorThroughput failureScenario"
        " killToError latency main mpSequential mpThroughput payloadScenario"
        " poolThroughput ratio recyclingScenario run sequential sequentialScenario"
        " throughputScenario websocketScenario"
    ),
}


@pytest.mark.parametrize("module", sorted(KEPT_NAMES))
def test_splitBenchModulesKeepTheirNames(module: str) -> None:
    """
    The bench modules split into parts still offer every public name they
    defined, each listed in their C{__all__}, and C{__all__} names nothing
    that is missing.
    """
    import importlib

    imported = importlib.import_module(module)
    kept = KEPT_NAMES[module].split()
    assert [name for name in kept if not hasattr(imported, name)] == []
    assert set(kept) <= set(imported.__all__)
    assert [name for name in imported.__all__ if not hasattr(imported, name)] == []
