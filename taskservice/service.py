"""
The task server as one service: listener, connections and pool, stopped in
the right order so that no reply is lost; and the websocket gateway as one
service, in front of it (L{GatewayService}).

L{MultiService} stops its children concurrently; a clean stop needs an order:
stop accepting connections, let the pool drain (running and queued calls
finish and their replies are written), then close each connection gracefully
(its pending output is flushed) before the reactor goes down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from taskservice.jobs import JobService
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory

_CLOSE_GRACE = 5.0


class TaskServerService(MultiService):
    """
    Serve C{factory}'s task protocol on C{endpoint} with C{pool}.

    @param reactor: for the close timeout.
    @param endpoint: a server endpoint string, e.g.
        C{"tcp:12345:interface=127.0.0.1"}, or a server endpoint (the
        mutual-TLS listener of C{--tls-cert}, which no string describes).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: str | IStreamServerEndpoint,
        pool: ProcessPool,
        factory: TaskServerFactory,
        jobs: JobService | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = pool
        self.factory = factory
        self.jobs = jobs
        self.listener: Service
        if isinstance(endpoint, str):
            self.listener = strports.service(endpoint, factory, reactor=reactor)
        else:
            listener = StreamServerEndpointService(endpoint, factory)
            # As strports.service does: a bind error fails startService (and
            # twistd) instead of being logged while the rest runs.
            listener._raiseSynchronously = True
            self.listener = listener
        pool.setServiceParent(self)
        if jobs is not None:
            jobs.setServiceParent(self)
        self.listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d: Deferred[Any] = Deferred()
        d.callback(None)
        d.addCallback(lambda _: self.listener.stopService())
        jobs = self.jobs
        if jobs is not None:
            # No job starts now; those running drain with the pool's calls.
            d.addCallback(lambda _: jobs.stopService())
        d.addCallback(lambda _: self.pool.stopService())
        if jobs is not None:
            d.addCallback(lambda _: jobs.closeJournal())
        d.addCallback(lambda _: self._closeConnections())
        return d

    def _closeConnections(self) -> Deferred[Any]:
        protocols = list(self.factory.protocols)
        if not protocols:
            return DeferredList([])
        self.log.info("closing {count} client connections", count=len(protocols))
        closed = DeferredList([p.whenClosed() for p in protocols])
        for protocol in protocols:
            protocol.close()
        timer = self.reactor.callLater(_CLOSE_GRACE, self._abortAll, protocols)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()

        return closed.addBoth(done)

    def _abortAll(self, protocols: list[Any]) -> None:
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()


class GatewayService(MultiService):
    """
    The websocket gateway as one service: its listener, its upstream
    L{TaskClient} and, optionally, the local task server it fronts
    (a L{TaskServerService}), stopped in order so that calls in flight are
    answered: stop accepting browsers, let the task server drain (its
    replies still reach the browsers), stop the client, then close every
    browser's websocket (1001, going away).

    @param endpoint: a server endpoint string for the gateway's site.
    @param site: the gateway's L{Site} (see L{taskservice.gateway.GatewaySite}).
    @param factory: the site's L{taskservice.gateway.GatewayFactory}.
    @param client: the factory's upstream client service.
    @param taskServer: the local task server, or L{None} for a remote one.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: str,
        site: Any,
        factory: Any,
        client: Service,
        taskServer: Service | None = None,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.client = client
        self.taskServer = taskServer
        if taskServer is not None:
            taskServer.setServiceParent(self)
        client.setServiceParent(self)
        self.listener: Service = strports.service(endpoint, site, reactor=reactor)
        self.listener.setServiceParent(self)

    log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("websocket listener", self.listener.stopService)
        ]
        if self.taskServer is not None:
            steps.append(("task server", self.taskServer.stopService))
        steps += [
            ("gateway client", self.client.stopService),
            ("websockets", self.factory.closeAll),
        ]
        d: Deferred[Any] = Deferred()
        d.callback(None)
        for name, step in steps:
            # Each step runs even if the one before it failed.
            d.addCallback(_run, step)
            d.addErrback(self._stepFailed, name)
        return d

    def _stepFailed(self, failure: Any, name: str) -> None:
        self.log.failure("stopping the {name} failed", failure, name=name)


def _run(ignored: object, step: Callable[[], object]) -> object:
    return step()
