"""
The security options of C{twistd taskservice} (L{taskservice.tap}):
C{--token-file}, C{--task-server-token-file}, C{--tls-cert}, C{--tls-key}
and C{--tls-ca}, parsed with C{parseOptions} and built into (never started)
service trees.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.python import usage

from taskservice import tap
from taskservice.client import TaskClient
from tests.test_auth import SECRET
from tests.test_security_integration import PKI, makePKI
from tests.test_tap import descendants, only, parse, taskListener

TASK_SERVER = "tcp:tasks.example.com:12345"


@pytest.fixture
def tokenFile(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return makePKI(tmp_path)


def test_noSecurityByDefault() -> None:
    """
    By default there is no token and no TLS (the task port is on loopback).
    """
    options = parse()
    assert options["token-file"] is None
    assert options["task-server-token-file"] is None
    assert (options["tls-cert"], options["tls-key"], options["tls-ca"]) == (
        None,
        None,
        None,
    )
    assert (options.config.token, options.config.upstreamToken, options.config.tls) == (
        None,
        None,
        None,
    )


def test_tokenFile(tokenFile: str) -> None:
    """
    --token-file is read when the options are parsed (whitespace stripped);
    the task server's factory requires it (the gateway beside it calls its
    pool directly: it needs no token). The options never show it.
    """
    options = parse("--token-file", tokenFile, "--listen", "tcp:0")
    assert options.config.token.reveal() == SECRET
    assert options.config.upstreamToken is None
    assert SECRET not in repr(dict(options))
    root = tap.makeService(options)
    assert taskListener(root).factory.token is options.config.token
    assert not [s for s in descendants(root) if isinstance(s, TaskClient)]


def test_taskServerTokenFile(tokenFile: str) -> None:
    """
    --task-server-token-file is the token the gateway sends to
    --task-server.
    """
    options = parse("--task-server", TASK_SERVER, "--task-server-token-file", tokenFile)
    assert options.config.token is None
    assert options.config.upstreamToken.reveal() == SECRET
    root = tap.makeService(options)
    assert only(TaskClient, root)._token is options.config.upstreamToken


@pytest.mark.parametrize(
    ("content", "complaint"), [("", "empty"), ("\n  \n", "empty"), ("a\nb", "line")]
)
def test_badTokenFileIsUsageError(tmp_path: Path, content: str, complaint: str) -> None:
    """
    An empty token file, or one of several lines, is a usage error naming
    the option and the file.
    """
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(usage.UsageError) as raised:
        parse("--token-file", str(path), "--no-websocket")
    assert "--token-file" in str(raised.value)
    assert str(path) in str(raised.value)
    assert complaint in str(raised.value)


def test_missingTokenFileIsUsageError(tmp_path: Path) -> None:
    """
    A token file that cannot be read is a usage error naming it.
    """
    missing = str(tmp_path / "missing")
    for argv in (
        ["--token-file", missing, "--no-websocket"],
        ["--task-server", TASK_SERVER, "--task-server-token-file", missing],
    ):
        with pytest.raises(usage.UsageError) as raised:
            parse(*argv)
        assert missing in str(raised.value)


def test_tokenOptionsInTheWrongPlace(tokenFile: str) -> None:
    """
    --token-file is for a task server run here (not with --task-server);
    --task-server-token-file needs --task-server. Each is refused where it
    would be silently ignored.
    """
    with pytest.raises(usage.UsageError, match="--task-server-token-file"):
        parse("--task-server", TASK_SERVER, "--token-file", tokenFile)
    with pytest.raises(usage.UsageError, match="goes with --task-server"):
        parse("--task-server-token-file", tokenFile)
    with pytest.raises(usage.UsageError, match="goes with --task-server"):
        parse("--no-websocket", "--task-server-token-file", tokenFile)


def tlsArgs(pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.serverPEM), "--tls-ca", str(pki.caFile)]


def test_tlsListener(pki: PKI) -> None:
    """
    --tls-cert and --tls-ca make the task server listen with TLS on the
    --listen port and interface, requiring client certificates.
    """
    options = parse(
        "--no-websocket",
        "--listen",
        "tcp:23456:interface=127.0.0.1:backlog=7",
        *tlsArgs(pki),
    )
    tls = options.config.tls
    assert tls.requireCertificate and tls.verify
    endpoint = taskListener(tap.makeService(options)).endpoint
    assert isinstance(endpoint, SSL4ServerEndpoint)
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (
        23456,
        "127.0.0.1",
        7,
    )
    assert endpoint._sslContextFactory is tls


def test_tlsSeparateKey(pki: PKI, tmp_path: Path) -> None:
    """
    --tls-key names the private key when it is not in the --tls-cert file.
    """
    text = pki.serverPEM.read_text()
    keyEnd = text.index("PRIVATE KEY-----", text.index("-----END")) + 16
    (tmp_path / "key.pem").write_text(text[:keyEnd] + "\n")
    (tmp_path / "cert.pem").write_text(text[keyEnd:].lstrip())
    assert "PRIVATE" not in (tmp_path / "cert.pem").read_text()
    options = parse(
        "--no-websocket",
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        "--tls-ca",
        str(pki.caFile),
    )
    assert options.config.tls is not None


def test_tlsListenerBesideTheGateway(pki: PKI) -> None:
    """
    The gateway calls the pool beside it directly, so the task port may
    require client certificates while the gateway runs in the same process.
    """
    root = tap.makeService(parse("--listen", "tcp:0", *tlsArgs(pki)))
    assert isinstance(taskListener(root).endpoint, SSL4ServerEndpoint)


def test_tlsOptionErrors(pki: PKI, tmp_path: Path) -> None:
    """
    Each misuse of the TLS options is a usage error that says what to do.
    """
    cases = [
        (["--no-websocket", "--tls-cert", str(pki.serverPEM)], "go together"),
        (["--no-websocket", "--tls-ca", str(pki.caFile)], "go together"),
        (["--task-server", TASK_SERVER, *tlsArgs(pki)], "tls: endpoint"),
        (
            ["--no-websocket", "--listen", "unix:/tmp/tasks.sock", *tlsArgs(pki)],
            "tcp:",
        ),
        (
            [
                "--no-websocket",
                "--listen",
                "ssl:12345:privateKey=key.pem",
                *tlsArgs(pki),
            ],
            "tcp:",
        ),
        (
            [
                "--no-websocket",
                "--tls-cert",
                str(tmp_path / "nope.pem"),
                "--tls-ca",
                str(pki.caFile),
            ],
            "nope.pem",
        ),
        (
            [
                "--no-websocket",
                "--tls-cert",
                str(pki.clientCert),
                "--tls-ca",
                str(pki.caFile),
            ],
            "no unencrypted PEM private key",
        ),
        (
            [
                "--no-websocket",
                "--tls-cert",
                str(pki.serverPEM),
                "--tls-key",
                str(pki.clientKey),
                "--tls-ca",
                str(pki.caFile),
            ],
            "does not match",
        ),
        (
            [
                "--no-websocket",
                "--tls-cert",
                str(pki.serverPEM),
                "--tls-ca",
                str(pki.clientKey),
            ],
            "--tls-ca",
        ),
    ]
    for argv, clue in cases:
        with pytest.raises(usage.UsageError) as raised:
            parse(*argv)
        assert clue in str(raised.value), (argv, str(raised.value))
