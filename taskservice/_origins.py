"""
Websocket origins: parsing them and comparing them with the C{Host} a page
was served from. Standard library only (the command line uses it too).
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def parseOrigin(value: str) -> tuple[str, str, int] | None:
    """
    C{(scheme, host, port)} of an origin such as C{https://example.com}, with
    the scheme's default port filled in; L{None} unless it is an http or
    https origin with a host.
    """
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return (
        scheme,
        parts.hostname.lower(),
        _DEFAULT_PORTS[scheme] if port is None else port,
    )


def sameOrigin(origin: tuple[str, str, int], host: str) -> bool:
    """
    Whether C{origin} names the host and port of the C{Host} header C{host}
    (a C{Host} without a port means the default port of the origin's scheme,
    as when a TLS proxy stands in front).
    """
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname:
        return False
    scheme, originHost, originPort = origin
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    return (parts.hostname.lower(), port) == (originHost, originPort)
