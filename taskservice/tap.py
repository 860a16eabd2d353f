"""
``twistd taskservice``: command-line options and the service tree.

L{Options} parses; its C{postOptions} checks everything into one frozen
L{ServiceConfig} (L{taskservice._config}), which L{makeService} hands to
L{taskservice._wiring}. This module imports none of the pool, the task
server, the worker or the jobs, so C{twistd taskservice --help} loads none.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from taskservice import _wiring
from taskservice._config import SCOPES, Mode, ServiceConfig, configFrom
from taskservice._defaults import (
    DEFAULT_BACKLOG,
    DEFAULT_CONCURRENCY,
    DEFAULT_JOBS_DB,
    DEFAULT_LISTEN,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_RESULT,
    DEFAULT_MAX_RUNNING,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_PIPELINE,
    DEFAULT_SERVER_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SMTP_SINK,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL,
    DEFAULT_WEBSOCKET,
    MEMORY,
)
from taskservice._endpoints import withBacklog as _withBacklog
from taskservice._origins import parseOrigin
from taskservice._wiring import SOMAXCONN, somaxconn
from taskservice.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BROWSER_CALLS,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_JOBS_DB",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BROWSER_CALLS",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_SMTP_SINK",
    "DEFAULT_WEBSOCKET",
    "MEMORY",
    "SCOPES",
    "SOMAXCONN",
    "Mode",
    "Options",
    "ServiceConfig",
    "makeService",
    "somaxconn",
    "withBacklog",
]


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
        " dialect), running them in a pool of worker processes, and to browsers"
        " through a websocket gateway with its web page. With no options: the"
        f" example tasks on {DEFAULT_LISTEN}, one worker per CPU, the gateway"
        f" on {DEFAULT_WEBSOCKET}."
    )

    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to serve the task protocol on."],
        [
            "token-file",
            None,
            None,
            "File holding a shared secret that every task-protocol connection"
            " must send first ($/auth); default: no token.",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (then any intermediates) of the task server: serve"
            " --listen (a tcp: endpoint) over TLS, requiring client certificates"
            " signed by --tls-ca.",
        ],
        [
            "tls-key",
            None,
            None,
            "PEM private key of --tls-cert (default: read from the --tls-cert file).",
        ],
        [
            "tls-ca",
            None,
            None,
            "PEM file of the CA certificate(s) a client certificate must chain to"
            " (with --tls-cert).",
        ],
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
            "jobs-db",
            None,
            DEFAULT_JOBS_DB,
            "The durable jobs' journal: an SQLite file, created if missing"
            " (:memory: keeps jobs in memory only, lost on stop), or a"
            " postgresql:// URL, a database several task servers share.",
        ],
        [
            "server-timeout",
            None,
            DEFAULT_SERVER_TIMEOUT,
            "With a PostgreSQL --jobs-db: seconds without a heartbeat after"
            " which the other servers take this one's running jobs.",
            _positive(float, "server-timeout"),
        ],
        [
            "job-ttl",
            None,
            DEFAULT_TTL,
            "Seconds a finished job and its result are kept before purging.",
            _positive(float, "job-ttl"),
        ],
        [
            "job-concurrency",
            None,
            DEFAULT_MAX_RUNNING,
            "Durable jobs handed to the workers at once (the rest wait in the"
            " journal).",
            _positive(int, "job-concurrency"),
        ],
        [
            "worker-start-timeout",
            None,
            DEFAULT_START_TIMEOUT,
            "Seconds a new worker has to import the tasks and say it is ready;"
            " one that takes longer is killed and started again.",
            _positive(float, "worker-start-timeout"),
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
            "max-batch",
            None,
            DEFAULT_MAX_BATCH,
            "Most requests in one JSON-RPC batch (and never more than"
            " --max-in-flight, or --max-browser-calls on the websocket); a"
            " larger batch is 'too large'.",
            _positive(int, "max-batch"),
        ],
        [
            "worker-concurrency",
            None,
            DEFAULT_CONCURRENCY,
            "Coroutine (async def) calls one worker runs at once.",
            _positive(int, "worker-concurrency"),
        ],
        [
            "pipeline",
            None,
            DEFAULT_PIPELINE,
            "Calls of short tasks (under 1 ms on average) one busy worker may"
            " hold; 1 turns pipelining off.",
            _positive(int, "pipeline"),
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
            "SMTP relay (host:port) for the send_mail example task; replaces"
            " the local SMTP sink.",
        ],
        [
            "smtp-sink",
            None,
            DEFAULT_SMTP_SINK,
            "Endpoint of the demo's SMTP sink, which counts and discards mail"
            " (tcp: with a fixed port).",
        ],
        [
            "websocket",
            None,
            DEFAULT_WEBSOCKET,
            "Endpoint to serve the websocket gateway (/ws), its page and /stats on.",
        ],
        [
            "task-server-token-file",
            None,
            None,
            "File holding the token the gateway sends to --task-server ($/auth).",
        ],
        [
            "max-message",
            None,
            DEFAULT_MAX_MESSAGE,
            "Largest websocket message a browser may send, in bytes (close 1009).",
            _positive(int, "max-message"),
        ],
        [
            "max-browser-calls",
            None,
            DEFAULT_MAX_BROWSER_CALLS,
            "Calls one browser may have in flight; past this, 'overloaded'.",
            _positive(int, "max-browser-calls"),
        ],
        [
            "metrics",
            None,
            None,
            "Endpoint to serve Prometheus metrics (/metrics) on, e.g."
            " tcp:9100:interface=127.0.0.1 (the gateway serves them too).",
        ],
    ]
    optFlags = [
        ["tracebacks", None, "Include task tracebacks in error replies."],
        ["no-websocket", None, "Serve the task protocol only, without the gateway."],
        ["no-smtp-sink", None, "Do not run the demo's SMTP sink."],
        [
            "dashboard-control",
            None,
            "Let the gateway's /dashboard cancel and retry jobs (default: read-only).",
        ],
        [
            "reuse-port",
            None,
            "Listen with SO_REUSEPORT: several task servers on this machine may"
            " share the --listen port (one parent per core).",
        ],
    ]

    checkPorts = True
    """Whether parsing refuses fixed ports already in use (see
    L{_checkPortsFree}); unit tests that build service trees without
    listening turn it off, so that a server running on the machine does
    not change their outcome."""

    def __init__(self) -> None:
        super().__init__()
        self["tasks"] = []
        self["allowed-origins"] = []
        self["task-servers"] = []
        self["schedule-overrides"] = {}
        self.given: set[str] = set()
        """The options on the command line, by long name."""
        # Twisted's Options keeps no record of what was given (a value equal
        # to the default looks the same): note each option as it is parsed.
        for name, handler in list(self._dispatch.items()):
            self._dispatch[name] = _Noted(self.given, name, handler)

    def opt_allowed_origin(self, origin: str) -> None:
        """
        An origin (http(s)://host[:port]) whose pages may open the gateway's
        websocket besides the gateway's own; null (sandboxed and file: pages)
        or * (any) only if you mean it (repeatable).
        """
        if origin not in ("*", "null") and parseOrigin(origin) is None:
            raise usage.UsageError(
                "--allowed-origin must be http(s)://host[:port], null or *,"
                f" not {origin!r}"
            )
        self["allowed-origins"].append(origin)

    def opt_task_server(self, endpoint: str) -> None:
        """
        Client endpoint of a task server the gateway calls (e.g.
        tcp:tasks.example.com:12345); then no local task server or pool
        runs. Repeat it for several: each call goes to the healthy one with
        the fewest calls outstanding.
        """
        self["task-servers"].append(endpoint)

    def opt_schedule(self, schedule: str) -> None:
        """
        NAME=CRON: run task NAME as a durable job, with no arguments, at each
        tick of the cron expression CRON (five fields in UTC, e.g. 'fib=*/5 *
        * * *', or @hourly, @daily ...), once across the servers sharing
        --jobs-db; replaces the task's own @task(schedule=...) (repeatable).
        """
        name, equals, expression = schedule.partition("=")
        name = name.strip()
        if not equals or not name or not expression.strip():
            raise usage.UsageError(
                f"--schedule must be NAME=CRON (e.g. 'report=0 6 * * *'), not"
                f" {schedule!r}"
            )
        if name in self["schedule-overrides"]:
            raise usage.UsageError(f"--schedule {name}: given twice")
        from taskservice._cron import parseCron

        try:
            parseCron(expression)
        except ValueError as e:
            raise usage.UsageError(f"--schedule {name}: {e}") from None
        self["schedule-overrides"][name] = expression

    def opt_tasks(self, module: str) -> None:
        """
        A module whose @task functions are served (repeatable; default:
        taskservice.examples).
        """
        self["tasks"].append(module)

    config: ServiceConfig
    """The checked options (set by L{postOptions})."""

    def postOptions(self) -> None:
        self.config = configFrom(self, checkPorts=self.checkPorts)

    def runsSink(self) -> bool:
        """
        The SMTP sink runs beside local workers, unless a relay is given
        with --smtp or it is turned off.
        """
        return self.config.smtpSink is not None


class _Noted:
    """
    An option's handler that first notes the option as given.
    """

    def __init__(self, given: set[str], name: str, handler: Any) -> None:
        self.given, self.name, self.handler = given, name, handler

    def __call__(self, name: str, value: Any = None) -> None:
        self.given.add(self.name)
        if isinstance(self.handler, usage.CoerceParameter):
            self.handler.dispatch(name, value)
        else:
            self.handler(name, value)


def withBacklog(listen: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    C{listen} with C{:backlog=BACKLOG} added when it gives none (see
    L{taskservice._endpoints.withBacklog}).
    """
    return _withBacklog(listen, backlog)


def makeService(options: Options) -> IService:
    """
    The service tree of the parsed C{options}: their L{ServiceConfig},
    wired (L{taskservice._wiring.makeService}).
    """
    return _wiring.makeService(options.config)
