"""
The PostgreSQL journal's listening connection (part of
L{taskservice._pgjournal.PostgreSQLJournal}): C{LISTEN} on the jobs'
channel and the server's own, read by the reactor without a thread, made
again off the reactor's thread when lost; each notification handed to the
job service's L{JournalEvents}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json
from taskservice._journal import (
    JournalError,
)
from taskservice._pgwire import (
    JOBS_CHANNEL,
    JournalEvents,
    Listener,
    importPsycopg,
    oneLine,
)


class Listening:
    """
    How a L{PostgreSQLJournal} listens: the listener's lifecycle and what
    each notification means.
    """

    reactor: Any
    name: str
    serverId: str
    serverName: str
    serverTimeout: float
    channel: str
    log: Logger
    _events: JournalEvents | None
    _listener: Listener | None
    _reconnect: IDelayedCall | None
    _closing: bool
    _helping: bool
    _claiming: int
    _wokenWhileClaiming: bool

    def _rawConnect(self, **options: Any) -> Any:
        raise NotImplementedError

    def listen(self, events: JournalEvents) -> None:
        """
        Start listening: C{events} hears of due jobs, of the jobs this
        server watches, and of cancels asked of it.
        """
        self._events = events
        self._startListening()

    def _startListening(self) -> None:
        self._listenOn(self._listeningConnection())

    def _listeningConnection(self) -> Any:
        psycopg = importPsycopg()
        connection = self._rawConnect(autocommit=True)
        try:
            connection.execute(f"LISTEN {JOBS_CHANNEL}")
            connection.execute(f'LISTEN "{self.channel}"')
        except psycopg.Error as e:
            connection.close()
            raise JournalError(
                f"cannot listen to the job journal {self.name}: {oneLine(e)}"
            ) from e
        connection.pgconn.nonblocking = 1
        return connection

    def _listenOn(self, connection: Any) -> None:
        self._listener = Listener(self, connection)
        self.reactor.addReader(self._listener)

    def _listenerLost(self, listener: Listener, reason: Failure) -> None:
        if listener is not self._listener:
            return
        self.reactor.removeReader(listener)
        self._listener = None
        listener.close()
        if self._closing:
            return
        self.log.warn(
            "lost the job journal's listening connection ({reason}); reconnecting",
            reason=reason.getErrorMessage(),
        )
        self._reconnect = self.reactor.callLater(1.0, self._relisten)

    def _relisten(self) -> None:
        # Connecting blocks: not in the reactor's thread.
        self._reconnect = None
        d = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._listeningConnection
        )
        d.addCallbacks(self._relistened, self._notRelistened)

    def _relistened(self, connection: Any) -> None:
        if self._closing:
            connection.close()
            return
        self._listenOn(connection)
        self.log.info("listening to the job journal again")
        if self._events is not None:
            self._events.resync()

    def _notRelistened(self, failure: Failure) -> None:
        if self._closing:
            return
        self.log.warn("{error}; trying again", error=failure.getErrorMessage())
        self._reconnect = self.reactor.callLater(1.0, self._relisten)

    def _notified(self, channel: str, payload: str) -> None:
        events = self._events
        if channel == JOBS_CHANNEL:
            when, _, origin = payload.partition(" ")
            try:
                runAt = float(when)
            except ValueError:
                runAt = self.reactor.seconds()
            if runAt <= self.reactor.seconds():
                if origin != self.serverId:
                    # Another server asks for help with jobs due now.
                    self._helping = True
                if self._claiming:
                    # The claim under way may have missed them.
                    self._wokenWhileClaiming = True
            if events is not None:
                events.due(runAt)
            return
        if events is None:
            return
        try:
            note = _json.loads(payload.encode())
        except ValueError:
            return
        if not isinstance(note, dict):
            return
        if "end" in note:
            update = note.get("update")
            if isinstance(update, dict):
                # The last progress, saved with the end.
                events.progressed(str(note["end"]), update)
            events.ended(str(note["end"]))
        elif "progress" in note:
            update = note.get("update")
            if isinstance(update, dict):
                events.progressed(str(note["progress"]), update)
            else:
                events.ended(str(note["progress"]))
        elif "cancel" in note:
            events.cancelRequested(str(note["cancel"]))
