"""
The less common paths of a L{taskservice._session.Session}, kept apart from
its lean call lane: batches, the Workerman FAQ dialect's ordered replies,
the C{$/} methods (C{$/cancelRequest}, C{$/auth}, C{$/stats}, the job
methods), authentication, and the encoding of what it writes. No I/O.

L{Routes} is a base of L{taskservice._session.Session}: it works on the
session's state, declared here, and calls back into the session's core for
the waiting rule and dispatch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _jsonrpc
from taskservice._jsonrpc import Batch, Invalid, Request
from taskservice._sessionauth import Authentication, authToken
from taskservice._sessionhost import (
    RETRY_AFTER,
    Access,
    Progress,
    Response,
)
from taskservice.errors import (
    Cancelled,
    ErrorCode,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    TaskServiceError,
    TooLarge,
    Unauthorised,
)
from taskservice.wire import AUTH, CANCEL, JOB_METHODS, ONLY_IF_QUEUED, PROGRESS, STATS

if TYPE_CHECKING:
    from taskservice._call import Call

_log = Logger(namespace="taskservice._session")

NOTHING_WAITS: deque[tuple[Request | Batch | Invalid, int]] = deque()
NO_SEED_REPLIES: deque[list[bytes | None]] = deque()
NO_JOB_CALLS: set[Deferred[Any]] = set()
"""A session's queues until it needs its own: shared, empty, never changed."""


class Routes(Authentication):
    """
    The session's paths other than its lean lane (see the module).
    """

    outstanding: int
    waitingBytes: int
    _cancelLane: bool
    _refuseOverflow: bool
    _maxInFlight: int
    _pendingBatches: int
    _inFlight: dict[Any, Any]
    _jobCalls: set[Deferred[Any]]
    _waiting: deque[tuple[Request | Batch | Invalid, int]]
    _seedReplies: deque[list[bytes | None]]

    # -- errors found outside a message -----------------------------------

    def messageTooLong(self, prefix: bytes) -> None:
        """
        A message longer than L{maxLineLength} was dropped; C{prefix} is
        its start (its id, when it leads, is echoed).
        """
        if self.access is Access.REFUSED:
            return
        if self.access is not Access.OPEN:
            self._refuse(None, "authenticate first: send $/auth with the token")
            return
        limit = self.maxLineLength
        requestId = _jsonrpc.leadingId(prefix)
        if requestId in self._inFlight:
            requestId = None
        self.replyError(
            requestId,
            TooLarge(f"line longer than {limit} bytes discarded", {"limit": limit}),
        )

    def replyError(self, requestId: Any, error: TaskServiceError) -> None:
        """
        Answer C{error}, found by the session or its transport (a binary
        websocket message, say), with C{requestId}.
        """
        self.host.error(error, refused=True, answered=True)
        self._write(_jsonrpc.errorObject(requestId, error))

    # -- the session's core (see Session) ------------------------------------

    def _dispatch(self, request: Request, reply: bool) -> Deferred[Response] | Response:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _closeIfDone(self) -> None:
        raise NotImplementedError

    # -- the FAQ dialect -------------------------------------------------------

    def _seedReply(self, start: Callable[[], Deferred[Any]]) -> Deferred[None]:
        """
        Answer with the bare result (or C{{"error": ...}}), in the order the
        lines came.
        """
        # The reply's place is taken before the call starts: starting it may
        # finish other calls (and start the next dialect line) at once.
        slot: list[bytes | None] = [None]
        if self._seedReplies is NO_SEED_REPLIES:
            self._seedReplies = deque()
        self._seedReplies.append(slot)
        outcome = start()

        def done(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                body: Any = {"error": self._wireError(outcome).toWire()}
            else:
                body = outcome
            slot[0] = self._encode(body)
            self._flushSeedReplies()

        return outcome.addBoth(done)

    def _seedAnswered(self, result: object) -> None:
        self._release()

    def _seedDone(self, call: Call, slot: list[bytes | None]) -> None:
        """
        A FAQ-dialect call of the lean lane ended: its bare result (or
        C{{"error": ...}}), in the order the lines came.
        """
        outcome = call.outcome
        assert outcome is not None
        raw = call.resultBytes
        if outcome.error is not None:
            slot[0] = self._encode(
                {"error": self._wireError(Failure(outcome.error)).toWire()}
            )
        elif raw is not None:
            slot[0] = raw
        else:
            slot[0] = self._encode(outcome.value)
        self._flushSeedReplies()
        self._release()

    def _flushSeedReplies(self) -> None:
        replies = self._seedReplies
        while replies and replies[0][0] is not None:
            ready = replies.popleft()[0]
            assert ready is not None
            self._send(ready)

    # -- batches and errors found here -----------------------------------------

    def _batch(self, batch: Batch) -> Deferred[None]:
        """
        Run a batch's requests and write the one reply. (Under the waiting
        rule, all of them were counted; each is released as it ends.)
        """
        counted = not self._refuseOverflow
        replies: list[Deferred[Response]] = []
        for item in batch.items:
            if isinstance(item, Invalid):
                self.host.error(item.error, refused=True, answered=True)
                response: Deferred[Response] | Response = _jsonrpc.errorObject(
                    item.id, item.error
                )
            else:
                response = self._dispatch(item, reply=False)
            if isinstance(response, Deferred):
                replies.append(response)
            else:
                if counted:
                    self._release()
                replies.append(succeed(response))

        def write(responses: list[Response]) -> None:
            answered = [r for r in responses if r is not None]
            if answered:
                self._write(answered)

        return gatherResults(replies).addCallback(write)

    def _batchAnswered(self, result: object) -> None:
        self._pendingBatches -= 1
        self._closeIfDone()

    def _own(self, request: Request, error: TaskServiceError) -> Response:
        """
        An error the session found in C{request}: its response (L{None} for
        a notification, which is only logged).
        """
        if request.notification:
            self.host.error(error, refused=True, answered=False)
            if error.code != ErrorCode.OVERLOADED:
                _log.info(
                    "notification {method} failed: {code} {message}",
                    method=request.method,
                    code=int(error.code),
                    message=error.message,
                )
            return None
        self.host.error(error, refused=True, answered=True)
        return _jsonrpc.errorObject(request.id, error)

    def _overloaded(self, request: Request) -> Response:
        limit = self._maxInFlight
        if request.notification:
            _log.info(
                "notification {method} dropped: the peer has {limit} calls in flight",
                method=request.method,
                limit=limit,
            )
        return self._own(
            request,
            Overloaded("overloaded", {"retryAfter": RETRY_AFTER, "limit": limit}),
        )

    def _notificationDone(self, result: object) -> Response:
        self._release()
        return None

    def _notificationFailed(self, failure: Failure, method: str) -> None:
        error = self._wireError(failure)
        self.host.error(error, refused=False, answered=False)
        _log.info(
            "notification {method} failed: {code} {message}",
            method=method,
            code=int(error.code),
            message=error.message,
        )

    # -- the $/ methods --------------------------------------------------------

    def _call(self, request: Request) -> Deferred[Any]:
        method = request.method
        onProgress = None
        if not request.notification and not request.seed:
            onProgress = self._progressTo(request.id)
        if not method.startswith("$/"):
            return self.host.call(request, onProgress)
        try:
            if method == STATS:
                return self.host.stats()
            if method in JOB_METHODS:
                if request.seed:
                    raise InvalidRequest(
                        "invalid request",
                        "job methods are JSON-RPC only (no FAQ dialect)",
                    )
                return self._jobMethod(request, onProgress)
            if method == CANCEL:
                self._cancel(request)
                return succeed(None)
            if method == AUTH and self.config.answersAuth:
                # Already open: a token check that changes nothing.
                token = self.config.token
                if token is None or token.matches(authToken(request)):
                    return succeed(True)
                raise Unauthorised("unauthorised", "wrong or missing token")
            raise MethodNotFound("method not found", method)
        except TaskServiceError as e:
            self.host.error(e, refused=True, answered=False)
            return fail(e)

    def _jobMethod(
        self, request: Request, onProgress: Progress | None
    ) -> Deferred[Any]:
        d = self.host.jobMethod(request, onProgress)
        if self._jobCalls is NO_JOB_CALLS:
            self._jobCalls = set()
        self._jobCalls.add(d)
        return d.addBoth(self._jobCallEnded, d)

    def _jobCallEnded(self, outcome: Any, d: Deferred[Any]) -> Any:
        self._jobCalls.discard(d)
        return outcome

    def _progressTo(self, requestId: Any) -> Progress:
        """
        Write a task's progress updates as C{$/progress} of C{requestId}.
        """

        def report(update: Any) -> None:
            self._write(
                _jsonrpc.notificationObject(PROGRESS, {**update, "id": requestId})
            )

        return report

    def _cancel(self, request: Request) -> None:
        """
        C{$/cancelRequest}: C{{"id": X}} cancels call X whether it waits or
        runs; with C{"onlyIfQueued": true}, a running call is left to finish
        (what a client that is going away wants).
        """
        target = request.kwargs.get("id") if request.kwargs else None
        if target is None and request.args:
            target = request.args[0]
        onlyIfQueued = bool(request.kwargs.get(ONLY_IF_QUEUED, False))
        if target is None or not _jsonrpc.validId(target):
            raise InvalidParams(
                "invalid params",
                '$/cancelRequest needs {"id": ...} naming a request id',
            )
        d = self._inFlight.get(target)
        if d is not None and not isinstance(d, Deferred):
            # A call of the lean lane.
            d.cancel(onlyIfQueued)
            return
        if d is not None:
            # (A job method given up on is cancelled whatever the flag: an
            # attach detaches, and the job is left as it is.)
            self.host.cancel(d, onlyIfQueued and d not in self._jobCalls)
            return
        if not self._cancelLane:
            # A cancel that waited its turn (in a batch): everything still
            # waiting arrived after it.
            return
        for entry in self._waiting:
            waiting = entry[0]
            if (
                isinstance(waiting, Request)
                and not waiting.notification
                and not waiting.seed
                and waiting.id == target
            ):
                self._waiting.remove(entry)
                self.waitingBytes -= entry[1]
                self._write(_jsonrpc.errorObject(waiting.id, Cancelled()))
                self._closeIfDone()
                return


def weight(message: Request | Batch | Invalid) -> int:
    """
    How many of C{maxInFlight} C{message} takes: one per request of a
    batch, else one.
    """
    return len(message.items) if isinstance(message, Batch) else 1
