"""
Schedules: a task run as a durable job at each tick of a cron expression.

A L{Ticker} per schedule arms one reactor timer for its next tick. At a
tick, the job service asks the journal to record it (L{IJournal.recordTick}
inserts the tick's job only if no tick at or after it is recorded), so a
tick yields one job across every server sharing the journal, and a restart
does not run a tick again. At start, only the latest tick at or before now
is tried: ticks missed while every server was down run once, not one job
each; a timer that fires late (a suspended machine, a blocked reactor)
likewise runs the latest tick it missed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from taskservice._cron import Cron, parseCron
from taskservice._task import Registry, checkCallableAlone


@dataclass(frozen=True, slots=True)
class Schedule:
    """
    Task C{name} run at each tick of C{cron}.
    """

    name: str
    cron: Cron


def schedulesOf(
    registry: Registry, overrides: Mapping[str, str] | None = None
) -> list[Schedule]:
    """
    The schedules of the tasks in C{registry}: each task's
    C{@task(schedule=...)}, then C{overrides} (task name to cron
    expression), which add schedules or replace a task's own. Raise
    L{ValueError} naming the task for an unknown task, a wrong expression,
    or a task that cannot be called without arguments.
    """
    expressions = {
        name: spec.schedule
        for name, spec in registry.items()
        if spec.schedule is not None
    }
    for name, expression in (overrides or {}).items():
        spec = registry.get(name)
        if spec is None:
            known = ", ".join(sorted(registry)) or "none"
            raise ValueError(f"no task {name!r} to schedule (tasks: {known})")
        checkCallableAlone(name, spec.function)
        expressions[name] = expression
    schedules = []
    for name, expression in sorted(expressions.items()):
        try:
            cron = parseCron(expression)
        except ValueError as e:
            raise ValueError(f"schedule of {name!r}: {e}") from None
        schedules.append(Schedule(name, cron))
    return schedules


class Ticker:
    """
    One schedule's timer: C{fire(tick)} is called for each tick due, once
    (the latest, when several were missed).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, schedule: Schedule, fire: Callable[[float], None]
    ) -> None:
        self.reactor = reactor
        self.schedule = schedule
        self._fire = fire
        self._call: IDelayedCall | None = None
        self.nextTick: float | None = None

    def start(self) -> None:
        """
        Try the latest tick at or before now (a missed one runs once; one
        already run is refused by the journal), and arm the next.
        """
        now = self.reactor.seconds()
        latest = self.schedule.cron.latest(now)
        if latest is not None:
            self._fire(latest)
        self._arm(now)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.nextTick = None

    def _arm(self, after: float) -> None:
        tick = self.schedule.cron.next(after)
        self.nextTick = tick
        if tick is None:
            return
        delay = max(0.0, tick - self.reactor.seconds())
        self._call = self.reactor.callLater(delay, self._ticked, tick)

    def _ticked(self, tick: float) -> None:
        self._call = None
        now = self.reactor.seconds()
        # Woken late, past further ticks: the latest of them, once.
        latest = self.schedule.cron.latest(max(now, tick))
        self._fire(tick if latest is None else max(tick, latest))
        self._arm(max(now, tick))
