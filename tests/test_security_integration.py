"""
The token and mutual TLS over real loopback sockets: a real task server
(real worker processes) and L{TaskClient}, with throwaway certificates made
by C{trustme}.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from taskservice._tls import serverTLSOptions
from taskservice.client import TaskClient
from taskservice.errors import Unauthorised, Unavailable
from taskservice.gateway import GatewayFactory
from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from tests.test_auth import SECRET, assertSecretNotIn

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@dataclass(frozen=True)
class PKI:
    """
    Files of a throwaway public-key infrastructure: a CA, the task server's
    certificate (for C{localhost}) and a client certificate it signed; and
    another CA with a client certificate of its own.
    """

    caFile: Path
    caDir: Path
    serverPEM: Path
    clientCert: Path
    clientKey: Path
    otherCADir: Path
    otherClientCert: Path
    otherClientKey: Path


def makePKI(directory: Path) -> PKI:
    """
    Write a L{PKI}'s files under C{directory}.
    """
    ca, other = trustme.CA(), trustme.CA()
    (directory / "ca").mkdir()
    (directory / "other-ca").mkdir()
    pki = PKI(
        caFile=directory / "ca" / "ca.pem",
        caDir=directory / "ca",
        serverPEM=directory / "server.pem",
        clientCert=directory / "client.pem",
        clientKey=directory / "client.key",
        otherCADir=directory / "other-ca",
        otherClientCert=directory / "other-client.pem",
        otherClientKey=directory / "other-client.key",
    )
    ca.cert_pem.write_to_path(str(pki.caFile))
    other.cert_pem.write_to_path(str(pki.otherCADir / "ca.pem"))
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
        str(pki.serverPEM)
    )
    for issuer, cert, key in [
        (ca, pki.clientCert, pki.clientKey),
        (other, pki.otherClientCert, pki.otherClientKey),
    ]:
        issued = issuer.issue_cert("gateway.example")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return makePKI(tmp_path)


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """
    Every event logged during the test.
    """
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    pool.startService()
    await pool.whenReady()
    yield pool
    await pool.stopService()


class Listening:
    """
    A task server listening on a loopback port, with or without TLS.
    """

    def __init__(self, factory: TaskServerFactory) -> None:
        self.factory = factory
        self.port: Any = None

    async def listen(self, tls: Any = None) -> Listening:
        endpoint = (
            TCP4ServerEndpoint(reactor, 0, interface=HOST)
            if tls is None
            else SSL4ServerEndpoint(reactor, 0, tls, interface=HOST)
        )
        self.port = await endpoint.listen(self.factory)
        return self

    @property
    def portNumber(self) -> int:
        return int(self.port.getHost().port)

    async def stop(self) -> None:
        await self.port.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
            await protocol.whenClosed()


@pytest_twisted.async_yield_fixture
async def plainServer(pool: ProcessPool) -> AsyncIterator[Listening]:
    """
    A task server that requires SECRET, on plain TCP.
    """
    server = await Listening(TaskServerFactory(pool, token=SECRET)).listen()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def tlsServer(pool: ProcessPool, pki: PKI) -> AsyncIterator[Listening]:
    """
    A task server on mutual TLS (no token): it requires a client
    certificate signed by the PKI's CA.
    """
    tls = serverTLSOptions(str(pki.serverPEM), None, str(pki.caFile))
    server = await Listening(TaskServerFactory(pool)).listen(tls)
    yield server
    await server.stop()


async def callOnce(endpoint: str, token: str | None = None) -> Any:
    """
    Start a TaskClient, make one call (C{add(20, 22)}), stop the client;
    return the result or the exception.
    """
    client = TaskClient(reactor, endpoint, token=token)
    client.startService()
    try:
        return await client.call("add", 20, 22)
    except Exception as e:
        return e
    finally:
        await client.stopService()


# -- the token ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tokenRoundTrip(plainServer: Listening, logged: list[LogEvent]) -> None:
    """
    A client with the right token calls over a real socket, reconnects and
    authenticates again; the token appears in no log event.
    """
    client = TaskClient(reactor, f"tcp:{HOST}:{plainServer.portNumber}", token=SECRET)
    client.startService()
    try:
        assert await client.call("add", 1, 2) == 3
        for protocol in list(plainServer.factory.protocols):
            protocol.transport.loseConnection()
        while True:
            try:
                assert await client.call("add", 2, 3) == 5
                break
            except Unavailable:
                await _sleep(0.05)
    finally:
        await client.stopService()
    assertSecretNotIn(logged)


@pytest_twisted.ensureDeferred
async def test_wrongTokenRefused(
    plainServer: Listening, logged: list[LogEvent]
) -> None:
    """
    A client with a wrong token (or none) gets -32005 for its first call,
    and again at once for the next; the token the server holds appears in
    no log event, nor does the wrong one.
    """
    wrong = "not-the-" + SECRET
    client = TaskClient(reactor, f"tcp:{HOST}:{plainServer.portNumber}", token=wrong)
    client.startService()
    try:
        with pytest.raises(Unauthorised) as raised:
            await client.call("add", 1, 2)
        assert raised.value.code == -32005
        assert raised.value.data == "wrong or missing token"
        with pytest.raises(Unauthorised):
            await client.call("add", 1, 2)
        # A gateway on this client shows it in /stats.
        stats = await GatewayFactory(reactor, client).statsDocument()
        assert stats["taskServer"] == {
            "error": {
                "code": -32005,
                "message": "unauthorised",
                "data": "wrong or missing token",
            }
        }
    finally:
        await client.stopService()
    outcome = await callOnce(f"tcp:{HOST}:{plainServer.portNumber}")
    assert isinstance(outcome, Unauthorised), outcome
    assertSecretNotIn(logged)
    assertSecretNotIn(logged, wrong)


class RawLines(Protocol):
    """
    Sends lines, collects what comes back until the connection closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_rawCallFirstIsRefusedAndClosed(plainServer: Listening) -> None:
    """
    On a real socket, a call sent before $/auth is answered -32005 and the
    server closes the connection after writing the reply.
    """
    protocol = await TCP4ClientEndpoint(reactor, HOST, plainServer.portNumber).connect(
        Factory.forProtocol(RawLines)
    )
    assert isinstance(protocol, RawLines)
    protocol.transport.write(
        b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}\n'
    )
    received = await protocol.closed
    assert json.loads(received) == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": -32005,
            "message": "unauthorised",
            "data": "authenticate first: send $/auth with the token",
        },
    }


# -- mutual TLS --------------------------------------------------------------------


def tlsEndpoint(
    pki: PKI,
    port: int,
    *,
    host: str = "localhost",
    trustRoots: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    noCert: bool = False,
) -> str:
    """
    A C{tls:} client endpoint string to the loopback port C{port},
    checking the server's certificate for C{host}.
    """
    roots = pki.caDir if trustRoots is None else trustRoots
    description = f"tls:{host}:{port}:trustRoots={roots}"
    if host != "localhost":
        description += f":endpoint=tcp\\:{HOST}\\:{port}"
    if not noCert:
        certificate, key = (pki.clientCert, pki.clientKey) if cert is None else cert
        description += f":certificate={certificate}:privateKey={key}"
    return description


@pytest_twisted.ensureDeferred
async def test_mutualTLSRoundTrip(tlsServer: Listening, pki: PKI) -> None:
    """
    A client presenting a certificate signed by the server's CA, and
    checking the server's certificate for its host name, calls over TLS;
    the server saw the client's certificate.
    """
    client = TaskClient(reactor, tlsEndpoint(pki, tlsServer.portNumber))
    client.startService()
    try:
        assert await client.call("add", 20, 22) == 42
        (serverSide,) = tlsServer.factory.protocols
        assert serverSide.transport.getPeerCertificate() is not None
        assert client._protocol is not None
        assert client._protocol.transport.getTcpNoDelay()
    finally:
        await client.stopService()


def assertUnavailable(outcome: Any, *clues: str) -> str:
    """
    C{outcome} is an L{Unavailable} whose reason holds every clue; returns
    the reason.
    """
    assert isinstance(outcome, Unavailable), outcome
    reason = str((outcome.data or {}).get("reason"))
    for clue in clues:
        assert clue in reason, reason
    return reason


@pytest_twisted.ensureDeferred
async def test_wrongHostNameRefused(tlsServer: Listening, pki: PKI) -> None:
    """
    A server whose certificate is not for the host name the client asked
    for is refused by the client: the call fails with Unavailable naming
    the mismatch and the host name.
    """
    outcome = await callOnce(
        tlsEndpoint(pki, tlsServer.portNumber, host="tasks.example.org")
    )
    assertUnavailable(outcome, "host name mismatch", "tasks.example.org")


@pytest_twisted.ensureDeferred
async def test_unknownServerCARefused(tlsServer: Listening, pki: PKI) -> None:
    """
    A server whose certificate is signed by a CA the client does not trust
    is refused by the client (Unavailable: certificate verify failed).
    """
    outcome = await callOnce(
        tlsEndpoint(pki, tlsServer.portNumber, trustRoots=pki.otherCADir)
    )
    assertUnavailable(outcome, "not signed by a CA in trustRoots", "verify failed")


@pytest_twisted.ensureDeferred
async def test_missingClientCertRefused(tlsServer: Listening, pki: PKI) -> None:
    """
    A client without a certificate is refused by the server; the client's
    call fails with Unavailable saying a client certificate is required.
    """
    outcome = await callOnce(tlsEndpoint(pki, tlsServer.portNumber, noCert=True))
    assertUnavailable(outcome, "requires a client certificate")
    assert not tlsServer.factory.protocols


@pytest_twisted.ensureDeferred
async def test_clientCertOfOtherCARefused(tlsServer: Listening, pki: PKI) -> None:
    """
    A client certificate signed by another CA is refused by the server;
    the client's call fails with Unavailable saying so.
    """
    outcome = await callOnce(
        tlsEndpoint(
            pki,
            tlsServer.portNumber,
            cert=(pki.otherClientCert, pki.otherClientKey),
        )
    )
    assertUnavailable(outcome, "does not trust our client certificate's CA")


@pytest_twisted.ensureDeferred
async def test_tlsAndToken(pool: ProcessPool, pki: PKI, logged: list[LogEvent]) -> None:
    """
    Both at once: over mutual TLS, the right token calls and a wrong one
    gets -32005; the token is in no log event.
    """
    tls = serverTLSOptions(str(pki.serverPEM), None, str(pki.caFile))
    server = await Listening(TaskServerFactory(pool, token=SECRET)).listen(tls)
    try:
        endpoint = tlsEndpoint(pki, server.portNumber)
        assert await callOnce(endpoint, SECRET) == 42
        assert isinstance(await callOnce(endpoint, "wrong"), Unauthorised)
    finally:
        await server.stop()
    assertSecretNotIn(logged)


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
