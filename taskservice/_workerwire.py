"""
A worker's pipes and the frames it answers with: the command pipe read by
the main thread (L{_Commands}), the results pipe written from any thread
(L{_Channel}), the thread that ends the process on the command pipe's
hang-up, and the payloads of C{result} and C{error} frames.

Part of L{taskservice.worker} (which re-exports the public names): the
standard library and msgspec only, like the rest of a worker.
"""

from __future__ import annotations

import os
import select
import threading
import traceback
from typing import TYPE_CHECKING, Any

from taskservice import _json
from taskservice._frames import FrameDecoder, frame

if TYPE_CHECKING:
    from taskservice.worker import Worker


class _Channel:
    """
    Writes frames to the parent's results pipe, file descriptor C{fd}; safe
    to use from any thread.

    A frame that leaves at once is one C{os.write} of the bytes (no buffered
    file in between: on a sequential call that write is the worker's whole
    answer); frames held for a batch (C{autoflush} off) are joined and
    written together by L{flush}, after any held before them.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._held: list[bytes] = []
        self.autoflush = True

    def send(self, message: dict[str, Any], flush: bool = False) -> None:
        self.sendEncoded(_json.dumps(message), flush)

    def sendEncoded(self, payload: bytes, flush: bool = False) -> None:
        """
        Write a frame; it leaves at once with C{flush} or C{autoflush}, else
        with the next L{flush} (answers to a batch of calls leave together).
        """
        data = frame(payload)
        with self._lock:
            held = self._held
            if flush or self.autoflush:
                if held:
                    held.append(data)
                    data = b"".join(held)
                    held.clear()
                _writeAll(self._fd, data)
            else:
                held.append(data)

    def flush(self) -> None:
        with self._lock:
            held = self._held
            if held:
                data = b"".join(held)
                held.clear()
                _writeAll(self._fd, data)


def _writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to the blocking descriptor C{fd} (a write to a pipe
    may take only part of it, when interrupted by a signal).
    """
    sent = os.write(fd, data)
    while sent < len(data):
        sent += os.write(fd, memoryview(data)[sent:])


def _exitOnHangUp(fd: int) -> None:
    """
    Wait for the hang-up of the command pipe C{fd}, and end the process then.

    The parent closed the pipe (to stop us) or died: leave at once, even if
    a task is running, so that workers never outlive their service. A poll
    for no events at all wakes on hang-up (or error) alone, never on the
    commands that the main thread reads from the same pipe (as Linux, where
    the service runs, reports a pipe's hang-up: POLLHUP is always reported).
    """
    poller = select.poll()
    poller.register(fd, 0)
    while True:
        if poller.poll():
            os._exit(0)


def _watchForHangUp(fd: int) -> None:
    threading.Thread(target=_exitOnHangUp, args=(fd,), daemon=True).start()


class _Commands:
    """
    The command pipe, read by the main thread: whole messages, each one
    first seen by L{Worker.received}.
    """

    def __init__(self, fd: int, worker: Worker) -> None:
        self._fd = fd
        self._worker = worker
        self._decoder = FrameDecoder()

    def read(self) -> list[dict[str, Any]]:
        """
        Wait for what comes next (which may be less than a whole message);
        end the process at end of file.
        """
        try:
            data = os.read(self._fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            os._exit(0)
        received = self._worker.received
        return [received(_json.loads(p)) for p in self._decoder.feed(data)]

    def waiting(self) -> list[dict[str, Any]]:
        """
        Every message sent so far, without waiting for more: all the pipe
        holds (more than one read takes, behind a large frame), and the rest
        of a frame begun (the parent writes whole frames: it is on its way).
        """
        messages: list[dict[str, Any]] = []
        while self._decoder.buffered or select.select([self._fd], [], [], 0)[0]:
            messages += self.read()
        return messages


def describeError(error: BaseException, includeTraceback: bool) -> dict[str, Any]:
    """
    An exception as the C{error} of an error frame: type, message and,
    when asked, the traceback.
    """
    description: dict[str, Any] = {
        "type": type(error).__qualname__,
        "message": str(error),
    }
    if includeTraceback:
        description["traceback"] = "".join(traceback.format_exception(error))
    return description


def unknownTaskMessage(cid: int) -> dict[str, Any]:
    """
    The frame answering call C{cid} of a task this worker does not have.
    """
    return {
        "op": "error",
        "cid": cid,
        "error": {"type": "LookupError", "message": "no such task here"},
    }


def resultPayload(cid: int, result: Any, maxResult: int) -> bytes:
    """
    The frame payload answering call C{cid} with C{result}: a C{result}
    frame, or an C{error} frame if the result is not JSON or its JSON is
    longer than C{maxResult} bytes (C{"code": "too_large"}).

    The same bytes as encoding C{{"op": "result", "cid": cid, "result":
    result}} whole (L{_json.dumps} writes no spaces, and a result that
    needs ASCII escapes gets them alone): the result's JSON is made once
    and the envelope around it is spelled here.
    """
    try:
        encoded = _json.dumps(result)
    except (TypeError, ValueError) as e:
        return _json.dumps(
            {
                "op": "error",
                "cid": cid,
                "error": {
                    "type": type(e).__qualname__,
                    "message": f"the task's result cannot be sent as JSON: {e}",
                },
            }
        )
    size = len(encoded)
    if size > maxResult:
        # The limit is on the result's JSON, not on our frame around it.
        return _json.dumps(
            {
                "op": "error",
                "cid": cid,
                "code": "too_large",
                "error": {
                    "type": "TooLarge",
                    "message": f"the result is {size} bytes of JSON,"
                    f" over the limit of {maxResult}",
                },
            }
        )
    return b'{"op":"result","cid":%d,"result":%b}' % (cid, encoded)


def cancelledMessage(cid: int) -> dict[str, Any]:
    """
    The frame confirming that call C{cid} was cancelled (or skipped).
    """
    return {
        "op": "error",
        "cid": cid,
        "code": "cancelled",
        "error": {"type": "CancelledError", "message": "cancelled"},
    }
