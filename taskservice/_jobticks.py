"""
The job service's schedules: each tick of a cron schedule recorded once, as
a job, across every server sharing the journal.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.python.failure import Failure

from taskservice._cron import isoTick, tickKey
from taskservice._defaults import DEFAULT_MAX_RUNNING, DEFAULT_TTL
from taskservice._jobengine import _REWRITE_DELAY, JobEngine
from taskservice._journal import IJournal, JobRecord, NewJob
from taskservice._schedules import Schedule, Ticker, schedulesOf
from taskservice.pool import ProcessPool


class TickingJobs(JobEngine):
    """
    L{JobEngine} with schedules: cron expressions by task name, adding to
    or replacing the tasks' own C{@task(schedule=...)} (see L{schedulesOf},
    which raises L{ValueError} for a wrong one).
    """

    def __init__(
        self,
        reactor: Any,
        pool: ProcessPool,
        journal: IJournal,
        *,
        schedules: Mapping[str, str] | None = None,
        ttl: float = DEFAULT_TTL,
        maxRunning: int = DEFAULT_MAX_RUNNING,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            reactor, pool, journal, ttl=ttl, maxRunning=maxRunning, jitter=jitter
        )
        self.schedules: list[Schedule] = schedulesOf(pool.registry, schedules)
        self._tickers = [
            Ticker(reactor, schedule, functools.partial(self._tick, schedule))
            for schedule in self.schedules
        ]
        self.ticks = 0
        """Ticks this server recorded (each a job) since it started."""

    def _tick(self, schedule: Schedule, tick: float) -> None:
        """
        Record C{schedule}'s tick at C{tick} and its job, unless this tick
        (or a later one) is recorded already, here or by another server.
        """
        if self._stopping:
            return
        spec = self.pool.registry[schedule.name]
        now = self.reactor.seconds()
        job = NewJob(
            id=self._newId(),
            method=schedule.name,
            params="null",
            key=tickKey(schedule.name, tick),
            maxAttempts=spec.retries + 1,
            backoff=spec.backoff,
            timeout=spec.timeout,
            runAt=min(tick, now),
            createdAt=now,
        )

        def recorded(record: JobRecord | None) -> None:
            self._journalRecovered()
            if record is None:
                self.log.debug(
                    "schedule {name}: tick {tick} already recorded",
                    name=schedule.name,
                    tick=isoTick(tick),
                )
                return
            self.ticks += 1
            self.submitted += 1
            self.log.info(
                "schedule {name}: tick {tick} is job {job}",
                name=schedule.name,
                tick=isoTick(tick),
                job=record.id,
            )
            if not record.final:
                self._due(record.runAt)

        def failed(failure: Failure) -> None:
            self._journalFailed(failure)
            # Try this tick again a little later, until the next is due.
            nextTick = schedule.cron.next(tick)
            later = self.reactor.seconds() + _REWRITE_DELAY
            if not self._stopping and (nextTick is None or later < nextTick):
                self.reactor.callLater(_REWRITE_DELAY, self._tick, schedule, tick)

        self.journal.recordTick(schedule.name, tick, job).addCallbacks(recorded, failed)

    def scheduleStats(self) -> dict[str, Any]:
        """
        Each schedule's expression and next tick (ISO 8601 UTC), by task.
        """
        return {
            ticker.schedule.name: {
                "cron": ticker.schedule.cron.expression,
                "next": None if ticker.nextTick is None else isoTick(ticker.nextTick),
            }
            for ticker in self._tickers
        }
