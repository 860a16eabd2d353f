"""
L{GatewayRig}: the websocket gateway in memory, for tests (shipped as
C{taskservice.testing.GatewayRig}). Browsers (autobahn's Twisted client
protocol) talk over C{iosim} to a real L{GatewaySite}, whose real
L{TaskClient} talks over C{iosim} (L{MemoryEndpoint}) to a real task server
whose pool runs L{FakeWorker}s on a L{FakeProcessReactor}: no sockets, no
processes, no real time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test import iosim
from zope.interface import implementer

from taskservice.client import TaskClient
from taskservice.gateway import GatewayFactory, GatewaySite
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.testing import FakeProcessReactor

GATEWAY = IPv4Address("TCP", "127.0.0.1", 8080)
"""The gateway's address, as browsers see it."""
TASK_SERVER = IPv4Address("TCP", "127.0.0.1", 12345)
"""The task server's address, as the gateway's client sees it."""
HOST = "127.0.0.1:8080"
ORIGIN = f"http://{HOST}"
"""The gateway's own origin (always allowed)."""

B = TypeVar("B", bound=WebSocketClientProtocol)


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    A client endpoint to C{serverFactory} over iosim, which can be made to
    refuse connections (the task server is down).
    """

    def __init__(self, rig: GatewayRig, serverFactory: TaskServerFactory) -> None:
        self.rig = rig
        self.serverFactory = serverFactory
        self.up = True
        self.connections: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionRefusedError())
        server = self.serverFactory.buildProtocol(TASK_SERVER)
        client = factory.buildProtocol(TASK_SERVER)
        peer = IPv4Address("TCP", "127.0.0.1", 5)
        pump = self.rig.connect(
            server,
            iosim.FakeTransport(server, True, TASK_SERVER, peer),
            client,
            iosim.FakeTransport(client, False, peer, TASK_SERVER),
        )
        self.connections.append(pump)
        return succeed(client)

    def down(self) -> None:
        """
        The task server goes away: refuse new connections, drop open ones.
        """
        self.up = False
        for pump in self.connections:
            pump.serverIO.loseConnection()
        self.rig.flush()


class GatewayRig:
    """
    A gateway in front of a task server whose pool has C{size} fake workers
    running the tasks of C{tasks}.

    @param serverOptions: keyword arguments of the L{TaskServerFactory}
        (C{maxLineLength=}, say).
    @param gatewayOptions: keyword arguments of the L{GatewayFactory}.
    """

    def __init__(
        self,
        tasks: str = "taskservice.examples",
        size: int = 1,
        *,
        web: Path | None = None,
        serverOptions: dict[str, Any] | None = None,
        **gatewayOptions: Any,
    ) -> None:
        self.reactor = reactor = FakeProcessReactor()
        self.pumps: list[iosim.IOPump] = []
        self.pool = ProcessPool(reactor, [tasks], size=size)
        self.pool.startService()
        reactor.readyAll()
        self.server = TaskServerFactory(self.pool, **(serverOptions or {}))
        self.endpoint = MemoryEndpoint(self, self.server)
        self.client = TaskClient(reactor, self.endpoint, maxRetryDelay=1.0)
        self.client.startService()
        self.factory = GatewayFactory(reactor, self.client, **gatewayOptions)
        self.site = GatewaySite(self.factory, web=web or Path("/nonexistent"))
        self.flush()

    def connect(
        self, server: Any, serverIO: Any, client: Any, clientIO: Any
    ) -> iosim.IOPump:
        """
        Connect two protocols over iosim, on the rig's clock.
        """
        pump: iosim.IOPump = iosim.connect(
            server, serverIO, client, clientIO, greet=False, clock=self.reactor
        )
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """
        Deliver every byte in flight, both ways, on every connection.
        """
        while any([pump.flush() for pump in self.pumps]):
            pass
        self.pumps = [
            p
            for p in self.pumps
            if not (p.clientIO.disconnected and p.serverIO.disconnected)
        ]

    def run(self) -> None:
        """
        Let the fake workers run every call they have (on the pool's own
        registry), and deliver the replies.
        """
        self.flush()
        while any(w.calls for w in self.reactor.alive):
            self.reactor.runAllCalls(self.pool.registry)
            self.flush()

    def settle(self, registry: Any = None, rounds: int = 10_000) -> None:
        """
        Deliver everything, let killed workers be replaced and the workers
        run every call (with C{registry}'s functions, default the pool's),
        until all is quiet.
        """
        reactor = self.reactor
        for _ in range(rounds):
            self.flush()
            reactor.reapAll()
            reactor.readyAll()
            self.flush()
            if not any(w.calls and not w.killed for w in reactor.alive):
                return
            reactor.runAllCalls(registry or self.pool.registry)
        raise AssertionError("the workers never ran out of calls")

    def connectBrowser(
        self,
        protocol: type[B],
        origin: str | None = ORIGIN,
        host: str = HOST,
    ) -> B:
        """
        A new browser (an instance of C{protocol}) with its websocket
        handshake delivered.
        """
        factory = WebSocketClientFactory(
            f"ws://{host}/ws", origin=origin, reactor=self.reactor
        )
        factory.protocol = protocol
        browser = factory.buildProtocol(GATEWAY)
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        server = self.site.buildProtocol(peer)
        self.connect(
            server,
            iosim.FakeTransport(server, True, GATEWAY, peer),
            browser,
            iosim.FakeTransport(browser, False, peer, GATEWAY),
        )
        self.flush()
        assert isinstance(browser, protocol)
        return browser
