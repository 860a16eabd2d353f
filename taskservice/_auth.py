"""
Shared-secret tokens for the task protocol: the secret as a value that never
shows itself, and reading it from a file.

A connection to a task server that has a token proves it knows the token
with C{$/auth} before anything else (see L{taskservice.server}). Clients
without Twisted use L{Token} too, so this module imports no Twisted (but for
the warning L{readTokenFile} may log).
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Callable

from taskservice.wire import AUTH, PRE_AUTH_MAX_LINE

__all__ = ["AUTH", "MAX_TOKEN_FILE", "PRE_AUTH_MAX_LINE", "Token", "readTokenFile"]

MAX_TOKEN_FILE = 4096
"""The largest token file read, in bytes: a token is a short secret."""


class Token:
    """
    A shared secret. It compares in constant time (L{hmac.compare_digest} on
    the UTF-8 bytes) and its C{repr} and C{str} never show it, so it stays
    out of logs, tracebacks and error replies.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a token must not be empty")
        self._secret = secret.encode("utf-8")

    def matches(self, candidate: object) -> bool:
        """
        Whether C{candidate} (anything a client sent) is this token.
        """
        if not isinstance(candidate, str):
            return False
        # "surrogatepass": JSON may carry lone surrogates; they never match.
        return hmac.compare_digest(
            candidate.encode("utf-8", "surrogatepass"), self._secret
        )

    def reveal(self) -> str:
        """
        The secret itself, to send it (and for nothing else).
        """
        return self._secret.decode("utf-8")

    def __repr__(self) -> str:
        return "<Token (hidden)>"

    __str__ = __repr__


def readTokenFile(path: str, warn: Callable[[str], object] | None = None) -> Token:
    """
    The token in the file at C{path}: its text (UTF-8) without leading and
    trailing whitespace, on one line.

    @raise ValueError: if the file cannot be read, is empty (or blank), is
        not UTF-8, is larger than L{MAX_TOKEN_FILE} or holds more than one
        line. The message names the file, never its content.

    A file that others than its owner may read or write is used, with a
    warning logged (to C{warn} when given, a function of the warning in
    words, else to C{twisted.logger}): secrets mounted into containers
    (Docker, Kubernetes) are often mode 0644 in a container where nobody
    else runs.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ValueError(f"token file {path}: not a regular file")
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise ValueError(f"token file {path}: {e.strerror or e}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise ValueError(f"token file {path}: larger than {MAX_TOKEN_FILE} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"token file {path}: not UTF-8 text") from None
    if not text:
        raise ValueError(f"token file {path}: empty")
    if "\n" in text or "\r" in text:
        raise ValueError(f"token file {path}: more than one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        if warn is not None:
            warn(
                f"token file {path} is accessible to group or others"
                f" (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
            return Token(text)
        from twisted.logger import Logger

        Logger(namespace=__name__).warn(
            "token file {path} is accessible to group or others (mode {mode:04o}):"
            " chmod 600 it",
            path=path,
            mode=stat.S_IMODE(mode),
        )
    return Token(text)
