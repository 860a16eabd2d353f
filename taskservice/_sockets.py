"""
Client endpoint strings for the clients without Twisted
(L{taskservice.sync}, L{taskservice.aio}): the C{tcp:}, C{tls:} and C{unix:}
forms that L{taskservice.client.TaskClient} takes, read by a small parser of
our own into a L{SocketTarget} (where to connect, and an C{ssl} context for
TLS), so that a Django or FastAPI process never loads Twisted.

Exactly these forms (the ones docs/embedding and docs/security list), with
Twisted's escaping (C{\\:} is a colon)::

    tcp:HOST:PORT            tcp:host=HOST:port=PORT        [:timeout=S]
    unix:PATH                unix:path=PATH                 [:timeout=S]
    tls:HOST:PORT[:trustRoots=DIR][:certificate=PEM][:privateKey=PEM]
        [:endpoint=tcp\\:ADDRESS\\:PORT][:timeout=S]

Anything else (another endpoint type, a keyword these clients do not
implement, such as C{bindAddress}) is a L{ValueError} naming it.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from taskservice._endpoints import splitDescription

DEFAULT_CONNECT_TIMEOUT = 30.0
"""Seconds to wait for a connection (Twisted's client endpoints' default)."""

_KEYWORDS = {
    "tcp": {"host", "port", "timeout"},
    "unix": {"path", "timeout"},
    "tls": {
        "host",
        "port",
        "timeout",
        "trustRoots",
        "certificate",
        "privateKey",
        "endpoint",
    },
}


@dataclass(frozen=True)
class SocketTarget:
    """
    Where a client connects: a TCP address or a UNIX socket path, and for
    TLS the context and the host name the server's certificate must match.

    @ivar description: the endpoint string it was read from.
    @ivar address: C{(host, port)} for TCP and TLS, L{None} for UNIX.
    @ivar path: the UNIX socket's path, or L{None}.
    @ivar timeout: seconds to wait for the connection (and TLS handshake).
    @ivar sslContext: an C{ssl.SSLContext} for C{tls:}, else L{None}.
    @ivar serverHostname: the name checked against the server's
        certificate (C{tls:}'s host), else L{None}.
    """

    description: str
    address: tuple[str, int] | None
    path: str | None
    timeout: float
    sslContext: ssl.SSLContext | None = None
    serverHostname: str | None = None

    def connect(self) -> socket.socket:
        """
        A connected, blocking socket (TLS handshake done for C{tls:}).

        @raise OSError: the connection or the handshake failed
            (C{ssl.SSLError} and C{ssl.SSLCertVerificationError} are
            C{OSError}s).
        """
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
        else:
            assert self.address is not None
            sock = socket.create_connection(self.address, timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.sslContext is None:
            return sock
        try:
            return self.sslContext.wrap_socket(
                sock, server_hostname=self.serverHostname
            )
        except BaseException:
            sock.close()
            raise


def _number(kind: str, name: str, value: str, cast: type[float] | type[int]) -> float:
    try:
        number = cast(value)
    except ValueError:
        raise ValueError(
            f"{kind}: endpoint: {name}={value!r} is not a number"
        ) from None
    if number <= 0:
        raise ValueError(f"{kind}: endpoint: {name} must be positive, not {value!r}")
    return number


def _hostPort(
    kind: str, positional: list[str], keywords: dict[str, str]
) -> tuple[str, int]:
    host = keywords.get("host", positional[1] if len(positional) > 1 else "")
    port = keywords.get("port", positional[2] if len(positional) > 2 else "")
    if not host or not port:
        raise ValueError(f"{kind}: endpoint needs a host and a port ({kind}:HOST:PORT)")
    number = int(_number(kind, "port", port, int))
    if number > 65535:
        raise ValueError(f"{kind}: endpoint: port {port} is out of range")
    return host.strip("[]"), number


def tlsContext(
    trustRoots: str | None, certificate: str | None, privateKey: str | None
) -> ssl.SSLContext:
    """
    A client TLS context as Twisted's C{tls:} endpoint builds one: the
    server's certificate checked against every C{*.pem} file in the
    directory C{trustRoots} (a single PEM file works too; the system's CAs
    without it) and its host name checked; the client's own certificate
    and key presented when given (the key defaults to the certificate's
    file).

    @raise ValueError: a file is missing or holds no usable certificate or
        key; the message names it.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if trustRoots is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        root = Path(trustRoots)
        files = sorted(root.glob("*.pem")) if root.is_dir() else [root]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"tls: endpoint: trustRoots={trustRoots}: no *.pem file")
        for file in files:
            try:
                context.load_verify_locations(cafile=os.fspath(file))
            except (OSError, ssl.SSLError) as e:
                raise ValueError(
                    f"tls: endpoint: trustRoots: {file}: not a PEM certificate ({e})"
                ) from None
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, privateKey)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"tls: endpoint: certificate={certificate} privateKey="
                f"{privateKey or certificate}: {e}"
            ) from None
    elif privateKey is not None:
        raise ValueError("tls: endpoint: privateKey= needs certificate=")
    return context


def parseEndpoint(description: str) -> SocketTarget:
    """
    Read a client endpoint string (see the module docstring).

    @raise ValueError: it is not one of the forms these clients take, or
        its TLS files cannot be used; the message says which part.
    """
    positional, keywords = splitDescription(description)
    kind = positional[0]
    allowed = _KEYWORDS.get(kind)
    if allowed is None:
        raise ValueError(
            f"endpoint {description!r}: the clients without Twisted take"
            " tcp:, tls: and unix: endpoints only"
        )
    unknown = sorted(set(keywords) - allowed)
    if unknown:
        raise ValueError(
            f"{kind}: endpoint: {', '.join(unknown)} not supported here"
            f" (only {', '.join(sorted(allowed))})"
        )
    timeout = DEFAULT_CONNECT_TIMEOUT
    if "timeout" in keywords:
        timeout = _number(kind, "timeout", keywords["timeout"], float)
    if kind == "unix":
        path = keywords.get("path", positional[1] if len(positional) > 1 else "")
        if not path or len(positional) > 2:
            raise ValueError("unix: endpoint needs one path (unix:PATH)")
        return SocketTarget(description, None, path, timeout)
    if len(positional) > 3:
        raise ValueError(
            f"{kind}: endpoint: too many fields ({kind}:HOST:PORT, then name=value)"
        )
    address = _hostPort(kind, positional, keywords)
    if kind == "tcp":
        return SocketTarget(description, address, None, timeout)
    hostname = address[0]
    if "endpoint" in keywords:
        inner, innerKeywords = splitDescription(keywords["endpoint"])
        if inner[0] != "tcp" or set(innerKeywords) - {"host", "port"}:
            raise ValueError(
                "tls: endpoint: endpoint= must be tcp:ADDRESS:PORT"
                " (colons escaped: endpoint=tcp\\:10.0.0.5\\:12345)"
            )
        address = _hostPort("tcp", inner, innerKeywords)
    context = tlsContext(
        keywords.get("trustRoots"),
        keywords.get("certificate"),
        keywords.get("privateKey"),
    )
    return SocketTarget(description, address, None, timeout, context, hostname)
