"""
``twistd taskservice``: command-line options and the service tree.

L{Options} parses; its C{postOptions} checks everything into one frozen
L{ServiceConfig} (L{taskservice._config}), which L{makeService} hands to
L{taskservice._wiring}. This module imports none of the pool, the task
server, the worker or the jobs, so C{twistd taskservice --help} loads none.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from taskservice import _wiring
from taskservice._checks import SCOPES
from taskservice._config import Mode, ServiceConfig, configFrom
from taskservice._defaults import (
    DEFAULT_BACKLOG,
    DEFAULT_JOBS_DB,
    DEFAULT_LISTEN,
    DEFAULT_SMTP_SINK,
    DEFAULT_WEBSOCKET,
    MEMORY,
)
from taskservice._endpoints import withBacklog as _withBacklog
from taskservice._optiontable import FLAGS, LONGDESC, PARAMETERS
from taskservice._origins import parseOrigin
from taskservice._wiring import SOMAXCONN, somaxconn
from taskservice.wire import (
    DEFAULT_MAX_BROWSER_CALLS,
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


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = LONGDESC
    optParameters = PARAMETERS
    optFlags = FLAGS

    checkPorts = True
    """Whether parsing refuses fixed ports already in use (see
    L{taskservice._checks.checkPortsFree}); unit tests that build service trees without
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
