"""
Endpoint description strings (C{"tcp:host=H:port=P"}, C{"tls:H:P:..."},
C{"unix:path=..."}): split, quoted, and named for logs and stats.

Twisted parses them itself when it builds an endpoint; its parser is
private, so this small one reads the fields we need beforehand. Importing
this module loads no Twisted (the clients without a reactor use it): the
checks of C{twistd taskservice}'s endpoints import what they raise.
"""

from __future__ import annotations

from taskservice._defaults import DEFAULT_BACKLOG


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    An endpoint description's positional and keyword arguments, unescaped
    (C{\\:} is a colon, C{\\\\} a backslash), its type first.
    """
    positional: list[str] = []
    keywords: dict[str, str] = {}
    current: list[str] = []
    key: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == "=" and key is None and positional:
            key, current = "".join(current), []
        elif char == ":":
            value = "".join(current)
            if key is None:
                positional.append(value)
            else:
                keywords[key] = value
            current, key = [], None
        else:
            current.append(char)
    value = "".join(current)
    if key is None:
        positional.append(value)
    else:
        keywords[key] = value
    return positional, keywords


def displayName(description: str) -> str:
    """
    A client endpoint description shortened to what identifies the server,
    for logs, stats and metric labels: C{"tls:tasks.example.com:7000"} for
    C{"tls:tasks.example.com:7000:trustRoots=/etc/ca:privateKey=..."}
    (paths to keys and certificates left out), C{"unix:/run/tasks.sock"}.
    """
    positional, keywords = splitDescription(description)
    kind = positional[0]
    if kind == "unix":
        path = keywords.get("path", positional[1] if len(positional) > 1 else "")
        return f"unix:{path}"
    host = keywords.get("host", positional[1] if len(positional) > 1 else "")
    port = keywords.get("port", positional[2] if len(positional) > 2 else "")
    if ":" in host:
        host = f"[{host}]"
    return f"{kind}:{host}:{port}"


# -- ports: read in one place ----------------------------------------------------


def portNumber(text: str, *, zero: bool = True) -> int | None:
    """
    C{text} as a TCP port number (0, "any free port", only with C{zero}),
    or L{None} if it is not one.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    port = int(text)
    if port > 65535 or (port == 0 and not zero):
        return None
    return port


def portOf(description: str) -> str:
    """
    The port field of a C{tcp:}, C{tcp6:} or C{ssl:} server description,
    as given (by name or first by position); C{""} if none.
    """
    positional, keywords = splitDescription(description)
    return keywords.get("port", positional[1] if len(positional) > 1 else "")


def interfaceOf(description: str) -> str:
    """
    The interface of a server description: by name, or (for C{tcp:}
    only, as C{tcp:PORT:INTERFACE}) second by position; else C{""}.
    """
    positional, keywords = splitDescription(description)
    byPosition = positional[2] if positional[0] == "tcp" and len(positional) > 2 else ""
    return keywords.get("interface", byPosition)


BACKLOG_POSITION = {"tcp": 3, "tcp6": 2, "unix": 3, "ssl": 6}
"""For the endpoint types that take a C{backlog}, its place among the
positional arguments (the type counted)."""


def withBacklog(listen: str, backlog: int) -> str:
    """
    C{listen} with C{:backlog=BACKLOG} added when it is a C{tcp:},
    C{tcp6:}, C{ssl:} or C{unix:} server endpoint that does not give a
    backlog itself, by name or by position; else C{listen} unchanged.
    """
    positional, keywords = splitDescription(listen)
    position = BACKLOG_POSITION.get(positional[0])
    if position is None or "backlog" in keywords or len(positional) > position:
        return listen
    return f"{listen}:backlog={backlog}"


# -- checks of twistd taskservice's endpoints (usage errors) ----------------


def tcpAddress(option: str, description: str) -> tuple[str, int]:
    """
    The address a client uses to reach the TCP server endpoint
    C{description} (a wildcard interface becomes loopback).
    """
    from twisted.python import usage

    positional, _ = splitDescription(description)
    if positional[0] != "tcp":
        raise usage.UsageError(f"{option} {description!r} must be a tcp: endpoint")
    port = portNumber(portOf(description))
    if port is None:
        raise usage.UsageError(f"{option} {description!r}: no valid TCP port")
    host = interfaceOf(description)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, port


def busyAddress(description: str) -> str | None:
    """
    For a C{tcp:}, C{tcp6:} or C{ssl:} server endpoint with a fixed port,
    its address if another socket is listening there (a bind as Twisted's
    own, with C{SO_REUSEADDR}, fails with C{EADDRINUSE}); else L{None}.
    """
    import errno
    import socket

    kind = splitDescription(description)[0][0]
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    port = portNumber(portOf(description), zero=False)
    if port is None:
        return None
    interface = interfaceOf(description) or ("::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                host = f"[{interface}]" if ":" in interface else interface or "*"
                return f"{host}:{port}"
    return None


def checkListen(listen: str) -> None:
    """
    A usage error naming C{--listen} if it is not a server endpoint this
    process could listen on (a TCP port out of range, a UNIX socket without
    a path, a description Twisted cannot parse).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.python import usage

    positional, keywords = splitDescription(listen)
    if positional[0] == "tcp":
        tcpAddress("--listen", listen)
    elif positional[0] == "unix" and not keywords.get(
        "address", positional[1] if len(positional) > 1 else ""
    ):
        raise usage.UsageError(f"--listen {listen!r}: no UNIX socket path")
    try:
        serverFromString(reactor, listen)
    except Exception as e:  # whatever the endpoint's parser raises
        raise usage.UsageError(f"--listen {listen!r}: {e}") from None


def tcpListenAddress(listen: str, option: str) -> tuple[int, str, int]:
    """
    The port, interface and backlog of C{--listen} when C{option}
    (--tls-cert, --reuse-port) makes the listener here: it must be a plain
    C{tcp:} endpoint.
    """
    from twisted.python import usage

    positional, keywords = splitDescription(listen)
    args = positional[1:]
    port = keywords.pop("port", args[0] if args else "")
    interface = keywords.pop("interface", args[1] if len(args) > 1 else "")
    backlog = keywords.pop(
        "backlog", args[2] if len(args) > 2 else str(DEFAULT_BACKLOG)
    )
    if positional[0] != "tcp" or keywords or len(args) > 3:
        raise usage.UsageError(
            f"with {option}, --listen must be a plain tcp: endpoint"
            f" (tcp:PORT:interface=ADDRESS), not {listen!r}"
        )
    number = portNumber(port)
    if number is None:
        raise usage.UsageError(f"--listen {listen!r}: no valid TCP port")
    if not (backlog.isascii() and backlog.isdigit()):
        raise usage.UsageError(f"--listen {listen!r}: no valid backlog")
    return number, interface, int(backlog)
