"""
``twistd taskservice``: command-line options and the service tree.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from taskservice._auth import Token, readTokenFile
from taskservice._endpoints import splitDescription
from taskservice._lines import DEFAULT_MAX_LINE
from taskservice._origins import parseOrigin
from taskservice._pgjournal import DEFAULT_SERVER_TIMEOUT, isPostgreSQL
from taskservice._task import Registry
from taskservice.jobs import DEFAULT_MAX_RUNNING, DEFAULT_TTL
from taskservice.pool import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_PIPELINE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    EXAMPLE_TASKS,
)
from taskservice.server import DEFAULT_MAX_IN_FLIGHT
from taskservice.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BROWSER_CALLS,
    DEFAULT_MAX_MESSAGE,
)
from taskservice.worker import DEFAULT_MAX_RESULT

if TYPE_CHECKING:
    from taskservice.service import TaskServerService
    from taskservice.smtpsink import SMTPSink

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"
DEFAULT_JOBS_DB = "taskservice-jobs.sqlite3"
MEMORY = ":memory:"
DEFAULT_BACKLOG = 4096
"""The accept queue of the --listen socket when its description gives none
(Twisted's own default is 50): what Workerman uses, enough for the FAQ's
caller, which opens a connection per call. The kernel caps it at
C{net.core.somaxconn}."""
SOMAXCONN = "/proc/sys/net/core/somaxconn"
DEFAULT_SMTP_SINK = "tcp:2525:interface=127.0.0.1"
DEFAULT_WEBSOCKET = "tcp:8080:interface=127.0.0.1"


log = Logger()


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
            except Exception as e:
                raise usage.UsageError(
                    f"--tasks {module}: importing it raised {type(e).__name__}: {e}"
                ) from e
        try:
            registry = Registry.fromModules(self["tasks"])
        except ValueError as e:
            raise usage.UsageError(f"--tasks: {e}") from e
        from taskservice._schedules import schedulesOf

        try:
            self["schedules"] = schedulesOf(registry, self["schedule-overrides"])
        except ValueError as e:
            raise usage.UsageError(f"--schedule: {e}") from None
        smtp = self["smtp"]
        if smtp is not None:
            host, _, port = smtp.rpartition(":")
            if not (
                host and port.isascii() and port.isdigit() and 0 < int(port) < 65536
            ):
                raise usage.UsageError(f"--smtp must be host:port, not {smtp!r}")
        if self["no-websocket"] and self["task-servers"]:
            raise usage.UsageError(
                "--task-server is for the gateway: not with --no-websocket"
            )
        self._checkSecurity()
        if self["reuse-port"]:
            if self["task-servers"]:
                raise usage.UsageError(
                    "--reuse-port is for the task server run here: not with"
                    " --task-server"
                )
            port, _, _ = _tcpListenAddress(self["listen"], "--reuse-port")
            if port == 0:
                raise usage.UsageError(
                    "--reuse-port shares a fixed port: give --listen one"
                )
        elif not self["task-servers"] and self["tls"] is None:
            _checkListen(self["listen"])
        if self.runsSink():
            host, port = _tcpAddress("--smtp-sink", self["smtp-sink"])
            if port == 0:
                raise usage.UsageError("--smtp-sink needs a fixed port")
            self["sink-address"] = f"{host}:{port}"
        _checkScopes(self)
        if self.checkPorts:
            self._checkPortsFree()
        if self["no-websocket"] or not self["task-servers"]:
            _checkJournal(self["jobs-db"])

    def _checkSecurity(self) -> None:
        """
        Read the token files and the TLS files now, so that a bad one is a
        usage error: C{token} (the task server's), C{upstream-token} (the
        gateway's) and C{tls} (the task server's TLS options), each L{None}
        when not used.
        """
        localServer = self["no-websocket"] or not self["task-servers"]
        self["token"] = self["upstream-token"] = self["tls"] = None
        if self["token-file"] is not None:
            if not localServer:
                raise usage.UsageError(
                    "--token-file is for the task server run here; the token the"
                    " gateway sends to --task-server is --task-server-token-file"
                )
            self["token"] = _readToken("--token-file", self["token-file"])
        if self["task-server-token-file"] is not None:
            if not self["task-servers"]:
                raise usage.UsageError(
                    "--task-server-token-file goes with --task-server (the gateway"
                    " of a local task server sends its --token-file)"
                )
            self["upstream-token"] = _readToken(
                "--task-server-token-file", self["task-server-token-file"]
            )
        if all(self[o] is None for o in ("tls-cert", "tls-key", "tls-ca")):
            return
        if not localServer:
            raise usage.UsageError(
                "--tls-cert, --tls-key and --tls-ca are for the task server run"
                " here; the gateway's TLS to --task-server is its tls: endpoint"
                " string (trustRoots=, certificate=, privateKey=)"
            )
        if self["tls-cert"] is None or self["tls-ca"] is None:
            raise usage.UsageError(
                "--tls-cert and --tls-ca go together: the task server's TLS"
                " always requires client certificates (for TLS without them,"
                " --listen ssl:...)"
            )
        _tcpListenAddress(self["listen"], "--tls-cert")
        from taskservice._tls import serverTLSOptions

        try:
            self["tls"] = serverTLSOptions(
                self["tls-cert"], self["tls-key"], self["tls-ca"]
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _checkPortsFree(self) -> None:
        """
        A usage error naming the option and how to move it for each fixed
        TCP port this process would listen on that is already taken (a
        second C{twistd taskservice} on the machine, say), rather than a
        traceback once twistd starts.
        """
        local = self["no-websocket"] or not self["task-servers"]
        listeners: list[tuple[str, str, str]] = []
        if local and not self["reuse-port"]:
            listeners.append(("listen", self["listen"], ""))
        if not self["no-websocket"]:
            listeners.append(("websocket", self["websocket"], " or --no-websocket"))
        if self.runsSink():
            listeners.append(
                ("smtp-sink", self["smtp-sink"], " or turn it off with --no-smtp-sink")
            )
        if self["metrics"] is not None:
            listeners.append(("metrics", self["metrics"], ""))
        for name, description, otherwise in listeners:
            address = _busyAddress(description)
            if address is not None:
                raise usage.UsageError(
                    f"--{name} {description}: {address} is in use (another"
                    f" twistd taskservice?): move it with --{name}"
                    f" tcp:PORT:interface=...{otherwise}"
                )

    def runsSink(self) -> bool:
        """
        The SMTP sink runs beside local workers, unless a relay is given
        with --smtp or it is turned off.
        """
        return (
            not self["task-servers"]
            and self["smtp"] is None
            and not self["no-smtp-sink"]
        )


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


_LOCAL = "local"
"""Only where a task server and its pool run here (the default, and
--no-websocket); not with --task-server, which runs the gateway alone."""
_GATEWAY = "gateway"
"""Only where the gateway runs (the default, and --task-server); not with
--no-websocket, which runs the task server alone."""
_SINK = "sink"
"""Only where the demo SMTP sink runs (beside a local pool, without --smtp
or --no-smtp-sink)."""
_ANY = "any"
"""In every mode."""

SCOPES: dict[str, str] = {
    "listen": _LOCAL,
    "token-file": _LOCAL,
    "tls-cert": _LOCAL,
    "tls-key": _LOCAL,
    "tls-ca": _LOCAL,
    "workers": _LOCAL,
    "timeout": _LOCAL,
    "max-line": _LOCAL,
    "max-queue": _LOCAL,
    "shutdown-timeout": _LOCAL,
    "jobs-db": _LOCAL,
    "server-timeout": _LOCAL,
    "job-ttl": _LOCAL,
    "job-concurrency": _LOCAL,
    "worker-start-timeout": _LOCAL,
    "max-timeout": _LOCAL,
    "max-in-flight": _LOCAL,
    "max-batch": _ANY,
    "worker-concurrency": _LOCAL,
    "pipeline": _LOCAL,
    "max-tasks-per-child": _LOCAL,
    "max-memory": _LOCAL,
    "max-result": _LOCAL,
    "smtp": _LOCAL,
    "smtp-sink": _SINK,
    "websocket": _GATEWAY,
    "task-server-token-file": _GATEWAY,
    "max-message": _GATEWAY,
    "max-browser-calls": _GATEWAY,
    "dashboard-control": _GATEWAY,
    "metrics": _ANY,
    "tracebacks": _LOCAL,
    "no-websocket": _ANY,
    "no-smtp-sink": _LOCAL,
    "reuse-port": _LOCAL,
    "allowed-origin": _GATEWAY,
    "schedule": _LOCAL,
    "task-server": _ANY,
    "tasks": _LOCAL,
    "help": _ANY,
    "version": _ANY,
}
"""Where each option of C{twistd taskservice} has an effect. One given in a
mode where it has none is a usage error (L{_checkScopes})."""


def _checkScopes(options: Options) -> None:
    """
    A usage error for the first option given that does nothing in the mode
    chosen, naming the option and the mode. (An error, not a warning: it is
    seen before twistd goes into the background, where a warning would sit
    in a log while the option the operator relied on is ignored.)
    """
    alone = options["task-servers"] and not options["no-websocket"]
    for name in sorted(options.given):
        scope = SCOPES[name]
        if scope == _LOCAL and alone:
            why = (
                "--task-server runs the gateway alone (no task server, pool or"
                " SMTP sink here: give it to the task server that --task-server"
                " names)"
            )
        elif scope == _GATEWAY and options["no-websocket"]:
            why = "--no-websocket runs the task server alone (no gateway)"
        elif scope == _SINK and not options.runsSink():
            why = (
                "--task-server runs no SMTP sink"
                if alone
                else "--smtp replaces the SMTP sink"
                if options["smtp"] is not None
                else "--no-smtp-sink turns the SMTP sink off"
            )
        elif name == "no-smtp-sink" and options["smtp"] is not None:
            why = "--smtp already replaces the SMTP sink"
        elif name == "server-timeout" and not isPostgreSQL(options["jobs-db"]):
            why = "only servers sharing a PostgreSQL --jobs-db heartbeat"
        else:
            continue
        raise usage.UsageError(f"--{name} does nothing here: {why}")


def _tcpAddress(option: str, description: str) -> tuple[str, int]:
    """
    The address a client uses to reach the TCP server endpoint
    C{description} (a wildcard interface becomes loopback).
    """
    positional, keywords = splitDescription(description)
    if positional[0] != "tcp":
        raise usage.UsageError(f"{option} {description!r} must be a tcp: endpoint")
    port = keywords.get("port", positional[1] if len(positional) > 1 else "")
    host = keywords.get("interface", positional[2] if len(positional) > 2 else "")
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise usage.UsageError(f"{option} {description!r}: no valid TCP port")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, int(port)


def _busyAddress(description: str) -> str | None:
    """
    For a C{tcp:}, C{tcp6:} or C{ssl:} server endpoint with a fixed port,
    its address if another socket is listening there (a bind as Twisted's
    own, with C{SO_REUSEADDR}, fails with C{EADDRINUSE}); else L{None}.
    """
    import errno
    import socket

    positional, keywords = splitDescription(description)
    kind = positional[0]
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    args = positional[1:]
    port = keywords.get("port", args[0] if args else "")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return None
    # (Only tcp: takes its interface by position: tcp:PORT:INTERFACE.)
    byPosition = args[1] if kind == "tcp" and len(args) > 1 else ""
    interface = keywords.get(
        "interface", byPosition or ("::" if kind == "tcp6" else "")
    )
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                host = f"[{interface}]" if ":" in interface else interface or "*"
                return f"{host}:{port}"
    return None


def _checkListen(listen: str) -> None:
    """
    A usage error naming C{--listen} if it is not a server endpoint this
    process could listen on (a TCP port out of range, a UNIX socket without
    a path, a description Twisted cannot parse).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    positional, keywords = splitDescription(listen)
    if positional[0] == "tcp":
        _tcpAddress("--listen", listen)
    elif positional[0] == "unix" and not keywords.get(
        "address", positional[1] if len(positional) > 1 else ""
    ):
        raise usage.UsageError(f"--listen {listen!r}: no UNIX socket path")
    try:
        serverFromString(reactor, listen)
    except Exception as e:  # whatever the endpoint's parser raises
        raise usage.UsageError(f"--listen {listen!r}: {e}") from None


def _readToken(option: str, path: str) -> Token:
    try:
        return readTokenFile(path)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def _tcpListenAddress(listen: str, option: str) -> tuple[int, str, int]:
    """
    The port, interface and backlog of C{--listen} when C{option}
    (--tls-cert, --reuse-port) makes the listener here: it must be a plain
    C{tcp:} endpoint.
    """
    positional, keywords = splitDescription(listen)
    args = positional[1:]
    port = keywords.pop("port", args[0] if args else "")
    interface = keywords.pop("interface", args[1] if len(args) > 1 else "")
    backlog = keywords.pop(
        "backlog", args[2] if len(args) > 2 else str(DEFAULT_BACKLOG)
    )
    if positional[0] != "tcp" or keywords or len(args) > 3:
        raise usage.UsageError(
            f"with {option}, --listen must be a plain tcp: endpoint"
            f" (tcp:PORT:interface=ADDRESS), not {listen!r}"
        )
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise usage.UsageError(f"--listen {listen!r}: no valid TCP port")
    if not (backlog.isascii() and backlog.isdigit()):
        raise usage.UsageError(f"--listen {listen!r}: no valid backlog")
    return int(port), interface, int(backlog)


def _checkJournal(path: str) -> None:
    """
    Open an existing --jobs-db file (or the PostgreSQL database) now, so
    that one the server would refuse at start (not a journal, a newer
    schema, in use by another server) is a usage error with its reason,
    before twistd goes into the background. A missing file is created at
    start.
    """
    if path == MEMORY or not (isPostgreSQL(path) or os.path.exists(path)):
        return
    from taskservice._journal import JournalError
    from taskservice._pgjournal import PostgreSQLJournal
    from taskservice._sqlitejournal import SQLiteJournal

    try:
        if isPostgreSQL(path):
            PostgreSQLJournal(None, path).check()
        else:
            SQLiteJournal(None, path).check()
    except JournalError as e:
        raise usage.UsageError(f"--jobs-db: {e}") from None


_BACKLOG_POSITION = {"tcp": 3, "tcp6": 2, "unix": 3, "ssl": 6}
"""For the endpoint types that take a C{backlog}, its place among the
positional arguments (the type counted)."""


def withBacklog(listen: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    C{listen} with C{:backlog=BACKLOG} added when it is a C{tcp:},
    C{tcp6:}, C{ssl:} or C{unix:} server endpoint that does not give a
    backlog itself, by name or by position; else C{listen} unchanged.
    """
    positional, keywords = splitDescription(listen)
    position = _BACKLOG_POSITION.get(positional[0])
    if position is None or "backlog" in keywords or len(positional) > position:
        return listen
    return f"{listen}:backlog={backlog}"


def somaxconn(path: str = SOMAXCONN) -> int | None:
    """
    The kernel's cap on a listening socket's accept queue
    (C{net.core.somaxconn}), or L{None} where it cannot be read.
    """
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _checkBacklog(backlog: int, cap: int | None) -> None:
    """
    Warn, once at startup, when the kernel silently shortens the accept
    queue asked for.
    """
    if cap is not None and cap < backlog:
        log.warn(
            "the task server's listen backlog of {backlog} is capped at {cap}"
            " by net.core.somaxconn: raise it (sysctl -w"
            " net.core.somaxconn={backlog}) for clients that open a connection"
            " per call",
            backlog=backlog,
            cap=cap,
        )


def makeService(options: Options) -> IService:
    """
    The service tree: the task server (process pool and task-protocol
    listener) and the websocket gateway in front of it, either alone with
    --no-websocket or --task-server.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    from taskservice._dashfeed import DashboardFeed
    from taskservice._poolcaller import PoolCaller
    from taskservice.balancer import Balancer
    from taskservice.client import TaskClient
    from taskservice.gateway import GatewayFactory, GatewaySite
    from taskservice.service import GatewayService

    root = MultiService()
    sink = None
    if options.runsSink():
        from taskservice.smtpsink import SMTPSink, sinkService

        sink = SMTPSink()
        sinkService(reactor, options["smtp-sink"], sink).setServiceParent(root)
    if options["no-websocket"]:
        alone = _makeTaskServer(options, reactor, sink)
        alone.setServiceParent(root)
        _serveMetrics(options, reactor, root, _metricsRegistry(alone, None))
        return root
    taskServer = None
    client: TaskClient | Balancer | PoolCaller
    servers: list[Any] = options["task-servers"]
    token = options.get("upstream-token")
    if not servers:
        # The gateway calls the pool of the task server beside it directly,
        # not over a connection to itself.
        taskServer = _makeTaskServer(options, reactor, sink)
        client = PoolCaller(taskServer.factory)
    else:
        for server in servers:
            try:
                clientFromString(reactor, server)
            except Exception as e:  # whatever the endpoint's parser raises
                raise usage.UsageError(f"--task-server {server!r}: {e}") from e
        if len(servers) == 1:
            client = TaskClient(reactor, servers[0], token=token)
        else:
            client = Balancer(reactor, servers, token=token)
    factory = GatewayFactory(
        reactor,
        client,
        allowedOrigins=options["allowed-origins"],
        maxMessageSize=options["max-message"],
        maxBrowserCalls=options["max-browser-calls"],
        maxBatch=options["max-batch"],
    )
    if sink is not None:
        factory.addStatsProvider(lambda: {"smtpSink": sink.stats()})
    metrics = _metricsRegistry(taskServer, factory)
    dashboard = DashboardFeed(
        reactor, factory, control=bool(options["dashboard-control"])
    )
    try:
        gateway = GatewayService(
            reactor,
            options["websocket"],
            GatewaySite(factory, metrics=metrics, dashboard=dashboard),
            factory,
            client,
            taskServer,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--websocket {options['websocket']!r}: {e}") from e
    gateway.setServiceParent(root)
    dashboard.setServiceParent(root)
    _serveMetrics(options, reactor, root, metrics)
    return root


def _metricsRegistry(taskServer: TaskServerService | None, gateway: Any) -> Any:
    """
    One registry for the whole process: the pool's and task server's
    metrics when they run here, the gateway's, and the process's own.
    """
    from taskservice.metrics import makeRegistry

    if taskServer is None:
        return makeRegistry(gateway=gateway)
    return makeRegistry(
        pool=taskServer.pool, server=taskServer.factory, gateway=gateway
    )


def _serveMetrics(options: Options, reactor: Any, root: Any, registry: Any) -> None:
    """
    With --metrics, serve C{registry} on that endpoint.
    """
    if options["metrics"] is None:
        return
    from twisted.application import strports

    from taskservice.metrics import MetricsSite

    try:
        listener = strports.service(
            options["metrics"], MetricsSite(registry, reactor), reactor=reactor
        )
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--metrics {options['metrics']!r}: {e}") from e
    listener.setServiceParent(root)


def _makeTaskServer(
    options: Options, reactor: Any, sink: SMTPSink | None = None
) -> TaskServerService:
    """
    The task server and its pool; its C{$/stats} tells C{sink}'s count
    (the demo's SMTP sink, which its workers' C{send_mail} delivers to)
    when it runs beside it.
    """
    from taskservice._pgjournal import PostgreSQLJournal
    from taskservice._sqlitejournal import SQLiteJournal
    from taskservice.examples import SMTP_ENVIRONMENT
    from taskservice.jobs import JobService
    from taskservice.pool import ProcessPool
    from taskservice.server import TaskServerFactory
    from taskservice.service import TaskServerService

    env = dict(os.environ)
    if options["smtp"] is not None:
        env[SMTP_ENVIRONMENT] = options["smtp"]
    elif options.runsSink():
        env[SMTP_ENVIRONMENT] = options["sink-address"]
    try:
        pool = ProcessPool(
            reactor,
            options["tasks"],
            size=options["workers"],
            defaultTimeout=options["timeout"],
            maxTimeout=options["max-timeout"],
            maxQueue=options["max-queue"],
            concurrency=options["worker-concurrency"],
            pipeline=options["pipeline"],
            maxTasksPerChild=options["max-tasks-per-child"],
            maxMemory=(
                None
                if options["max-memory"] is None
                else int(options["max-memory"] * 1024 * 1024)
            ),
            maxResult=options["max-result"],
            shutdownTimeout=options["shutdown-timeout"],
            startTimeout=options["worker-start-timeout"],
            includeTracebacks=bool(options["tracebacks"]),
            env=env,
            python=sys.executable,
        )
    except (ImportError, ValueError) as e:
        raise usage.UsageError(f"cannot load the tasks: {e}") from e
    journal: Any = (
        PostgreSQLJournal(
            reactor, options["jobs-db"], serverTimeout=options["server-timeout"]
        )
        if isPostgreSQL(options["jobs-db"])
        else SQLiteJournal(reactor, options["jobs-db"])
    )
    jobs = JobService(
        reactor,
        pool,
        journal,
        ttl=options["job-ttl"],
        maxRunning=options["job-concurrency"],
        schedules=options["schedule-overrides"],
    )
    factory = TaskServerFactory(
        pool,
        maxLineLength=options["max-line"],
        maxInFlight=options["max-in-flight"],
        maxBatch=options["max-batch"],
        token=options.get("token"),
        jobs=jobs,
    )
    if sink is not None:
        factory.addStatsProvider(lambda: {"smtpSink": sink.stats()})
    listen: Any = withBacklog(options["listen"])
    if options["reuse-port"]:
        from taskservice._reuseport import ReusePortEndpoint

        port, interface, backlog = _tcpListenAddress(listen, "--reuse-port")
        listen = ReusePortEndpoint(
            reactor, port, interface, backlog, tls=options.get("tls")
        )
    elif options.get("tls") is not None:
        from twisted.internet.endpoints import SSL4ServerEndpoint

        port, interface, backlog = _tcpListenAddress(listen, "--tls-cert")
        listen = SSL4ServerEndpoint(
            reactor, port, options["tls"], backlog=backlog, interface=interface
        )
    else:
        _, keywords = splitDescription(listen)
        given = keywords.get("backlog", "")
        backlog = int(given) if given.isascii() and given.isdigit() else 0
    _checkBacklog(backlog, somaxconn())
    return TaskServerService(reactor, listen, pool, factory, jobs)
