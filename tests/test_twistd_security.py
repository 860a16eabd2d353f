"""
C{twistd taskservice} with a token and mutual TLS, as an operator runs it
(see L{tests.test_twistd}): a task server with C{--token-file},
C{--tls-cert} and C{--tls-ca}, called with Python's own C{ssl} module; and
the two-machine set-up on one machine, a second C{twistd} running the
gateway in front of it with C{--task-server tls:...} and
C{--task-server-token-file}, called by a websocket client.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from taskservice.testing import Twistd, freePort
from tests.test_auth import SECRET
from tests.test_gateway_integration import openBrowser
from tests.test_security_integration import PKI, makePKI
from tests.test_twistd import DEADLINE, HOST

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    (tmp_path / "pki").mkdir()
    return makePKI(tmp_path / "pki")


@pytest.fixture
def tokenFile(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def tlsClient(
    pki: PKI, plain: socket.socket, *, withCert: bool = True
) -> ssl.SSLSocket:
    """
    Wrap a connected socket in TLS as a client: check the server's
    certificate for localhost, present the client certificate.
    """
    context = ssl.create_default_context(cafile=str(pki.caFile))
    if withCert:
        context.load_cert_chain(str(pki.clientCert), str(pki.clientKey))
    return context.wrap_socket(plain, server_hostname="localhost")


def lines(connection: ssl.SSLSocket, *messages: Any) -> Iterator[Any]:
    """
    Send C{messages} as lines in one write; yield each reply line decoded,
    then stop at end of file.
    """
    connection.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    with connection.makefile("rb") as reader:
        for line in reader:
            yield json.loads(line)


def taskServer(cwd: Path, port: int, pki: PKI, tokenFile: Path) -> Any:
    cwd.mkdir()
    return Twistd(
        cwd,
        "--no-websocket",
        "--workers",
        "1",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--tls-cert",
        str(pki.serverPEM),
        "--tls-ca",
        str(pki.caFile),
        "--token-file",
        str(tokenFile),
    )


def stop(server: Twistd, *, signalled: bool = False) -> str:
    """
    SIGTERM C{server} (unless it was already sent); its output, once it has
    exited as it should.
    """
    if not signalled:
        server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=DEADLINE) == -signal.SIGTERM, server.output()
    output = server.output()
    assert "Traceback" not in output, output
    return output


def test_twistdTokenAndMutualTLS(tmp_path: Path, pki: PKI, tokenFile: Path) -> None:
    """
    twistd taskservice --tls-cert --tls-ca --token-file: a client with a
    certificate of the CA and the token calls (the call pipelined behind
    $/auth); a wrong token gets -32005 and the connection is closed; a
    client without a certificate is refused by TLS; on SIGTERM an open TLS
    connection is closed cleanly. The token is nowhere in twistd's output.
    """
    port = freePort()
    with taskServer(tmp_path / "tasks", port, pki, tokenFile) as server:
        with tlsClient(pki, server.connect(port)) as connection:
            replies = lines(
                connection,
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "$/auth",
                    "params": {"token": SECRET},
                },
                {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": ["over mTLS"]},
            )
            assert next(replies) == {"jsonrpc": "2.0", "id": 1, "result": True}
            assert next(replies) == {"jsonrpc": "2.0", "id": 2, "result": "over mTLS"}

        with tlsClient(pki, server.connect(port)) as connection:
            replies = lines(
                connection,
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "$/auth",
                    "params": {"token": "x"},
                },
                {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": ["never"]},
            )
            assert list(replies) == [
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "error": {
                        "code": -32005,
                        "message": "unauthorised",
                        "data": "wrong or missing token",
                    },
                }
            ]

        plain = server.connect(port)
        stats = {"jsonrpc": "2.0", "id": 1, "method": "$/stats"}
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError)) as refused,
            tlsClient(pki, plain, withCert=False) as connection,
        ):
            list(lines(connection, stats))
        assert "CERTIFICATE_REQUIRED" in str(refused.value) or isinstance(
            refused.value, ConnectionResetError
        ), refused.value

        # On SIGTERM an open TLS connection is closed cleanly (close_notify,
        # read as end of file), not aborted after the grace period.
        with tlsClient(pki, server.connect(port)) as connection:
            replies = lines(
                connection,
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "$/auth",
                    "params": {"token": SECRET},
                },
            )
            assert next(replies)["result"] is True
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert list(replies) == []
            assert time.monotonic() - started < 4.0

        output = stop(server, signalled=True)
    assert SECRET not in output
    assert "refused: wrong or missing token" in output, output
    assert "peer did not return a certificate" in output, output


@pytest_twisted.ensureDeferred
async def test_twoMachines(tmp_path: Path, pki: PKI, tokenFile: Path) -> None:
    """
    The two-machine set-up on one machine: a task server (mutual TLS and a
    token, --no-websocket) and, in another twistd, the gateway with
    --task-server tls:... (its client certificate, the CA as trust root)
    and --task-server-token-file. A browser's call goes through both; the
    token is in neither output.
    """
    port, wsPort = freePort(), freePort()
    upstream = (
        f"tls:localhost:{port}:trustRoots={pki.caDir}"
        f":certificate={pki.clientCert}:privateKey={pki.clientKey}"
    )
    (tmp_path / "gateway").mkdir()
    with (
        taskServer(tmp_path / "tasks", port, pki, tokenFile) as tasks,
        Twistd(
            tmp_path / "gateway",
            "--task-server",
            upstream,
            "--task-server-token-file",
            str(tokenFile),
            "--websocket",
            f"tcp:{wsPort}:interface={HOST}",
        ) as gateway,
    ):
        tasks.connect(port).close()
        gateway.connect(wsPort).close()
        browser = await openBrowser(wsPort)
        deadline = time.monotonic() + DEADLINE
        while True:
            browser.call(1, "echo", "two machines")
            reply = await browser.next()
            if "result" in reply or time.monotonic() > deadline:
                break
            # The gateway may not have connected upstream yet (-32006).
            assert reply["error"]["code"] == -32006, reply
            await deferLater(reactor, 0.1, lambda: None)
        assert reply == {"jsonrpc": "2.0", "id": 1, "result": "two machines"}
        browser.call(2, "$/stats")
        stats = (await browser.next())["result"]
        assert stats["taskServer"]["connections"] == 1, stats
        browser.sendClose()
        await browser.closed
        gatewayOutput = stop(gateway)
        tasksOutput = stop(tasks)
    assert SECRET not in gatewayOutput
    assert SECRET not in tasksOutput


@pytest_twisted.ensureDeferred
async def test_localGatewaySendsTheToken(tmp_path: Path, tokenFile: Path) -> None:
    """
    One twistd with --token-file and its gateway: the gateway reaches its
    own task server (on port 0, wherever it bound) with that token, so a
    browser's call goes through. The token is not in twistd's output.
    """
    wsPort = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:0:interface={HOST}",
        "--token-file",
        str(tokenFile),
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
    ) as server:
        server.connect(wsPort).close()
        browser = await openBrowser(wsPort)
        browser.call(1, "echo", "with the token")
        assert await browser.next() == {
            "jsonrpc": "2.0",
            "id": 1,
            "result": "with the token",
        }
        browser.sendClose()
        await browser.closed
        output = stop(server)
    assert SECRET not in output
