"""
The task server as one service: listener, connections and pool, stopped in
the right order so that no reply is lost.

L{MultiService} stops its children concurrently; a clean stop needs an order:
stop accepting connections, let the pool drain (running and queued calls
finish and their replies are written), then close each connection gracefully
(its pending output is flushed) before the reactor goes down.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory

_CLOSE_GRACE = 5.0


class TaskServerService(MultiService):
    """
    Serve C{factory}'s task protocol on C{endpoint} with C{pool}.

    @param reactor: for the close timeout.
    @param endpoint: a server endpoint string, e.g.
        C{"tcp:12345:interface=127.0.0.1"}.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, endpoint: str, pool: ProcessPool, factory: TaskServerFactory
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = pool
        self.factory = factory
        self.listener: Service = strports.service(endpoint, factory, reactor=reactor)
        pool.setServiceParent(self)
        self.listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d: Deferred[Any] = Deferred()
        d.callback(None)
        d.addCallback(lambda _: self.listener.stopService())
        d.addCallback(lambda _: self.pool.stopService())
        d.addCallback(lambda _: self._closeConnections())
        return d

    def _closeConnections(self) -> Deferred[Any]:
        protocols = list(self.factory.protocols)
        if not protocols:
            return DeferredList([])
        self.log.info("closing {count} client connections", count=len(protocols))
        closed = DeferredList([p.whenClosed() for p in protocols])
        for protocol in protocols:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
        timer = self.reactor.callLater(_CLOSE_GRACE, self._abortAll, protocols)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()

        return closed.addBoth(done)

    def _abortAll(self, protocols: list[Any]) -> None:
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
