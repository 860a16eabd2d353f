"""
Unit tests of L{taskservice._sockets.parseEndpoint}, the Twisted-free
reader of the C{tcp:}, C{tls:} and C{unix:} client endpoint strings that
L{taskservice.sync} and L{taskservice.aio} take.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from taskservice._sockets import DEFAULT_CONNECT_TIMEOUT, parseEndpoint
from tests.test_security_integration import makePKI


@pytest.mark.parametrize(
    ("description", "address", "timeout"),
    [
        ("tcp:127.0.0.1:12345", ("127.0.0.1", 12345), DEFAULT_CONNECT_TIMEOUT),
        (
            "tcp:host=tasks.internal:port=7000:timeout=2.5",
            ("tasks.internal", 7000),
            2.5,
        ),
        ("tcp:\\:\\:1:12345", ("::1", 12345), DEFAULT_CONNECT_TIMEOUT),
    ],
)
def test_tcp(description: str, address: tuple[str, int], timeout: float) -> None:
    """tcp: positional or named host and port, escaped colons, timeout=."""
    target = parseEndpoint(description)
    assert (target.address, target.path, target.timeout) == (address, None, timeout)
    assert target.sslContext is None


def test_unix() -> None:
    """unix:PATH and unix:path=PATH."""
    assert parseEndpoint("unix:/run/tasks.sock").path == "/run/tasks.sock"
    target = parseEndpoint("unix:path=/tmp/t.sock:timeout=1")
    assert (target.path, target.address, target.timeout) == ("/tmp/t.sock", None, 1)


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ("ssl:127.0.0.1:1", "tcp:, tls: and unix:"),
        ("tcp:127.0.0.1", "needs a host and a port"),
        ("tcp:127.0.0.1:http", "not a number"),
        ("tcp:127.0.0.1:70000", "out of range"),
        ("tcp:127.0.0.1:1:bindAddress=127.0.0.2", "bindAddress not supported"),
        ("tcp:127.0.0.1:1:timeout=0", "must be positive"),
        ("unix:", "needs one path"),
        ("tls:localhost:1:endpoint=unix\\:/x", "endpoint= must be tcp:"),
        ("tls:localhost:1:trustRoots=/nonexistent", "no *.pem file"),
        ("tls:localhost:1:privateKey=/k.pem", "needs certificate="),
    ],
)
def test_refused(description: str, words: str) -> None:
    """Each form these clients cannot use is a ValueError saying why."""
    with pytest.raises(ValueError) as refused:
        parseEndpoint(description)
    assert words in str(refused.value)


def test_tls(tmp_path: Path) -> None:
    """
    tls: checks the host name given (also when endpoint= says where to
    connect), trusts the *.pem files of trustRoots, and loads the client's
    certificate; a file that is no certificate is named.
    """
    pki = makePKI(tmp_path)
    target = parseEndpoint(
        f"tls:localhost:12345:trustRoots={pki.caDir}"
        f":certificate={pki.clientCert}:privateKey={pki.clientKey}"
        ":endpoint=tcp\\:127.0.0.2\\:7000"
    )
    assert target.address == ("127.0.0.2", 7000)
    assert target.serverHostname == "localhost"
    assert target.sslContext is not None
    assert target.sslContext.verify_mode == ssl.CERT_REQUIRED
    assert target.sslContext.check_hostname
    assert len(target.sslContext.get_ca_certs()) == 1
    with pytest.raises(ValueError, match="certificate="):
        parseEndpoint(f"tls:localhost:1:certificate={pki.caFile}")
