"""
The worker process: ``python -m taskservice.worker MODULE...``.

Started by L{taskservice.pool.ProcessPool}. It imports the task modules,
announces itself with a C{ready} frame on fd 4, then runs the calls it reads
from fd 3 one at a time and answers each with a C{result} or C{error} frame
(and C{progress} frames on the way). A reader thread owns fd 3: end of file
there means the parent is gone or wants us gone, and the process exits at
once, even in the middle of a task.

Standard library only, plus the light L{taskservice._task} registry: a worker
never imports Twisted, the gateway or Autobahn on its own account.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, BinaryIO

from taskservice import _json
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._task import Registry, _progressHook

EXIT_BAD_TASKS = 3


class _Channel:
    """
    Writes frames to the parent; safe to use from any thread.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = frame(_json.dumps(message))
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


def _readCommands(fd: int, deliver: Callable[[Any], None]) -> None:
    decoder = FrameDecoder()
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            # The parent closed our command pipe or died: leave now, even
            # if a task is running.
            os._exit(0)
        for payload in decoder.feed(data):
            deliver(_json.loads(payload))


def _describe(error: BaseException, includeTraceback: bool) -> dict[str, Any]:
    description: dict[str, Any] = {
        "type": type(error).__qualname__,
        "message": str(error),
    }
    if includeTraceback:
        description["traceback"] = "".join(traceback.format_exception(error))
    return description


def runCall(registry: Registry, channel: _Channel, message: dict[str, Any]) -> None:
    """
    Run one C{call} message and send its outcome.
    """
    cid = message["cid"]
    includeTraceback = bool(message.get("tb"))
    spec = registry.get(message["task"])
    if spec is None:
        channel.send(
            {
                "op": "error",
                "cid": cid,
                "error": {"type": "LookupError", "message": "no such task here"},
            }
        )
        return

    def reportProgress(update: dict[str, Any]) -> None:
        channel.send({"op": "progress", "cid": cid, "update": update})

    token = _progressHook.set(reportProgress)
    try:
        result = spec.function(*message.get("args", ()), **message.get("kwargs", {}))
        if hasattr(result, "__await__"):
            import asyncio

            result = asyncio.run(_awaited(result))
    except BaseException as e:
        reply = {"op": "error", "cid": cid, "error": _describe(e, includeTraceback)}
    else:
        reply = {"op": "result", "cid": cid, "result": result}
    finally:
        _progressHook.reset(token)
    try:
        channel.send(reply)
    except (TypeError, ValueError) as e:
        channel.send(
            {
                "op": "error",
                "cid": cid,
                "error": {
                    "type": type(e).__qualname__,
                    "message": f"the task's result cannot be sent as JSON: {e}",
                },
            }
        )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def main(argv: list[str]) -> int:
    # A session of our own: a Ctrl-C in the terminal, or a signal sent to the
    # parent's process group, reaches the parent only. The parent decides
    # when workers stop (it drains them first); if it dies, end of file on
    # our command pipe ends us.
    with contextlib.suppress(OSError):
        os.setsid()
    modules = argv[1:]
    results = os.fdopen(RESULTS_FD, "wb")
    channel = _Channel(results)
    try:
        registry = Registry.fromModules(modules)
    except BaseException as e:
        channel.send({"op": "fatal", "error": _describe(e, includeTraceback=True)})
        return EXIT_BAD_TASKS
    inbox: SimpleQueue[Any] = SimpleQueue()
    reader = threading.Thread(
        target=_readCommands, args=(COMMANDS_FD, inbox.put), daemon=True
    )
    reader.start()
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        message = inbox.get()
        if message.get("op") == "call":
            runCall(registry, channel, message)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
