"""
Endpoint description strings (C{"tcp:host=H:port=P"}, C{"tls:H:P:..."},
C{"unix:path=..."}): split, quoted, and named for logs and stats.

Twisted parses them itself when it builds an endpoint; its parser is
private, so this small one reads the fields we need beforehand.
"""

from __future__ import annotations


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
