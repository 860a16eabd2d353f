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
process exits at once, even in the middle of a task. The pipes and the
payloads of the answers are L{taskservice._workerwire}; this module runs
the calls.

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
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from taskservice._defaults import DEFAULT_MAX_RESULT
from taskservice._frames import COMMANDS_FD, RESULTS_FD
from taskservice._task import (
    Registry,
    TaskSpec,
    _jobContext,
    _progressHook,
    jobContextFrom,
)
from taskservice._workerwire import (
    _Channel,
    _Commands,
    _watchForHangUp,
    cancelledMessage,
    describeError,
    resultPayload,
    unknownTaskMessage,
)

__all__ = [
    "EXIT_BAD_TASKS",
    "Worker",
    "cancelledMessage",
    "describeError",
    "main",
    "resultPayload",
    "unknownTaskMessage",
]

EXIT_BAD_TASKS = 3


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
        # (A plain call is no job's: the context already says so.)
        job = message.get("job")
        jobToken = _jobContext.set(jobContextFrom(job)) if job else None
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
            if jobToken is not None:
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
    channel = _Channel(RESULTS_FD)
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
