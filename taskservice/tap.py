"""
``twistd taskservice``: command-line options and the service tree.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from taskservice._lines import DEFAULT_MAX_LINE
from taskservice.pool import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEOUT,
    EXAMPLE_TASKS,
)
from taskservice.server import DEFAULT_MAX_IN_FLIGHT
from taskservice.worker import DEFAULT_MAX_RESULT

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"


def _positive(kind: type[int] | type[float], name: str) -> Any:
    def convert(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(
                f"--{name} must be a number, not {value!r}"
            ) from None
        if not (math.isfinite(number) and number > 0):
            raise usage.UsageError(
                f"--{name} must be a finite positive number, not {value!r}"
            )
        return number

    return convert


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve registered tasks over JSON-RPC 2.0 lines (and the Workerman FAQ"
        " dialect), running them in a pool of worker processes. With no options:"
        f" the example tasks on {DEFAULT_LISTEN}, one worker per CPU."
    )

    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to serve the task protocol on."],
        [
            "workers",
            "w",
            None,
            "Number of worker processes (default: one per CPU).",
            _positive(int, "workers"),
        ],
        [
            "timeout",
            "t",
            DEFAULT_TIMEOUT,
            "Default deadline of a task in seconds (a task's own @task timeout wins).",
            _positive(float, "timeout"),
        ],
        [
            "max-line",
            None,
            DEFAULT_MAX_LINE,
            "Longest request line accepted, in bytes.",
            _positive(int, "max-line"),
        ],
        [
            "max-queue",
            None,
            DEFAULT_MAX_QUEUE,
            "Calls that may wait for a worker; past this, 'overloaded'.",
            _positive(int, "max-queue"),
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT,
            "On stop, seconds to let running calls finish.",
            _positive(float, "shutdown-timeout"),
        ],
        [
            "max-timeout",
            None,
            DEFAULT_MAX_TIMEOUT,
            "Longest deadline a caller may ask for with a request's 'timeout'.",
            _positive(float, "max-timeout"),
        ],
        [
            "max-in-flight",
            None,
            DEFAULT_MAX_IN_FLIGHT,
            "Unanswered calls per connection before the server stops reading it.",
            _positive(int, "max-in-flight"),
        ],
        [
            "worker-concurrency",
            None,
            DEFAULT_CONCURRENCY,
            "Coroutine (async def) calls one worker runs at once.",
            _positive(int, "worker-concurrency"),
        ],
        [
            "max-tasks-per-child",
            None,
            None,
            "Replace a worker after this many calls (default: never).",
            _positive(int, "max-tasks-per-child"),
        ],
        [
            "max-memory",
            None,
            None,
            "Replace a worker whose resident memory passes this many MiB.",
            _positive(float, "max-memory"),
        ],
        [
            "max-result",
            None,
            DEFAULT_MAX_RESULT,
            "Largest task result in bytes (as JSON); larger is 'too large'.",
            _positive(int, "max-result"),
        ],
        [
            "smtp",
            None,
            None,
            "SMTP server (host:port) for the send_mail example task.",
        ],
    ]
    optFlags = [
        ["tracebacks", None, "Include task tracebacks in error replies."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tasks"] = []

    def opt_tasks(self, module: str) -> None:
        """
        A module whose @task functions are served (repeatable; default:
        taskservice.examples).
        """
        self["tasks"].append(module)

    def postOptions(self) -> None:
        if not self["tasks"]:
            self["tasks"] = list(EXAMPLE_TASKS)
        for module in self["tasks"]:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise usage.UsageError(
                    f"--tasks {module}: cannot import it: {e}"
                ) from e
        smtp = self["smtp"]
        if smtp is not None:
            host, _, port = smtp.rpartition(":")
            if not (
                host and port.isascii() and port.isdigit() and 0 < int(port) < 65536
            ):
                raise usage.UsageError(f"--smtp must be host:port, not {smtp!r}")


def makeService(options: Options) -> IService:
    """
    The service tree: the process pool and the task-protocol listener.
    """
    from twisted.internet import reactor

    from taskservice.examples import SMTP_ENVIRONMENT
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory
    from taskservice.service import TaskServerService

    env = dict(os.environ)
    if options["smtp"] is not None:
        env[SMTP_ENVIRONMENT] = options["smtp"]
    try:
        pool = ProcessPool(
            reactor,
            options["tasks"],
            size=options["workers"],
            defaultTimeout=options["timeout"],
            maxTimeout=options["max-timeout"],
            maxQueue=options["max-queue"],
            concurrency=options["worker-concurrency"],
            maxTasksPerChild=options["max-tasks-per-child"],
            maxMemory=(
                None
                if options["max-memory"] is None
                else int(options["max-memory"] * 1024 * 1024)
            ),
            maxResult=options["max-result"],
            shutdownTimeout=options["shutdown-timeout"],
            includeTracebacks=bool(options["tracebacks"]),
            env=env,
            python=sys.executable,
        )
    except (ImportError, ValueError) as e:
        raise usage.UsageError(f"cannot load the tasks: {e}") from e
    root = MultiService()
    factory = TaskServerFactory(
        pool, maxLineLength=options["max-line"], maxInFlight=options["max-in-flight"]
    )
    TaskServerService(reactor, options["listen"], pool, factory).setServiceParent(root)
    return root
