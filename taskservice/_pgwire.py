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

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice._journal import JournalError, columnText

JOBS_CHANNEL = "taskservice_jobs"
"""Notified (payload: the earliest run time and the origin) when jobs are due."""
NOTIFY_LIMIT = 7000
"""Bytes of a notification's payload we send (PostgreSQL's limit: 8000)."""
_IDLE = 0
"""psycopg.pq.TransactionStatus.IDLE (psycopg is imported only when used)."""

T = TypeVar("T")


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


class Later(Generic[T]):
    """
    The result of statements sent in the writer's pipeline, known once the
    transaction committed (L{Connection.commit}), or at once outside a
    pipeline's happy path (L{Connection.settle}): C{compute()} reads the
    statements' cursors then. If it raises, the error is this result's
    alone (the transaction stands).
    """

    __slots__ = ("_compute", "error", "value")

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self.value: T | None = None
        self.error: Exception | None = None

    def resolve(self) -> None:
        try:
            self.value = self._compute()
        except Exception as e:
            self.error = e

    def get(self) -> T:
        """
        The value, or raise its error.
        """
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


def settled(value: Any) -> Any:
    """
    C{value}, or the value of the L{Later} it is (after the commit).
    """
    return value.get() if isinstance(value, Later) else value


class Connection:
    """
    The writer's connection, in pipeline mode: the statements of a
    transaction are queued, C{BEGIN} with the first and the notifications
    with C{COMMIT}, and go to the server together when a result is needed.

     - L{execute}: a statement whose result is needed now (one round trip,
       carrying whatever was queued before it);
     - L{send} and L{later}: a statement whose result is needed only after
       the commit (no round trip of its own): the happy path of a group of
       submits, ends and a claim is one round trip, its commit's;
     - L{commit}: the notifications the transaction queued, C{COMMIT}, one
       round trip; then each L{Later} is computed.

    It reconnects when the last connection broke (the next operation after
    a lost connection works again).
    """

    def __init__(self, connect: Callable[[], Any], serverId: str) -> None:
        self._connect = connect
        self._serverId = serverId
        self.raw: Any = connect()
        self._pipeline: Any = None
        self._pipelineContext: Any = None
        self._open = False
        self._notes: list[tuple[str, str]] = []
        self._wakeAt: float | None = None
        self._later: list[Later[Any]] = []
        self.roundTrips = 0
        """Round trips to the server so far (each a pipeline sync)."""

    def _begin(self) -> None:
        if self._pipeline is None:
            if self.raw.closed or self.raw.broken:
                self._dropPipeline()
                self.raw.close()
                self.raw = self._connect()
            # Transactions are begun here, in the pipeline (psycopg's own
            # BEGIN would cost a round trip of its own).
            self.raw.autocommit = True
            # Entered for the connection's life (left by closing it; the
            # context is kept: collecting it would leave the pipeline).
            self._pipelineContext = self.raw.pipeline()
            self._pipeline = self._pipelineContext.__enter__()
        if not self._open:
            self._open = True
            self.raw.execute("BEGIN")

    def send(self, query: Any, params: Any = None) -> Any:
        """
        Queue a statement; its cursor has its result after the next round
        trip (L{execute}, L{settle}, L{commit}).
        """
        self._begin()
        try:
            return self.raw.execute(query, params)
        except BaseException:
            self._lost()
            raise

    def execute(self, query: Any, params: Any = None) -> Any:
        """
        Run a statement now (with whatever was queued before it): its
        cursor, with its result.
        """
        cursor = self.send(query, params)
        self._sync()
        return cursor

    def later(self, compute: Callable[[], T]) -> Later[T]:
        """
        C{compute()} after the commit (see L{Later}).
        """
        result = Later(compute)
        self._later.append(result)
        return result

    def settle(self) -> None:
        """
        Run what is queued now, and compute the L{Later}s: an error of a
        statement is raised here (the one-by-one path of L{Merger}).
        """
        if self._pipeline is not None:
            self._sync()
        self._resolve()

    def _sync(self) -> None:
        self.roundTrips += 1
        try:
            self._pipeline.sync()
        except BaseException:
            self._lost()
            raise

    def _lost(self) -> None:
        if self.raw.closed or self.raw.broken:
            # Made again by the next statement.
            self._pipeline = None
            self._open = False

    def _resolve(self) -> None:
        later, self._later = self._later, []
        for result in later:
            result.resolve()

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
        if not self._open:
            self._resolve()
            return
        if notes:
            self.send(
                "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)",
                ([c for c, _ in notes], [p for _, p in notes]),
            )
        self.send("COMMIT")
        self._sync()
        self._open = False
        self._resolve()

    def rollback(self) -> None:
        self._notes = []
        self._wakeAt = None
        self._later = []
        if not self._open:
            return
        self._open = False
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            with contextlib.suppress(Exception):
                # Out of the pipeline's aborted state, if a statement failed.
                pipeline.sync()
            if self.raw.info.transaction_status != _IDLE:
                self.raw.execute("ROLLBACK")
                pipeline.sync()
        except BaseException:
            self._lost()
            raise

    def _dropPipeline(self) -> None:
        context, self._pipelineContext = self._pipelineContext, None
        self._pipeline = None
        if context is not None:
            with contextlib.suppress(Exception):
                context.__exit__(None, None, None)

    def close(self) -> None:
        if not (self.raw.closed or self.raw.broken):
            with contextlib.suppress(Exception):
                self.rollback()
        self._dropPipeline()
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
