"""
The table of C{twistd taskservice}'s options: each one's name, default,
help text and coercion, as L{taskservice.tap.Options} declares them. The
checks that need more than one option are L{taskservice._config}'s; the
repeatable options' handlers are on L{taskservice.tap.Options}.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.python import usage

from taskservice._defaults import (
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
)
from taskservice.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BROWSER_CALLS,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
)


def positive(kind: type[int] | type[float], name: str) -> Any:
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


LONGDESC = (
    "Serve registered tasks over JSON-RPC 2.0 lines (and the Workerman FAQ"
    " dialect), running them in a pool of worker processes, and to browsers"
    " through a websocket gateway with its web page. With no options: the"
    f" example tasks on {DEFAULT_LISTEN}, one worker per CPU, the gateway"
    f" on {DEFAULT_WEBSOCKET}."
)
"""What C{twistd taskservice --help} says it does."""

PARAMETERS: list[list[Any]] = [
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
        positive(int, "workers"),
    ],
    [
        "timeout",
        "t",
        DEFAULT_TIMEOUT,
        "Default deadline of a task in seconds (a task's own @task timeout wins).",
        positive(float, "timeout"),
    ],
    [
        "max-line",
        None,
        DEFAULT_MAX_LINE,
        "Longest request line accepted, in bytes.",
        positive(int, "max-line"),
    ],
    [
        "max-queue",
        None,
        DEFAULT_MAX_QUEUE,
        "Calls that may wait for a worker; past this, 'overloaded'.",
        positive(int, "max-queue"),
    ],
    [
        "shutdown-timeout",
        None,
        DEFAULT_SHUTDOWN_TIMEOUT,
        "On stop, seconds to let running calls finish.",
        positive(float, "shutdown-timeout"),
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
        positive(float, "server-timeout"),
    ],
    [
        "job-ttl",
        None,
        DEFAULT_TTL,
        "Seconds a finished job and its result are kept before purging.",
        positive(float, "job-ttl"),
    ],
    [
        "job-concurrency",
        None,
        DEFAULT_MAX_RUNNING,
        "Durable jobs handed to the workers at once (the rest wait in the journal).",
        positive(int, "job-concurrency"),
    ],
    [
        "worker-start-timeout",
        None,
        DEFAULT_START_TIMEOUT,
        "Seconds a new worker has to import the tasks and say it is ready;"
        " one that takes longer is killed and started again.",
        positive(float, "worker-start-timeout"),
    ],
    [
        "max-timeout",
        None,
        DEFAULT_MAX_TIMEOUT,
        "Longest deadline a caller may ask for with a request's 'timeout'.",
        positive(float, "max-timeout"),
    ],
    [
        "max-in-flight",
        None,
        DEFAULT_MAX_IN_FLIGHT,
        "Unanswered calls per connection before the server stops reading it.",
        positive(int, "max-in-flight"),
    ],
    [
        "max-batch",
        None,
        DEFAULT_MAX_BATCH,
        "Most requests in one JSON-RPC batch (and never more than"
        " --max-in-flight, or --max-browser-calls on the websocket); a"
        " larger batch is 'too large'.",
        positive(int, "max-batch"),
    ],
    [
        "worker-concurrency",
        None,
        DEFAULT_CONCURRENCY,
        "Coroutine (async def) calls one worker runs at once.",
        positive(int, "worker-concurrency"),
    ],
    [
        "pipeline",
        None,
        DEFAULT_PIPELINE,
        "Calls of short tasks (under 1 ms on average) one busy worker may"
        " hold; 1 turns pipelining off.",
        positive(int, "pipeline"),
    ],
    [
        "max-tasks-per-child",
        None,
        None,
        "Replace a worker after this many calls (default: never).",
        positive(int, "max-tasks-per-child"),
    ],
    [
        "max-memory",
        None,
        None,
        "Replace a worker whose resident memory passes this many MiB.",
        positive(float, "max-memory"),
    ],
    [
        "max-result",
        None,
        DEFAULT_MAX_RESULT,
        "Largest task result in bytes (as JSON); larger is 'too large'.",
        positive(int, "max-result"),
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
        positive(int, "max-message"),
    ],
    [
        "max-browser-calls",
        None,
        DEFAULT_MAX_BROWSER_CALLS,
        "Calls one browser may have in flight; past this, 'overloaded'.",
        positive(int, "max-browser-calls"),
    ],
    [
        "metrics",
        None,
        None,
        "Endpoint to serve Prometheus metrics (/metrics) on, e.g."
        " tcp:9100:interface=127.0.0.1 (the gateway serves them too).",
    ],
]
"""C{usage.Options.optParameters}: name, short name, default, help, and
for a number its coercion (L{positive} refuses zero, negatives, inf and
nan)."""

FLAGS: list[list[Any]] = [
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
"""C{usage.Options.optFlags}: name, short name, help."""
