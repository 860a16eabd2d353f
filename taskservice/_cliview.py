"""
How the C{taskservice} command shows things in a terminal (rich): the
progress bar of a call or a job, tables of jobs, and the stats view.
Nothing here talks to a server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


class ProgressBar:
    """
    A live bar fed with C{$/progress} updates (C{done}, C{total}, and any
    other members, shown after them). A context manager: the bar is drawn
    while inside it.
    """

    def __init__(self, console: Console, description: str) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[extra]}"),
            console=console,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(description, total=None, extra="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, update: Mapping[str, Any]) -> None:
        """Show one C{$/progress} update."""
        done = update.get("done")
        total = update.get("total")
        extra = " ".join(
            f"{k}={v}" for k, v in update.items() if k not in ("done", "total", "job")
        )
        self._progress.update(
            self._task,
            completed=done if isinstance(done, int | float) else 0,
            total=total if isinstance(total, int | float) else None,
            extra=extra,
        )


def _when(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return time.strftime("%m-%d %H:%M", time.localtime(epoch))


def jobTable(jobs: list[dict[str, Any]]) -> Table:
    """The C{$/jobs} entries as a table, newest first."""
    table = Table(title=f"{len(jobs)} jobs", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("job", no_wrap=True, min_width=16)
    for column in ("method", "state", "runs", "created", "finished"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        table.add_row(
            str(job.get("job")),
            str(job.get("method")),
            str(job.get("state")),
            f"{job.get('attempts')}/{job.get('maxAttempts')}",
            _when(job.get("createdAt")),
            _when(job.get("finishedAt")),
        )
    return table


def jobDetails(job: Mapping[str, Any]) -> Table:
    """One C{$/job} answer, a field per row (times in local time)."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in job.items():
        shown = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            if name.endswith("At") and isinstance(value, int | float)
            else value
        )
        table.add_row(name, "" if shown is None else str(shown))
    return table


JOB_STATES = (
    "queued",
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
)
"""A job's states (docs/jobs), in the order they are shown."""


class StatsView:
    """
    The stats view: each C{$/stats} snapshot rendered with throughput
    worked out from the one before (calls completed or failed per second).
    """

    def __init__(self, server: str) -> None:
        self._server = server
        self._last: tuple[float, int] | None = None

    def render(self, stats: Mapping[str, Any], now: float) -> Group:
        """A renderable of C{stats}, taken at C{now} (C{time.monotonic()})."""
        ended = int(stats.get("completed", 0)) + int(stats.get("failed", 0))
        throughput = "…"
        if self._last is not None and now > self._last[0]:
            rate = (ended - self._last[1]) / (now - self._last[0])
            throughput = f"{rate:,.1f} calls/s"
        self._last = (now, ended)

        workers = stats.get("workers", {})
        workerTable = Table(title="workers", title_justify="left")
        for column in ("size", "idle", "busy", "starting", "retiring"):
            workerTable.add_column(column, justify="right")
        workerTable.add_row(
            *(
                str(workers.get(c, ""))
                for c in ("size", "idle", "busy", "starting", "retiring")
            )
        )

        calls = Table(title="calls", title_justify="left")
        for column in (
            "running",
            "queued",
            "completed",
            "failed",
            "throughput",
            "restarts",
            "connections",
        ):
            calls.add_column(column, justify="right")
        calls.add_row(
            str(stats.get("running", "")),
            f"{stats.get('queued', '')}/{stats.get('maxQueue', '')}",
            f"{stats.get('completed', 0):,}",
            f"{stats.get('failed', 0):,}",
            throughput,
            str(stats.get("restarts", "")),
            str(stats.get("connections", "")),
        )
        parts: list[Any] = [
            f"[bold]{self._server}[/bold]  up {stats.get('uptime', 0):,.0f} s",
            workerTable,
            calls,
        ]
        jobs = stats.get("jobs")
        if isinstance(jobs, dict):
            counts = [f"{s} {jobs[s]:,}" for s in JOB_STATES if s in jobs]
            parts.append(
                f"[bold]jobs[/bold]  {' · '.join(counts)}"
                f"  (submitted {jobs.get('submitted', 0):,};"
                f" journal {jobs.get('journal', '?')})"
            )
        return Group(*parts)
