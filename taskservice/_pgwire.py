"""
The PostgreSQL journal's connections: the writer's (which reconnects, and
sends the notifications its transaction queued with its commit), the
listening one (read by the reactor, without a thread), what a journal tells
its job service (L{JournalEvents}), and the notifications' shapes.

Channels: C{taskservice_jobs} (payload: C{"RUNAT ORIGIN"}, jobs due at
RUNAT, from server ORIGIN), and one per server, C{taskservice_s_ID}
(payload: JSON, C{{"end": job}} with the last progress as C{"update"},
C{{"progress": job, "update": {...}}} or C{{"cancel": job}}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice._journal import JournalError, columnText

JOBS_CHANNEL = "taskservice_jobs"
"""Notified (payload: the earliest run time and the origin) when jobs are due."""
NOTIFY_LIMIT = 7000
"""Bytes of a notification's payload we send (PostgreSQL's limit: 8000)."""


def serverChannel(serverId: str) -> str:
    """
    The channel of the server C{serverId}.
    """
    return f"taskservice_s_{serverId}"


class JournalEvents(Protocol):
    """
    What a shared journal tells the job service of its server, in the
    reactor thread.
    """

    def due(self, runAt: float) -> None:
        """
        Jobs may be due at C{runAt}: claim.
        """

    def progressed(self, jobId: str, update: Mapping[str, Any]) -> None:
        """
        A job this server watches, running elsewhere, reported progress.
        """

    def ended(self, jobId: str) -> None:
        """
        A job this server watches ended (read it to see how).
        """

    def cancelRequested(self, jobId: str) -> None:
        """
        Another server asked this one to stop a job it runs.
        """

    def resync(self) -> None:
        """
        Notifications may have been missed (the listener reconnected).
        """

    def busy(self) -> bool:
        """
        Whether this server could not claim a job due now (all its job
        slots taken), so the others should be woken for it. Called from the
        journal's writer thread.
        """


def isPostgreSQL(spec: str) -> bool:
    """
    Whether a C{--jobs-db} names a PostgreSQL database (a URL), not a file.
    """
    return spec.startswith(("postgresql://", "postgres://"))


def describe(dsn: str) -> str:
    """
    C{dsn} without its password, to name the database in messages.
    """
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:
        return "the PostgreSQL job journal"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    dbname = info.get("dbname") or info.get("user") or ""
    return f"postgresql://{host}:{port}/{dbname}"


def importPsycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise JournalError(
            "--jobs-db postgresql://... needs psycopg 3: pip install"
            " 'taskservice[postgresql]'"
        ) from e
    return psycopg


class Connection:
    """
    The writer's connection: reconnects when the last one broke (the next
    operation after a lost connection works again), and sends the
    notifications its operations queued in one statement just before the
    commit (so they go out with it, or not at all).
    """

    def __init__(self, connect: Callable[[], Any], serverId: str) -> None:
        self._connect = connect
        self._serverId = serverId
        self.raw: Any = connect()
        self._notes: list[tuple[str, str]] = []
        self._wakeAt: float | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        if self.raw.closed or self.raw.broken:
            self.raw = self._connect()
        return self.raw.execute(query, params)

    def notify(self, channel: str, payload: str) -> None:
        self._notes.append((channel, payload))

    def wake(self, runAt: float) -> None:
        """
        Tell every server jobs are due at C{runAt}, once this commits (the
        operation decides whether the others are needed).
        """
        if self._wakeAt is None or runAt < self._wakeAt:
            self._wakeAt = runAt

    def commit(self) -> None:
        notes, self._notes = self._notes, []
        if self._wakeAt is not None:
            notes.append((JOBS_CHANNEL, f"{self._wakeAt!r} {self._serverId}"))
            self._wakeAt = None
        if notes:
            # The notifications and the commit in one round trip.
            from psycopg import sql

            self.raw.execute(
                sql.SQL(
                    "SELECT pg_notify(c, p) FROM unnest({}::text[], {}::text[])"
                    " AS n(c, p); COMMIT"
                ).format(
                    sql.Literal([c for c, _ in notes]),
                    sql.Literal([p for _, p in notes]),
                )
            )
        self.raw.commit()

    def rollback(self) -> None:
        self._notes = []
        self._wakeAt = None
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


@implementer(IReadDescriptor)
class Listener:
    """
    The listening connection, read by the reactor: each notification is
    handed to its journal's C{_notified}.
    """

    def __init__(self, journal: Any, connection: Any) -> None:
        self.journal = journal
        self.connection = connection
        # A descriptor of our own on the same socket: libpq closes its own
        # when the connection fails, and the reactor must still be able to
        # stop watching ours.
        self._fd: int | None = os.dup(connection.pgconn.socket)

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def close(self) -> None:
        """
        Close the connection and our descriptor (once the reactor stopped
        reading it).
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.connection.close()

    def doRead(self) -> Any:
        pgconn = self.connection.pgconn
        try:
            pgconn.consume_input()
        except Exception as e:
            return e
        while (note := pgconn.notifies()) is not None:
            self.journal._notified(note.relname.decode(), note.extra.decode())
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.journal._listenerLost(self, reason)

    def logPrefix(self) -> str:
        return "taskservice-journal-listener"


def oneLine(error: BaseException) -> str:
    return " ".join(str(error).split())


def notifyEnd(
    db: Connection,
    jobId: str,
    watchers: list[str] | None,
    progress: Mapping[str, Any] | None = None,
    exclude: str | None = None,
) -> None:
    """
    Tell the job's watchers it ended (not C{exclude}: the server that ended
    it tells its own callers itself).
    """
    watchers = [w for w in watchers or () if w != exclude]
    if watchers:
        note = columnText({"end": jobId})
        if progress is not None:
            withProgress = columnText({"end": jobId, "update": progress})
            if len(withProgress) <= NOTIFY_LIMIT:
                note = withProgress
        for watcher in watchers:
            db.notify(serverChannel(watcher), note)
