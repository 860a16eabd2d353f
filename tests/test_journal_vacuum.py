"""
The SQLite journal gives the pages of purged jobs back to the file system:
its purge runs the incremental vacuum to the end (sqlite3 steps the pragma
once per execute, and each step frees one page). A real file; the writer
runs inline (no thread), so no reactor is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock

from taskservice._journal import SUCCEEDED, NewJob
from taskservice._sqlitejournal import SQLiteJournal


def test_purgeShrinksTheFile(tmp_path: Path) -> None:
    """
    After every finished job is purged and the journal closed (which
    checkpoints its log into the file), the file is back near the size of
    an empty journal, not the size it had while it held the jobs.
    """
    path = tmp_path / "jobs.sqlite3"
    journal = SQLiteJournal(Clock(), str(path), threaded=False)
    journal.open()
    for i in range(400):
        journal.submit(
            NewJob(f"job-{i}", "echo", f'["{"x" * 1_000}"]', None, 1, 1.0, None, 0, 0)
        )
    claimed = journal.claim(10_000, 1).result
    assert len(claimed.jobs) == 400
    for job in claimed.jobs:
        journal.finish(job.id, SUCCEEDED, 1, 2, result='"' + "y" * 1_000 + '"')
    journal.close()
    held = os.stat(path).st_size
    assert held > 500_000

    journal = SQLiteJournal(Clock(), str(path), threaded=False)
    journal.open()
    assert journal.purge(3).result == 400
    journal.close()
    assert os.stat(path).st_size < held / 10
