"""
What the blocking and the asyncio clients (L{taskservice.sync},
L{taskservice.aio}) share besides L{taskservice._clientcore}: their
defaults, the options of a submit (also the Twisted client's), the token
they send, how a failed connection reads, and the parts of their
C{Client} and C{Job} that do not wait. No I/O, no Twisted.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any, TypedDict

from taskservice._auth import Token, readTokenFile
from taskservice._clientcore import CoreState
from taskservice._endpoints import displayName
from taskservice._sockets import parseEndpoint
from taskservice.errors import (
    JobNotFound,
    JournalUnavailable,
    Unavailable,
    Unreachable,
)

DEFAULT_ENDPOINT = "tcp:127.0.0.1:12345"
"""Where the clients connect by default: C{twistd taskservice}'s own."""

CLOSE_WAIT = 5.0
"""Seconds C{close()} waits for what was sent to be written."""

RESULT, ERROR, PROGRESS = 0, 1, 2
"""The kinds of event a waiting caller is handed: C{(kind, value)}."""

LIVE = (CoreState.OPEN, CoreState.AUTHENTICATING)
"""The core's states in which a connection takes calls."""


class SubmitOptions(TypedDict, total=False):
    """
    The options of a C{$/submit} (see docs/jobs), beside the method and its
    params: the keywords of every client's C{submit()} (the blocking, the
    asyncio and the Twisted one), declared once. One left out or L{None} is
    the server's default; L{taskservice.wire.submitParams} puts the others
    on the wire (and refuses a name that is not here).
    """

    key: str | None
    """Idempotency key: one job per key."""
    delay: float | None
    """Seconds before it may run."""
    at: str | None
    """When it may run (ISO 8601 with a time zone)."""
    retries: int | None
    """Runs tried again after a failure."""
    backoff: float | None
    """The first retry's delay, seconds."""
    timeout: float | None
    """Each run's deadline, seconds."""


class ClientBase:
    """
    What the blocking and the asyncio C{Client} hold alike: the endpoint
    (parsed, so a bad one raises L{ValueError} at once), the token, and
    whether C{close()} was called.
    """

    _kind = "taskservice client"
    """How C{repr} names the class (its public dotted name)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: Token | str | None = None,
        token_file: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._target = parseEndpoint(endpoint)
        self._token = clientToken(token, token_file)
        self._closed = False

    def __repr__(self) -> str:
        return f"<{self._kind} {displayName(self.endpoint)}>"


class JobBase:
    """
    What the blocking and the asyncio C{Job} hold alike.

    @ivar id: the job's id: keep it, the job outlives this process.
    @ivar existing: C{True} when C{submit} found a job holding its key.
    """

    def __init__(self, job_id: str, *, existing: bool = False) -> None:
        self.id = job_id
        self.existing = existing

    def __repr__(self) -> str:
        return f"<Job {self.id}>"


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


SSL_CLUES = [
    (
        "certificate verify failed",
        "the task server's certificate is not signed by a CA in trustRoots",
    ),
    (
        "certificate required",
        "the task server requires a client certificate (certificate= and privateKey=)",
    ),
    ("unknown ca", "the task server does not trust our client certificate's CA"),
    ("bad certificate", "the task server refused our client certificate"),
    ("certificate expired", "a certificate has expired"),
]
"""Words in OpenSSL's message of a TLS failure, and what they mean (the
Twisted client's L{taskservice._tls.describeTLSFailure} says the same)."""

_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def describeConnectError(error: BaseException) -> str:
    """
    Why a connection attempt failed, in words (TLS failures say so).
    """
    if (
        isinstance(error, ssl.SSLCertVerificationError)
        and error.verify_code == _HOSTNAME_MISMATCH
    ):
        return (
            "TLS: host name mismatch: the task server's certificate is not"
            f" valid for the name connected to ({error.verify_message})"
        )
    if isinstance(error, ssl.SSLError):
        detail = str(error)
        plain = detail.replace("_", " ").lower()
        for clue, words in SSL_CLUES:
            if clue in plain:
                return f"TLS: {words} ({detail})"
        return f"TLS: handshake failed ({detail})"
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


def isFollowingError(error: BaseException) -> bool:
    """
    Whether C{error} from C{$/attach} is about following the job (an
    unknown id, the connection, the journal) rather than the job's outcome.
    """
    return isinstance(error, JobNotFound | JournalUnavailable | Unavailable)


def logError(template: str, **fields: Any) -> None:
    """A L{taskservice._clientcore.ClientShell.logError} for L{log}."""
    log.error(template.format(**fields))
