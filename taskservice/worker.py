"""
The worker process:
``python -m taskservice.worker [--max-result N] [--reactor] MODULE...``.

With C{--reactor} (some task is declared C{@task(concurrent=True)} and may
return a Deferred) the worker installs Twisted's asyncio reactor before it
imports the task modules, and runs it.

Started by L{taskservice.pool.ProcessPool}. It imports the task modules,
announces itself with a C{ready} frame on fd 4, then runs the calls it reads
from fd 3 and answers each with a C{result} or C{error} frame (and
C{progress} frames on the way). The main thread reads fd 3 itself, between
calls (no hand-over from thread to thread on the way to a call). A thread
waits for fd 3's hang-up only: the parent is gone or wants us gone, and the
process exits at once, even in the middle of a task.

Plain tasks run one at a time in the main thread. When the modules define
coroutine tasks (C{async def}), the main thread runs an asyncio event loop
instead: coroutine calls run concurrently on it and can be cancelled with a
C{cancel} frame, while a plain call has the loop to itself (the pool sends
such a worker no coroutine call meanwhile; only short plain calls pipelined
behind it, and cancels of those).

The standard library, msgspec (behind L{taskservice._json}) and the light
L{taskservice._task} registry only: a worker
never imports Twisted, the gateway or Autobahn on its own account.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from taskservice import _json
from taskservice._defaults import DEFAULT_MAX_RESULT
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._task import (
    Registry,
    TaskSpec,
    _jobContext,
    _progressHook,
    jobContextFrom,
)

EXIT_BAD_TASKS = 3


class _Channel:
    """
    Writes frames to the parent; safe to use from any thread.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
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
            self._stream.write(data)
            if flush or self.autoflush:
                self._stream.flush()

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()


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


class Worker:
    """
    Runs calls and sends their outcomes.
    """

    def __init__(self, registry: Registry, channel: _Channel, maxResult: int) -> None:
        self.registry = registry
        self.channel = channel
        self.maxResult = maxResult
        self._finishing: set[Any] = set()
        self.skipped: set[int] = set()

    def received(self, message: dict[str, Any]) -> dict[str, Any]:
        """
        Called for each message as it is read, before the calls read with it
        run: a C{cancel} for a plain call still waiting behind others marks
        it to be skipped.
        """
        if message.get("op") == "cancel":
            self.skipped.add(message["cid"])
        return message

    def _skip(self, cid: int) -> bool:
        """
        Whether call C{cid} was cancelled before it started (then it is
        answered "cancelled" here). Forgets cancels of calls already past.
        """
        skipped = self.skipped
        if not skipped:
            return False
        if cid in skipped:
            skipped.discard(cid)
            self.cancelled(cid)
            return True
        for old in [c for c in skipped if c < cid]:
            skipped.discard(old)
        return False

    def _reporter(self, cid: int) -> Callable[[dict[str, Any]], None]:
        def report(update: dict[str, Any]) -> None:
            self.channel.send(
                {"op": "progress", "cid": cid, "update": update}, flush=True
            )

        return report

    def _spec(self, message: dict[str, Any]) -> TaskSpec | None:
        spec = self.registry.get(message["task"])
        if spec is None:
            self.channel.send(unknownTaskMessage(message["cid"]))
        return spec

    def runBlocking(self, message: dict[str, Any]) -> None:
        """
        Run one plain call to completion and send its outcome.
        """
        cid = message["cid"]
        if self._skip(cid):
            return
        spec = self._spec(message)
        if spec is None:
            return
        token = _progressHook.set(self._reporter(cid))
        jobToken = _jobContext.set(jobContextFrom(message.get("job")))
        try:
            result = spec.function(*message["args"], **message["kwargs"])
            if hasattr(result, "__await__"):
                _refuseDeferred(result)
                import asyncio

                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    result = asyncio.run(_awaited(result))
                else:
                    # A plain function that returned a coroutine, in a worker
                    # whose event loop runs: finish it on the loop (the pool
                    # sends no coroutine call meanwhile).
                    finishing = loop.create_task(self._finish(cid, result, message))
                    self._finishing.add(finishing)
                    finishing.add_done_callback(self._finishing.discard)
                    return
        except BaseException as e:
            self.fail(cid, e, message)
        else:
            self.succeed(cid, result)
        finally:
            _progressHook.reset(token)
            _jobContext.reset(jobToken)

    async def _finish(self, cid: int, awaitable: Any, message: dict[str, Any]) -> None:
        try:
            result = await awaitable
        except BaseException as e:
            self.fail(cid, e, message)
        else:
            self.succeed(cid, result)

    async def runAsync(self, message: dict[str, Any]) -> None:
        """
        Run one coroutine call and send its outcome (or "cancelled").
        """
        import asyncio

        spec = self._spec(message)
        if spec is None:
            return
        cid = message["cid"]
        _progressHook.set(self._reporter(cid))  # this task's own context
        _jobContext.set(jobContextFrom(message.get("job")))
        try:
            result = spec.function(*message["args"], **message["kwargs"])
            if _isDeferred(result):
                # Runs on the Twisted reactor sharing our event loop.
                result = result.asFuture(asyncio.get_running_loop())
            result = await result
        except asyncio.CancelledError:
            self.cancelled(cid)
        except BaseException as e:
            self.fail(cid, e, message)
        else:
            self.succeed(cid, result)

    def cancelled(self, cid: int) -> None:
        """
        Answer call C{cid}: it was cancelled (the parent's "cancel" done).
        """
        self.channel.send(cancelledMessage(cid))

    def succeed(self, cid: int, result: Any) -> None:
        self.channel.sendEncoded(resultPayload(cid, result, self.maxResult))

    def fail(self, cid: int, error: BaseException, message: dict[str, Any]) -> None:
        self.channel.send(
            {
                "op": "error",
                "cid": cid,
                "error": describeError(error, bool(message.get("tb"))),
            }
        )


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
    """
    try:
        payload = _json.dumps({"op": "result", "cid": cid, "result": result})
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
    if len(payload) > maxResult:
        # The limit is on the result's JSON, not on our frame around it.
        envelope = len(_json.dumps({"op": "result", "cid": cid, "result": 0})) - 1
        size = len(payload) - envelope
        if size > maxResult:
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
    return payload


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


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _isDeferred(result: Any) -> bool:
    return type(result).__module__.startswith("twisted.")


def _refuseDeferred(result: Any) -> None:
    if _isDeferred(result):
        raise TypeError(
            "the task returned a Deferred: declare it @task(concurrent=True),"
            " so that its worker runs a Twisted reactor, or write it as"
            " async def"
        )


def _serveBlocking(worker: Worker) -> None:
    commands = _Commands(COMMANDS_FD, worker)
    channel = worker.channel
    channel.send({"op": "ready", "pid": os.getpid()}, flush=True)
    pending: deque[dict[str, Any]] = deque()
    while True:
        if pending:
            # What came while the last call ran: more calls, or cancels of
            # calls still waiting here (marked by worker.received).
            pending.extend(commands.waiting())
        while not pending:
            pending.extend(commands.read())
        message = pending.popleft()
        # Calls that arrived together are answered together: one write.
        channel.autoflush = not pending
        if message.get("op") == "call":
            worker.runBlocking(message)
        if not pending:
            channel.flush()


def _forget(worker: Worker, running: dict[int, Any], cid: int) -> Callable[[Any], None]:
    def forget(task: Any) -> None:
        running.pop(cid, None)
        if task.cancelled():
            # Cancelled before it ever ran: runAsync could not answer.
            worker.cancelled(cid)

    return forget


def _installReactor() -> Any:
    """
    Install Twisted's asyncio reactor on a new event loop, before the task
    modules import the reactor: done only for tasks that need it.
    """
    import asyncio

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor


def _serveAsync(worker: Worker, reactor: Any = None) -> None:
    import asyncio

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        # (With a Twisted reactor on this loop, its timers and I/O run here.)
        running: dict[int, asyncio.Task[None]] = {}

        def handle(message: dict[str, Any]) -> bool:
            """
            Act on C{message}; whether that took time (a plain call ran).
            """
            op = message.get("op")
            if op == "call":
                spec = worker.registry.get(message["task"])
                if spec is not None and spec.isAsync:
                    cid: int = message["cid"]
                    running[cid] = loop.create_task(worker.runAsync(message))
                    running[cid].add_done_callback(_forget(worker, running, cid))
                    return False
                worker.runBlocking(message)
                return True
            if op == "cancel":
                cancelled = running.get(message["cid"])
                if cancelled is not None:
                    worker.skipped.discard(message["cid"])
                    cancelled.cancel()
            return False

        pending: deque[dict[str, Any]] = deque()
        scheduled: list[asyncio.Handle] = []

        def readable() -> None:
            # (Not a plain read: a step in the same turn of the loop may
            # have read what made the pipe readable, and a read would block.)
            pending.extend(commands.waiting())
            if pending and not scheduled:
                scheduled.append(loop.call_soon(step))

        def step() -> None:
            """
            Handle what is pending, in order, up to the next plain call; after
            it, the loop gets a turn (timers, I/O, coroutines) before the rest.
            """
            scheduled.clear()
            try:
                while pending:
                    if handle(pending.popleft()):
                        # A plain call ran: what came meanwhile may cancel
                        # calls still waiting here.
                        pending.extend(commands.waiting())
                        break
            finally:
                if pending and not scheduled:
                    scheduled.append(loop.call_soon(step))

        commands = _Commands(COMMANDS_FD, worker)
        loop.add_reader(COMMANDS_FD, readable)
        worker.channel.send({"op": "ready", "pid": os.getpid()})
        await asyncio.Event().wait()

    if reactor is None:
        asyncio.run(serve())
        return
    # Tasks that return Deferreds: Twisted's asyncio reactor drives the loop.
    loop = reactor._asyncioEventloop
    serving = loop.create_task(serve())
    serving.add_done_callback(lambda _: reactor.stop())
    reactor.run(installSignalHandlers=False)


def main(argv: list[str]) -> int:
    # A session of our own: a Ctrl-C in the terminal, or a signal sent to the
    # parent's process group, reaches the parent only. The parent decides
    # when workers stop (it drains them first); if it dies, end of file on
    # our command pipe ends us.
    with contextlib.suppress(OSError):
        os.setsid()
    # From the start: a task module whose import hangs must not keep us
    # alive once the parent has gone or given up on us.
    _watchForHangUp(COMMANDS_FD)
    args = argv[1:]
    maxResult = DEFAULT_MAX_RESULT
    reactor = None
    while args[:1] and args[0].startswith("--"):
        if args[0] == "--max-result":
            maxResult = int(args[1])
            args = args[2:]
        elif args[0] == "--reactor":
            reactor = _installReactor()
            args = args[1:]
        else:
            break
    channel = _Channel(os.fdopen(RESULTS_FD, "wb"))
    try:
        registry = Registry.fromModules(args)
    except BaseException as e:
        channel.send({"op": "fatal", "error": describeError(e, includeTraceback=True)})
        return EXIT_BAD_TASKS
    worker = Worker(registry, channel, maxResult)
    if reactor is not None or any(spec.isAsync for spec in registry.values()):
        _serveAsync(worker, reactor)
    else:
        _serveBlocking(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
