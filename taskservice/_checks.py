"""
The checks of C{twistd taskservice}'s options that need more than one
option or a look at the machine: the task modules import, the token and
TLS files read, fixed ports are free, each option given has an effect in
the mode chosen, an existing journal would be accepted. Each is a
L{usage.UsageError} naming its option, seen before twistd goes into the
background; L{taskservice._config.configFrom} runs them.

Nothing here imports the pool, the task server, the worker or the jobs.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from twisted.python import usage

from taskservice._auth import Token, readTokenFile
from taskservice._defaults import MEMORY
from taskservice._endpoints import busyAddress, tcpListenAddress
from taskservice._task import Registry


def checkTasks(tasks: tuple[str, ...]) -> Registry:
    for module in tasks:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise usage.UsageError(f"--tasks {module}: cannot import it: {e}") from e
        except Exception as e:
            raise usage.UsageError(
                f"--tasks {module}: importing it raised {type(e).__name__}: {e}"
            ) from e
    try:
        return Registry.fromModules(list(tasks))
    except ValueError as e:
        raise usage.UsageError(f"--tasks: {e}") from e


def security(options: Any, localServer: bool) -> tuple[Token | None, Token | None, Any]:
    """
    Read the token files and the TLS files now, so that a bad one is a
    usage error: the task server's token, the gateway's upstream token
    and the task server's TLS options, each L{None} when not used.
    """
    token = upstreamToken = None
    if options["token-file"] is not None:
        if not localServer:
            raise usage.UsageError(
                "--token-file is for the task server run here; the token the"
                " gateway sends to --task-server is --task-server-token-file"
            )
        token = readToken("--token-file", options["token-file"])
    if options["task-server-token-file"] is not None:
        if not options["task-servers"]:
            raise usage.UsageError(
                "--task-server-token-file goes with --task-server (the gateway"
                " of a local task server sends its --token-file)"
            )
        upstreamToken = readToken(
            "--task-server-token-file", options["task-server-token-file"]
        )
    if all(options[o] is None for o in ("tls-cert", "tls-key", "tls-ca")):
        return token, upstreamToken, None
    if not localServer:
        raise usage.UsageError(
            "--tls-cert, --tls-key and --tls-ca are for the task server run"
            " here; the gateway's TLS to --task-server is its tls: endpoint"
            " string (trustRoots=, certificate=, privateKey=)"
        )
    if options["tls-cert"] is None or options["tls-ca"] is None:
        raise usage.UsageError(
            "--tls-cert and --tls-ca go together: the task server's TLS"
            " always requires client certificates (for TLS without them,"
            " --listen ssl:...)"
        )
    tcpListenAddress(options["listen"], "--tls-cert")
    from taskservice._tls import serverTLSOptions

    try:
        tls = serverTLSOptions(
            options["tls-cert"], options["tls-key"], options["tls-ca"]
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    return token, upstreamToken, tls


def checkPortsFree(options: Any, local: bool, runsSink: bool) -> None:
    """
    A usage error naming the option and how to move it for each fixed
    TCP port this process would listen on that is already taken (a
    second C{twistd taskservice} on the machine, say), rather than a
    traceback once twistd starts.
    """
    listeners: list[tuple[str, str, str]] = []
    if local and not options["reuse-port"]:
        listeners.append(("listen", options["listen"], ""))
    if not options["no-websocket"]:
        listeners.append(("websocket", options["websocket"], " or --no-websocket"))
    if runsSink:
        listeners.append(
            ("smtp-sink", options["smtp-sink"], " or turn it off with --no-smtp-sink")
        )
    if options["metrics"] is not None:
        listeners.append(("metrics", options["metrics"], ""))
    for name, description, otherwise in listeners:
        address = busyAddress(description)
        if address is not None:
            raise usage.UsageError(
                f"--{name} {description}: {address} is in use (another"
                f" twistd taskservice?): move it with --{name}"
                f" tcp:PORT:interface=...{otherwise}"
            )


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
mode where it has none is a usage error (L{checkScopes})."""


def checkScopes(options: Any, runsSink: bool) -> None:
    """
    A usage error for the first option given that does nothing in the mode
    chosen, naming the option and the mode. (An error, not a warning: it is
    seen before twistd goes into the background, where a warning would sit
    in a log while the option the operator relied on is ignored.)
    """
    from taskservice._pgwire import isPostgreSQL

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
        elif scope == _SINK and not runsSink:
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


def readToken(option: str, path: str) -> Token:
    try:
        return readTokenFile(path)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def checkJournal(path: str) -> None:
    """
    Open an existing --jobs-db file (or the PostgreSQL database) now, so
    that one the server would refuse at start (not a journal, a newer
    schema, in use by another server) is a usage error with its reason,
    before twistd goes into the background. A missing file is created at
    start.
    """
    from taskservice._pgwire import isPostgreSQL

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
