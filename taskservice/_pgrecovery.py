"""
The PostgreSQL journal's heartbeats and recovery (part of
L{taskservice._pgjournal.PostgreSQLJournal}): each server's row in
C{taskservice_servers} beaten every C{serverTimeout / 5} seconds on the
database's clock, the counts and size read with it, and the sweep that
recovers the running jobs of servers gone away, with the restart rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice._journal import (
    CANCELLED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    STATES,
    Batch,
    JobRecord,
    Recovered,
    columnText,
    recordFromRow,
)
from taskservice._pgschema import JCOLUMNS
from taskservice._pgwire import (
    Connection,
    JournalEvents,
    notifyEnd,
)

T = TypeVar("T")


class Heartbeats:
    """
    How a L{PostgreSQLJournal} heartbeats and sweeps.
    """

    reactor: Any
    name: str
    serverId: str
    serverName: str
    serverTimeout: float
    channel: str
    log: Logger
    _events: JournalEvents | None
    _heartbeat: IDelayedCall | None
    _aliveSince: float | None
    _rerun: Callable[[JobRecord], bool] | None
    _ttl: float
    _closing: bool
    _counts: Counter[str]
    _size: int
    swept: list[Recovered]

    def enqueue(self, operation: Callable[[Any, Batch], T]) -> Deferred[T]:
        raise NotImplementedError

    # -- heartbeats and recovery ------------------------------------------

    def recover(
        self, now: float, expiresAt: float, rerun: Callable[[JobRecord], bool]
    ) -> Deferred[Recovered]:
        """
        Start heartbeating. Jobs left running by servers that went away
        (this server's earlier process among them) are recovered by the
        heartbeats' sweeps, once this server has itself heartbeaten for
        C{serverTimeout} (so that after an outage of the database, servers
        coming back do not take each other's jobs); nothing is recovered
        here and now.
        """
        self._rerun = rerun
        self._ttl = max(0.0, expiresAt - now)
        self._aliveSince = now
        self._scheduleHeartbeat()
        d: Deferred[Recovered] = Deferred()
        d.callback(Recovered([], []))
        return d

    def _scheduleHeartbeat(self) -> None:
        if not self._closing:
            self._heartbeat = self.reactor.callLater(self.serverTimeout / 5, self.beat)

    def beat(self) -> Deferred[Recovered | None]:
        """
        Heartbeat now (and sweep, if this server has been alive long
        enough); fire with what the sweep recovered.
        """
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        now = self.reactor.seconds()
        sweep = (
            self._aliveSince is not None
            and now - self._aliveSince >= self.serverTimeout
        )
        rerun = self._rerun or (lambda job: False)
        d: Deferred[Any] = self.enqueue(
            lambda db, batch: self._beat(db, batch, now, sweep, rerun)
        )
        d.addCallbacks(self._beaten, self._notBeaten, callbackArgs=(now,))
        return d

    def _beaten(
        self, outcome: tuple[Recovered | None, bool, dict[str, int], int], now: float
    ) -> Recovered | None:
        recovered, lost, counts, size = outcome
        if lost:
            self.log.error(
                "this server's heartbeat was missing from the job journal: the"
                " other servers took it for gone and recovered its running jobs"
            )
        if self._aliveSince is None:
            self._aliveSince = now
        self._counts = Counter(dict.fromkeys(STATES, 0))
        self._counts.update(counts)
        self._size = size
        if recovered is not None and (recovered.requeued or recovered.interrupted):
            self.swept.append(recovered)
            self.log.info(
                "jobs left running by task servers that went away: {requeued}"
                " queued to run again, {interrupted} ended",
                requeued=len(recovered.requeued),
                interrupted=len(recovered.interrupted),
            )
        self._scheduleHeartbeat()
        if self._events is not None:
            # The safety net: claim whatever a lost notification left due.
            self._events.due(now)
        return recovered

    def _notBeaten(self, failure: Failure) -> None:
        self._aliveSince = None
        self.log.warn(
            "heartbeat to the job journal failed: {reason}",
            reason=failure.getErrorMessage(),
        )
        self._scheduleHeartbeat()

    def _beat(
        self,
        db: Connection,
        batch: Batch,
        now: float,
        sweep: bool,
        rerun: Callable[[JobRecord], bool],
    ) -> tuple[Recovered | None, bool, dict[str, int], int]:
        lost = not db.execute(
            "UPDATE taskservice_servers SET heartbeat_at = now() WHERE id = %s",
            (self.serverId,),
        ).rowcount
        if lost:
            db.execute(
                "INSERT INTO taskservice_servers (id, name, started_at, heartbeat_at)"
                " VALUES (%s, %s, %s, now())",
                (self.serverId, self.serverName, now),
            )
        recovered = self._sweep(db, batch, now, rerun) if sweep else None
        counts = dict(
            db.execute(
                "SELECT state, count(*) FROM taskservice_jobs GROUP BY state"
            ).fetchall()
        )
        size = db.execute(
            "SELECT pg_total_relation_size('taskservice_jobs')"
        ).fetchone()[0]
        return recovered, lost, counts, int(size)

    def _sweep(
        self,
        db: Connection,
        batch: Batch,
        now: float,
        rerun: Callable[[JobRecord], bool],
    ) -> Recovered:
        timeout = self.serverTimeout
        rows = db.execute(
            f"SELECT {JCOLUMNS}, j.cancel_requested, j.watchers"
            " FROM taskservice_jobs j WHERE j.state = 'running' AND NOT EXISTS"
            " (SELECT 1 FROM taskservice_servers s WHERE s.id = j.server"
            "  AND s.heartbeat_at >= now() - make_interval(secs => %s))"
            " FOR UPDATE OF j SKIP LOCKED",
            (timeout,),
        ).fetchall()
        requeued: list[str] = []
        ended: list[str] = []
        expiresAt = now + self._ttl
        for row in rows:
            job = recordFromRow(row[:16])
            cancelRequested, watchers = row[16], row[17]
            if cancelRequested:
                error = {"code": -32800, "message": "cancelled"}
                state = CANCELLED
            elif rerun(job):
                db.execute(
                    "UPDATE taskservice_jobs SET state = 'queued', run_at = %s,"
                    " server = NULL, origin = %s WHERE id = %s",
                    (now, self.serverId, job.id),
                )
                db.wake(now)
                requeued.append(job.id)
                batch.moved(RUNNING, QUEUED)
                continue
            else:
                state = INTERRUPTED
                error = {
                    "code": -32008,
                    "message": "interrupted",
                    "data": {
                        "job": job.id,
                        "attempts": job.attempts,
                        "reason": "its task server went away while it ran, and"
                        " its task is not safe to run again"
                        if job.attempts <= job.maxAttempts
                        else "its task server went away while it ran, and it"
                        " has run as many times as it may",
                    },
                }
            db.execute(
                "UPDATE taskservice_jobs SET state = %s, finished_at = %s,"
                " expires_at = %s, error = %s, server = NULL WHERE id = %s",
                (state, now, expiresAt, columnText(error), job.id),
            )
            notifyEnd(db, job.id, watchers)
            ended.append(job.id)
            batch.moved(RUNNING, state)
        db.execute(
            "DELETE FROM taskservice_servers WHERE id <> %s AND heartbeat_at <"
            " now() - make_interval(secs => %s)",
            (self.serverId, timeout),
        )
        return Recovered(requeued, ended)
