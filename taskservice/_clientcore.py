"""
The task protocol's client side without I/O: no sockets, no Deferreds, no
Twisted.

A L{ClientCore} is one connection's worth of client: request ids, the calls
in flight, progress, cancel and abandon, the C{$/auth} step, and what each
call becomes on an error, a refusal or a lost connection. A shell owns the
I/O: it tells the core what happened and asks it for calls; the core answers
through the shell's L{ClientShell} methods (lines to send, and each call's
outcome, named by the opaque handle the shell gave with the call).
L{taskservice.client.TaskClientProtocol} is the Twisted shell; a blocking or
an asyncio client is another shell of the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from taskservice import _json, _jsonrpc
from taskservice._auth import Token
from taskservice.errors import (
    ErrorCode,
    ServerLost,
    TaskServiceError,
    Unauthorised,
    Unreachable,
    fromWireError,
)
from taskservice.wire import (
    AUTH,
    CANCEL,
    CLIENT_MAX_LINE,
    NO_OPTIONS,
    ONLY_IF_QUEUED,
    PROGRESS,
    CallOptions,
    LineSplitter,
    LineTooLong,
    callOptions,
)

ProgressCallback = Callable[[dict[str, Any]], object]

Handle = TypeVar("Handle")
_Handle_contra = TypeVar("_Handle_contra", contravariant=True)

_AUTH_HINT = (
    " (before the server answered $/auth: a TLS port, which needs tls:, or not"
    " a task server?)"
)


class ClientShell(Protocol[_Handle_contra]):
    """
    What a L{ClientCore} needs from the I/O around it. The core calls these
    from inside its own methods; a shell may call the core again from them
    (a callback making another call, say).
    """

    def sendLine(self, line: bytes) -> None:
        """Send C{line} (ending with C{\\n}) after every line sent before."""

    def closeConnection(self) -> None:
        """Close the connection once what was sent has been written."""

    def callSucceeded(self, handle: _Handle_contra, result: Any) -> None:
        """The call behind C{handle} returned C{result} (decoded JSON)."""

    def callFailed(self, handle: _Handle_contra, error: TaskServiceError) -> None:
        """
        The call behind C{handle} failed: the server's error as its exception
        (L{taskservice.errors}), L{Unauthorised} when the server refused this
        client, L{ServerLost} when the connection was lost.
        """

    def callProgressed(self, handle: _Handle_contra, update: dict[str, Any]) -> None:
        """The call reported progress: C{$/progress}'s params but C{id}."""

    def accepted(self) -> None:
        """The server accepted this client's C{$/auth}."""

    def logError(self, template: str, **fields: Any) -> None:
        """
        Something from the server the core could not use, or a refusal, as a
        PEP 3101 C{template} over C{fields} (what C{twisted.logger} takes).
        """


class CoreState(Enum):
    """A connection's life, as its client sees it."""

    IDLE = "idle"
    """No connection yet: calls fail with L{Unreachable}."""
    AUTHENTICATING = "authenticating"
    """C{$/auth} sent and not answered: calls go out right behind it."""
    OPEN = "open"
    """Calls go out and are answered."""
    REFUSED = "refused"
    """The server refused C{$/auth}: every call fails with C{refusal}."""
    LOST = "lost"
    """The connection is gone: calls fail (with C{refusal}, if any)."""


_OPEN = CoreState.OPEN
_AUTHENTICATING = CoreState.AUTHENTICATING
_UNAUTHORISED = ErrorCode.UNAUTHORISED


class ClientCore(Generic[Handle]):
    """
    One connection of a task protocol client, without I/O.

    @param shell: the I/O around the core (see L{ClientShell}).
    @param authenticate: send C{$/auth} first (always so with a C{token}).
        If the server refuses it, every call in flight and every later call
        fails with L{Unauthorised}, and the connection is closed. A server
        without C{$/auth} (-32601) is fine when there is no token to prove.
    @param token: the server's shared secret, or L{None}.
    @param maxLineLength: the longest response line L{receiveData} accepts;
        past it, the connection is closed.

    @ivar state: the connection's L{CoreState}.
    @ivar ready: C{True} once the server accepted C{$/auth} (at once when
        not authenticating); it stays so after the connection is lost.
    @ivar refusal: the L{Unauthorised} error the server refused with, or
        L{None}.
    @ivar lostReason: why the connection was lost, in words, once it is.
    """

    def __init__(
        self,
        shell: ClientShell[Handle],
        *,
        authenticate: bool = False,
        token: Token | str | None = None,
        maxLineLength: int = CLIENT_MAX_LINE,
    ) -> None:
        self._shell = shell
        self._token = Token(token) if isinstance(token, str) else token
        self._authenticate = authenticate or self._token is not None
        self._authId: int | None = None
        self._splitter = LineSplitter(maxLineLength)
        self.state = CoreState.IDLE
        self.ready = not self._authenticate
        self.refusal: TaskServiceError | None = None
        self.lostReason: str | None = None
        self._pending: dict[int, Handle] = {}
        # Calls cancelled or abandoned whose one late answer is expected.
        self._givenUp: set[int] = set()
        self._nextId = 1

    @property
    def inFlight(self) -> int:
        """The calls sent and not answered yet."""
        return len(self._pending)

    @property
    def pending(self) -> Mapping[int, Handle]:
        """The calls in flight: each handle by its request id."""
        return self._pending

    # -- what the shell tells the core -------------------------------------------

    def connectionMade(self) -> None:
        """The connection is up: C{$/auth} goes first when authenticating."""
        if not self._authenticate:
            self.state = CoreState.OPEN
            return
        self.state = CoreState.AUTHENTICATING
        self._authId = self._nextId
        self._nextId += 1
        params = None if self._token is None else {"token": self._token.reveal()}
        self._shell.sendLine(
            _jsonrpc.line(_jsonrpc.requestObject(self._authId, AUTH, params))
        )

    def receiveData(self, data: bytes) -> None:
        """
        Bytes from the connection, for shells that read bytes rather than
        lines: split into lines (any length up to C{maxLineLength}).
        """
        splitter = self._splitter
        whole = splitter.wholeLine(data)
        if whole is not None:
            self.receiveLine(whole)
            return
        splitter.feed(data)
        while (line := splitter.nextLine()) is not None:
            if isinstance(line, LineTooLong):
                self.lineTooLong(splitter.maxLength)
            else:
                self.receiveLine(line)

    def receiveLine(self, line: bytes) -> None:
        """
        One line from the server, without its C{\\n}: a response, a batch of
        them, or C{$/progress}.
        """
        try:
            message = _json.loads(line)
        except _json.DecodeError as e:
            self._shell.logError(
                "undecodable line from the task server: {error}", error=e
            )
            return
        if type(message) is list:
            for item in message:
                self._receiveMessage(item)
        else:
            self._receiveMessage(message)

    def lineTooLong(self, limit: int) -> None:
        """
        The server sent a line longer than C{limit}, the most the shell (or
        L{receiveData}) accepts: the connection is closed.
        """
        self._shell.logError(
            "a response longer than {limit} bytes; closing the connection",
            limit=limit,
        )
        self._shell.closeConnection()

    def connectionLost(self, reason: str, *, explained: bool = False) -> None:
        """
        The connection is gone: every call in flight fails with
        L{ServerLost} carrying C{reason}.

        @param explained: C{reason} already says what went wrong (a TLS
            failure, say); otherwise, when C{$/auth} was not answered yet, a
            guess at the cause is added to it.
        """
        if not explained and self.state is CoreState.AUTHENTICATING:
            reason += _AUTH_HINT
        self.state = CoreState.LOST
        self.lostReason = reason
        pending, self._pending = self._pending, {}
        for handle in pending.values():
            self._shell.callFailed(
                handle,
                ServerLost("connection to the task server lost", {"reason": reason}),
            )

    # -- what the shell asks of the core ----------------------------------------

    def request(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        handle: Handle,
        *,
        options: CallOptions = NO_OPTIONS,
        timeout: float | None = None,
    ) -> int:
        """
        Send a call of C{method} with C{params} (as they go on the wire: a
        list, a dict or L{None}); its outcome will name C{handle}.

        @param options: how the call is to run (L{CallOptions}), sent as
            the request's members beside C{"method"}.
        @param timeout: shorthand for C{options=CallOptions(timeout=...)}.
        @return: the call's request id, for L{cancel} and L{abandon}.
        @raise TaskServiceError: L{Unauthorised} when the server refused this
            client, L{Unreachable} when there is no connection; the call was
            not sent.
        @raise TypeError: C{params} are not JSON-serialisable.
        """
        state = self.state
        if state is not _OPEN and state is not _AUTHENTICATING:
            if self.refusal is not None:
                raise copyError(self.refusal)
            raise Unreachable("not connected to the task server")
        requestId = self._nextId
        self._nextId += 1
        message = _jsonrpc.requestObject(
            requestId, method, list(params) if isinstance(params, tuple) else params
        )
        if timeout is not None:
            options = callOptions(options, timeout)
        if options is not NO_OPTIONS:
            message.update(options.members())
        try:
            data = _jsonrpc.line(message)
        except (TypeError, ValueError) as e:
            raise TypeError(f"params are not JSON-serialisable: {e}") from None
        self._pending[requestId] = handle
        self._shell.sendLine(data)
        return requestId

    def cancel(self, requestId: int) -> bool:
        """
        Cancel a call in flight: C{$/cancelRequest} asks the server to drop
        it from its queue or stop it where it runs. The call's outcome is
        not reported (the shell fails it itself); a late answer is ignored.

        @return: whether the call was in flight.
        """
        return self._giveUp(requestId, {"id": requestId})

    def abandon(self, requestId: int) -> bool:
        """
        Give up on a call without stopping it if it already runs
        (C{$/cancelRequest} with C{onlyIfQueued}): for a caller that is going
        away. As with L{cancel}, its outcome is not reported.

        @return: whether the call was in flight.
        """
        return self._giveUp(requestId, {"id": requestId, ONLY_IF_QUEUED: True})

    # -- inside ------------------------------------------------------------------

    def _giveUp(self, requestId: int, params: dict[str, Any]) -> bool:
        if self._pending.pop(requestId, None) is None:
            return False
        self._givenUp.add(requestId)
        self._shell.sendLine(_jsonrpc.line(_jsonrpc.notificationObject(CANCEL, params)))
        return True

    def _receiveMessage(self, message: Any) -> None:
        if type(message) is not dict:
            self._shell.logError(
                "unexpected message from the task server: {m!r}", m=message
            )
            return
        if message.get("method") == PROGRESS:
            params = message.get("params")
            if type(params) is dict:
                callId = params.get("id")
                handle = self._pending.get(callId) if type(callId) is int else None
                if handle is not None:
                    update = {k: v for k, v in params.items() if k != "id"}
                    self._shell.callProgressed(handle, update)
            return
        requestId = message.get("id")
        if self.state is not _OPEN:
            if self.state is _AUTHENTICATING and (
                requestId == self._authId
                or (requestId is None and _errorCode(message) == _UNAUTHORISED)
            ):
                self._authAnswered(message)
                return
            if self.state is CoreState.REFUSED:
                return
        handle = self._pending.pop(requestId, None) if type(requestId) is int else None
        if handle is None:
            if type(requestId) is int and requestId in self._givenUp:
                # The one late answer to a call we cancelled or abandoned.
                self._givenUp.discard(requestId)
            elif "error" in message:
                self._shell.logError(
                    "error from the task server for no call of ours: {error!r}",
                    error=fromWireError(message["error"]),
                )
        elif "error" in message:
            self._shell.callFailed(handle, fromWireError(message["error"]))
        else:
            self._shell.callSucceeded(handle, message.get("result"))

    def _authAnswered(self, message: dict[str, Any]) -> None:
        """
        The server's answer to our C{$/auth}: C{true} opens the connection;
        anything else refuses it (a server of a version without C{$/auth},
        -32601, is fine when we have no token to prove).
        """
        self._authId = None
        error = message.get("error")
        refusal = fromWireError(error) if error is not None else None
        if (error is None and message.get("result") is True) or (
            self._token is None
            and refusal is not None
            and refusal.code == ErrorCode.METHOD_NOT_FOUND
        ):
            self.state = CoreState.OPEN
            self.ready = True
            self._shell.accepted()
            return
        if not isinstance(refusal, Unauthorised):
            refusal = Unauthorised(
                "unauthorised", {"reason": "the task server did not accept $/auth"}
            )
        self.state = CoreState.REFUSED
        self.refusal = refusal
        self._shell.logError(
            "the task server refused this client: {code} {message} ({detail})",
            code=int(refusal.code),
            message=refusal.message,
            detail=refusal.data,
        )
        pending, self._pending = self._pending, {}
        for handle in pending.values():
            self._shell.callFailed(handle, copyError(refusal))
        self._shell.closeConnection()


def copyError(error: TaskServiceError) -> TaskServiceError:
    """A fresh exception like C{error}, for one more caller."""
    copy = type(error)(error.message, error.data)
    copy.code = error.code
    return copy


def _errorCode(message: dict[str, Any]) -> object:
    error = message.get("error")
    return error.get("code") if isinstance(error, dict) else None
