"""
A L{taskservice._session.Session}'s authentication (C{$/auth} before
anything else, when a token is required) and the encoding of what it
writes: the root of its bases. No I/O.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _json, _jsonrpc
from taskservice._jsonrpc import Batch, Invalid, Request
from taskservice._sessionhost import Access, SessionConfig, SessionHost
from taskservice.errors import (
    InternalError,
    TaskServiceError,
    Unauthorised,
    toWireError,
)
from taskservice.wire import AUTH

_log = Logger(namespace="taskservice._session")


class Authentication:
    """
    The session's state these paths share, its authentication and its
    output.
    """

    host: SessionHost
    config: SessionConfig
    access: Access
    maxLineLength: int
    _lost: bool
    _maxBatch: int

    # -- authentication --------------------------------------------------------

    def _authenticate(self, data: bytes) -> None:
        """
        A message before the session has authenticated: only C{$/auth} with
        the right token (alone, not in a batch) opens it; anything else
        refuses it.
        """
        if self.access is Access.REFUSED:
            return
        message = _jsonrpc.parseLine(data, self._maxBatch)
        if isinstance(message, Request) and message.method == AUTH:
            assert self.config.token is not None
            if self.config.token.matches(authToken(message)):
                self.access = Access.OPEN
                self.maxLineLength = self.config.maxLineLength
                if message.seed:
                    self._send(self._encode(True))
                elif not message.notification:
                    self._write(_jsonrpc.resultObject(message.id, True))
                return
            self._refuse(message, "wrong or missing token")
        else:
            self._refuse(message, "authenticate first: send $/auth with the token")

    def _refuse(self, message: Request | Invalid | Batch | None, why: str) -> None:
        """
        Answer -32005 (in the dialect of C{message}, with its id if it had
        one) and close the connection once the reply is written.
        """
        self.access = Access.REFUSED
        error = Unauthorised("unauthorised", why)
        self.host.error(error, refused=True, answered=True)
        if isinstance(message, Request) and message.seed:
            self._send(self._encode({"error": error.toWire()}))
        else:
            requestId = (
                message.id
                if isinstance(message, Request | Invalid)
                and not (isinstance(message, Request) and message.notification)
                else None
            )
            self._write(_jsonrpc.errorObject(requestId, error))
        self.host.refuseConnection(why)

    # -- output ----------------------------------------------------------------

    def _wireError(self, failure: Failure) -> TaskServiceError:
        assert failure.value is not None
        error = toWireError(failure.value)
        if isinstance(error, InternalError) and error is not failure.value:
            _log.failure("unexpected error handling a call", failure)
        return error

    def _encode(self, message: Any) -> bytes:
        try:
            return _json.dumps(message)
        except (TypeError, ValueError):
            _log.failure("could not encode a response")
            requestId = message.get("id") if isinstance(message, dict) else None
            return _json.dumps(
                _jsonrpc.errorObject(
                    requestId if _encodable(requestId) else None,
                    InternalError(
                        "internal error", "the response could not be encoded"
                    ),
                )
            )

    def _write(self, message: Any) -> None:
        try:
            data = _json.dumps(message)
        except (TypeError, ValueError):
            data = self._encode(message)
        if not self._lost:
            self.host.send(data)

    def _send(self, data: bytes) -> None:
        if not self._lost:
            self.host.send(data)


def authToken(request: Request) -> object:
    """
    The token a C{$/auth} request carries: C{{"token": "..."}}.
    """
    return request.kwargs.get("token") if request.kwargs else None


def _encodable(value: Any) -> bool:
    try:
        _json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
