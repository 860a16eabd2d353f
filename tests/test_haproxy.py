"""
Behind a real load balancer: HAProxy in TCP mode in front of two task
servers, as the Workerman FAQ suggests with LVS. The protocol keeps no
session state, so any connection may land on any server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.task import deferLater

from taskservice.client import TaskClient
from taskservice.errors import Unavailable
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.testing import freePort

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(HAPROXY).exists(),
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]

CONFIG = """
global
    maxconn 256
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
frontend tasks
    bind 127.0.0.1:{port}
    default_backend servers
backend servers
    balance leastconn
    server a 127.0.0.1:{a} check inter 100ms fall 1 rise 1
    server b 127.0.0.1:{b} check inter 100ms fall 1 rise 1
"""


class TaskServer:
    def __init__(self, pool: ProcessPool, port: Any) -> None:
        self.pool = pool
        self.port = port
        self.factory: TaskServerFactory = port.factory

    async def kill(self) -> None:
        """
        As if the machine went away: stop listening, drop every connection.
        """
        await self.port.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()


async def startServer(tls: Any = None) -> TaskServer:
    """
    A task server of one worker on a loopback port; with C{tls} (server TLS
    options), mutual TLS as C{--tls-cert} serves it.
    """
    pool = ProcessPool(reactor, ["taskservice.examples"], size=1)
    pool.startService()
    await pool.whenReady()
    endpoint = (
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        if tls is None
        else SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
    )
    port = await endpoint.listen(TaskServerFactory(pool))
    return TaskServer(pool, port)


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[int, TaskServer, TaskServer]]:
    async with front(tmp_path, await startServer(), await startServer()) as running:
        yield running


@asynccontextmanager
async def front(
    tmp_path: Path, a: TaskServer, b: TaskServer
) -> AsyncIterator[tuple[int, TaskServer, TaskServer]]:
    """
    HAProxy in TCP mode on a free loopback port in front of C{a} and C{b};
    on the way out, HAProxy and both servers are stopped.
    """
    port = freePort()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        CONFIG.format(port=port, a=a.port.getHost().port, b=b.port.getHost().port)
    )
    proxy = subprocess.Popen(
        [HAPROXY, "-f", str(config), "-db"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proxy.poll() is None, proxy.stderr.read() if proxy.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen"
                await deferLater(reactor, 0.05, lambda: None)
        yield port, a, b
    finally:
        proxy.terminate()
        proxy.wait(10)
        for server in (a, b):
            if server.port.connected:
                await server.port.stopListening()
            for protocol in list(server.factory.protocols):
                protocol.transport.abortConnection()
            await server.pool.stopService()


@pytest_twisted.ensureDeferred
async def test_spreadAndSurviveALostServer(
    cluster: tuple[int, TaskServer, TaskServer],
) -> None:
    """
    Four clients through HAProxy (leastconn) land on both servers and every
    call is answered. One server dies mid-run: its in-flight calls fail at
    once with -32006, the survivor's finish, every call gets exactly one
    outcome (a Deferred fires once; none is left hanging), the clients
    reconnect through HAProxy to the survivor and carry on.
    """
    port, a, b = cluster
    clients = [TaskClient(reactor, f"tcp:127.0.0.1:{port}") for _ in range(4)]
    for client in clients:
        client.startService()
    try:
        results = await gatherResults(
            [c.call("echo", i) for i, c in enumerate(clients) for _ in range(25)]
        )
        assert len(results) == 100
        assert a.pool.completed > 0 and b.pool.completed > 0, "both servers served"

        outcomes: list[str] = []

        def record(result: Any) -> None:
            outcomes.append("error" if isinstance(result, Exception) else "ok")

        inFlight = [c.call("sleep", 0.5) for c in clients for _ in range(2)]
        for d in inFlight:
            d.addCallbacks(record, lambda f: record(f.value))
        await deferLater(reactor, 0.1, lambda: None)
        await a.kill()
        deadline = time.monotonic() + 15
        while len(outcomes) < len(inFlight):
            assert time.monotonic() < deadline, f"calls left hanging: {outcomes}"
            await deferLater(reactor, 0.05, lambda: None)
        assert "error" in outcomes and "ok" in outcomes

        before = b.pool.completed
        deadline = time.monotonic() + 15
        answered = 0
        while answered < 40:
            assert time.monotonic() < deadline, "clients did not recover"
            for client in clients:
                try:
                    assert await client.call("echo", "after") == "after"
                    answered += 1
                except Unavailable:
                    await deferLater(reactor, 0.1, lambda: None)
        assert b.pool.completed >= before + 40, "the survivor took over"
    finally:
        for client in clients:
            await client.stopService()


@pytest_twisted.ensureDeferred
async def test_mutualTLSThroughHAProxy(tmp_path: Path) -> None:
    """
    With TLS, HAProxy in TCP mode passes each handshake through to a task
    server: clients with a certificate the servers' CA signed, checking the
    servers' certificate for its name, reach both servers through it; a
    client without a certificate is refused with the TLS reason.
    """
    from taskservice._tls import serverTLSOptions
    from tests.test_security_integration import makePKI, tlsEndpoint

    (tmp_path / "pki").mkdir()
    pki = makePKI(tmp_path / "pki")
    tls = serverTLSOptions(str(pki.serverPEM), None, str(pki.caFile))
    servers = await startServer(tls), await startServer(tls)
    async with front(tmp_path, *servers) as (port, a, b):
        clients = [TaskClient(reactor, tlsEndpoint(pki, port)) for _ in range(4)]
        for client in clients:
            client.startService()
        try:
            results = await gatherResults(
                [c.call("echo", i) for i, c in enumerate(clients) for _ in range(10)]
            )
            assert sorted(results) == sorted(i for i in range(4) for _ in range(10))
            assert a.pool.completed > 0 and b.pool.completed > 0, "both served"
        finally:
            for client in clients:
                await client.stopService()
        stranger = TaskClient(reactor, tlsEndpoint(pki, port, noCert=True))
        stranger.startService()
        try:
            with pytest.raises(Unavailable) as refused:
                await stranger.call("echo", "no certificate")
            assert "client certificate" in str(refused.value.data), refused.value.data
        finally:
            await stranger.stopService()
