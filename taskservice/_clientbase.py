"""
What the blocking and the asyncio clients (L{taskservice.sync},
L{taskservice.aio}) share besides L{taskservice._clientcore}: their
defaults, the token they send, and how a failed connection reads. No I/O,
no Twisted.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from taskservice._auth import Token, readTokenFile
from taskservice.errors import Unreachable

DEFAULT_ENDPOINT = "tcp:127.0.0.1:12345"
"""Where the clients connect by default: C{twistd taskservice}'s own."""

CLOSE_WAIT = 5.0
"""Seconds C{close()} waits for what was sent to be written."""

log = logging.getLogger("taskservice.client")
"""The clients' logger (standard C{logging}: these clients run in programs
without Twisted): what the server sent that could not be used, refusals,
a token file others may read."""


def clientToken(token: Token | str | None, tokenFile: str | None) -> Token | None:
    """
    The token a client sends: C{token}, or the one in C{tokenFile} (see
    L{readTokenFile}; a warning about its mode goes to L{log}).

    @raise ValueError: both are given, or the file cannot be used.
    """
    if tokenFile is not None:
        if token is not None:
            raise ValueError("give token or token_file, not both")
        return readTokenFile(tokenFile, warn=log.warning)
    return Token(token) if isinstance(token, str) else token


def describeConnectError(error: BaseException) -> str:
    """
    Why a connection attempt failed, in words (TLS failures say so).
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: {error.verify_message or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    if isinstance(error, OSError) and error.errno:
        # The same words from socket and asyncio ("Connection refused").
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def unreachable(error: BaseException) -> Unreachable:
    """The error a call gets when its connection could not be made."""
    return Unreachable(
        "the task server is unreachable", {"reason": describeConnectError(error)}
    )


def logError(template: str, **fields: Any) -> None:
    """A L{taskservice._clientcore.ClientShell.logError} for L{log}."""
    log.error(template.format(**fields))
