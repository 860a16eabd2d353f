"""
Cron expressions of schedules: the five-field syntax (minute, hour, day of
the month, month, day of the week), read in UTC, with the tick arithmetic
a schedule needs (the next tick after a time, the latest at or before it).

Parsing and matching are cronsim's (Debian cron's semantics, including its
day-of-month/day-of-week rule); this module only fixes the syntax to five
fields, adds the usual nicknames, and works in epoch seconds. No Twisted:
C{@task(schedule=...)} checks its expression here, in worker processes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = "minute hour day-of-month month day-of-week"
_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """
    A cron expression that is not one: the message says what is wrong.
    """


@dataclass(frozen=True, slots=True)
class Cron:
    """
    A checked cron expression (see L{parseCron}).

    @ivar expression: as given.
    @ivar fields: the five fields it stands for (a nickname expanded).
    """

    expression: str
    fields: str

    def next(self, after: float) -> float | None:
        """
        The first tick strictly after C{after} (epoch seconds), or L{None}
        if there is none in the next 50 years.
        """
        start = datetime.fromtimestamp(after, UTC)
        try:
            return next(CronSim(self.fields, start)).timestamp()
        except StopIteration:
            return None

    def latest(self, now: float) -> float | None:
        """
        The last tick at or before C{now} (epoch seconds), or L{None} if
        there is none in the last 50 years.
        """
        # From the next whole second back: the first step back lands on
        # now's second itself, so a tick exactly at now counts.
        start = datetime.fromtimestamp(int(now // 1), UTC) + _SECOND
        try:
            return next(CronSim(self.fields, start, reverse=True)).timestamp()
        except StopIteration:
            return None


def parseCron(expression: str) -> Cron:
    """
    Check C{expression}: five fields (C{"*/5 * * * *"}: minute, hour, day
    of the month, month, day of the week; names such as C{MON} or C{JAN},
    ranges, lists and steps), or one of the nicknames C{@hourly},
    C{@daily}, C{@midnight}, C{@weekly}, C{@monthly}, C{@yearly},
    C{@annually}. Raise L{CronError} saying what is wrong.
    """
    if not isinstance(expression, str):
        raise CronError(f"a cron expression is a string, not {expression!r}")
    text = expression.strip()
    fields = NICKNAMES.get(text.lower(), text)
    if text.startswith("@") and fields is text:
        raise CronError(
            f"unknown cron nickname {text!r} (known: {', '.join(NICKNAMES)})"
        )
    count = len(fields.split())
    if count != 5:
        raise CronError(
            f"cron expression {expression!r} has {count} field"
            f"{'' if count == 1 else 's'}; it needs five: {_FIELDS} (in UTC,"
            " no seconds field)"
        )
    try:
        CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        raise CronError(f"cron expression {expression!r}: {e}") from None
    return Cron(expression, fields)


def isoTick(tick: float) -> str:
    """
    A tick as the ISO 8601 UTC time its job's key holds
    (C{2026-12-03T10:05:00Z}).
    """
    return datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tickKey(name: str, tick: float) -> str:
    """
    The key of the job that schedule C{name}'s tick at C{tick} records.
    """
    return f"{TICK_KEY_PREFIX}{name}:{isoTick(tick)}"


TICK_KEY_PREFIX = "cron:"
"""Keys of tick jobs start with it; a C{$/submit} may not use it."""
