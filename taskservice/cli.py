"""
The C{taskservice} command: call tasks, follow and manage durable jobs, and
watch a task server, from a shell (docs/cli, "The taskservice command").

Built on L{taskservice.sync} (no reactor), click and rich. Every outcome has
its exit status (L{EXIT_CODES}); C{--json} prints what scripts parse.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.live import Live

from taskservice._cliview import (
    JOB_STATES,
    ProgressBar,
    StatsView,
    jobDetails,
    jobTable,
)
from taskservice._endpoints import displayName
from taskservice._version import __version__
from taskservice.errors import ErrorCode, TaskServiceError
from taskservice.sync import DEFAULT_ENDPOINT, Client, Job
from taskservice.wire import SUBMIT, submitParams

INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""

EXIT_CODES: dict[int, int] = {
    ErrorCode.TASK_FAILED: 1,
    ErrorCode.UNAVAILABLE: 3,
    ErrorCode.TIMED_OUT: 4,
    ErrorCode.WORKER_LOST: 5,
    ErrorCode.OVERLOADED: 6,
    ErrorCode.UNAUTHORISED: 7,
    ErrorCode.JOB_NOT_FOUND: 8,
    ErrorCode.CANCELLED: 9,
    ErrorCode.INTERRUPTED: 10,
    ErrorCode.PARSE_ERROR: 11,
    ErrorCode.INVALID_REQUEST: 11,
    ErrorCode.METHOD_NOT_FOUND: 11,
    ErrorCode.INVALID_PARAMS: 11,
    ErrorCode.TOO_LARGE: 11,
}
"""The exit status of a call or job that failed with each error code; 0 is
success, 2 a usage error (click's), L{OTHER_ERROR_EXIT} any other code and
L{INTERRUPTED_EXIT} Ctrl-C. docs/cli has the table."""

OTHER_ERROR_EXIT = 12
"""Exit status for an error code not in L{EXIT_CODES} (-32603, -32009...)."""


def exitCode(error: TaskServiceError) -> int:
    """The exit status for C{error}."""
    return EXIT_CODES.get(int(error.code), OTHER_ERROR_EXIT)


@dataclass
class Settings:
    """The group's options, and the client made from them on first use."""

    server: str
    tokenFile: str | None
    json: bool
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client(self.server, token_file=self.tokenFile)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
            click.get_current_context().call_on_close(self._client.close)
        return self._client

    def show(self, value: Any) -> None:
        """Print a result: JSON with C{--json}; else text as it is, values
        as indented JSON."""
        if self.json:
            click.echo(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, str):
            click.echo(value)
        else:
            click.echo(json.dumps(value, ensure_ascii=False, indent=2))

    def fail(self, error: TaskServiceError) -> NoReturn:
        """Report C{error} (on stderr; as JSON on stdout with C{--json})
        and exit with its status."""
        if self.json:
            click.echo(json.dumps({"error": error.toWire()}, ensure_ascii=False))
        else:
            detail = "" if error.data is None else f" {json.dumps(error.data)}"
            self.err.print(
                f"[red]error {int(error.code)}[/red]: {error.message}{detail}",
                markup=True,
                highlight=False,
            )
        sys.exit(exitCode(error))


pass_settings = click.make_pass_decorator(Settings)


@contextmanager
def reported(settings: Settings) -> Iterator[None]:
    """Turn a task service error into its report and exit status."""
    try:
        yield
    except TaskServiceError as e:
        settings.fail(e)


def parseParams(args: tuple[str, ...], params: str | None) -> Any:
    """
    The call's params: C{--json PARAMS} (an array or an object, or
    C{@FILE} holding one) whole, or
    each argument as JSON if it is JSON, else as a string (C{echo hi}).
    """
    if params is not None:
        if args:
            raise click.UsageError("give arguments or --json PARAMS, not both")
        if params.startswith("@"):
            try:
                with open(params[1:], encoding="utf-8") as f:
                    params = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise click.BadParameter(
                    f"{params[1:]}: {e}", param_hint="--json"
                ) from None
        try:
            value = json.loads(params)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--json") from None
        if not isinstance(value, list | dict):
            raise click.BadParameter(
                "must be a JSON array or object", param_hint="--json"
            )
        return value
    values = []
    for arg in args:
        try:
            values.append(json.loads(arg))
        except ValueError:
            values.append(arg)
    return values


class _JobCommand(click.Command):
    """
    A command of one job id, which may start with "-" (ids are URL-safe
    base64): an argument that is none of the command's options is the id,
    even so (Click would take it for options).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = {
            name
            for param in self.get_params(ctx)
            for name in (*param.opts, *param.secondary_opts)
        }
        options, ids = [], []
        for arg in args:
            if arg.startswith("-") and arg.split("=", 1)[0] not in known:
                ids.append(arg)
            else:
                options.append(arg)
        return super().parse_args(ctx, [*options, "--", *ids] if ids else options)


_PARAMS_HELP = "the task's params as one JSON array or object (@FILE: read it)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    "-s",
    envvar="TASKSERVICE_SERVER",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    metavar="ENDPOINT",
    help="the task server: tcp:HOST:PORT, unix:PATH or tls:HOST:PORT:... "
    "(env TASKSERVICE_SERVER)",
)
@click.option(
    "--token-file",
    envvar="TASKSERVICE_TOKEN_FILE",
    metavar="PATH",
    help="the server's shared secret, in a file (env TASKSERVICE_TOKEN_FILE)",
)
@click.option("--json", "asJSON", is_flag=True, help="print results and errors as JSON")
@click.version_option(__version__, prog_name="taskservice")
@click.pass_context
def main(ctx: click.Context, server: str, token_file: str | None, asJSON: bool) -> None:
    """Call tasks and manage jobs on a taskservice task server."""
    ctx.obj = Settings(server, token_file, asJSON)


def _interrupted(settings: Settings, message: str) -> NoReturn:
    settings.err.print(message, highlight=False)
    sys.exit(INTERRUPTED_EXIT)


@main.command()
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--json", "--params", "params", metavar="JSON", help=_PARAMS_HELP)
@click.option("--progress", is_flag=True, help="show a live progress bar (stderr)")
@click.option("--timeout", type=float, help="seconds the call may take")
@pass_settings
def call(
    settings: Settings,
    method: str,
    args: tuple[str, ...],
    params: str | None,
    progress: bool,
    timeout: float | None,
) -> None:
    """Call METHOD with ARGS (each JSON, else a string); print its result.

    Ctrl-C cancels the call on the server and exits 130."""
    values = parseParams(args, params)
    client = settings.client()
    with reported(settings):
        try:
            if progress:
                with ProgressBar(settings.err, method) as bar:
                    result = client.request(
                        method, values, timeout=timeout, on_progress=bar.update
                    )
            else:
                result = client.request(method, values, timeout=timeout)
        except KeyboardInterrupt:
            _interrupted(settings, f"interrupted: {method} cancelled")
    settings.show(result)


@main.command()
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--json", "--params", "params", metavar="JSON", help=_PARAMS_HELP)
@click.option("--key", help="idempotency key: one job per key")
@click.option("--delay", type=float, help="seconds before it may run")
@click.option("--at", help="when it may run (ISO 8601 with a time zone)")
@click.option("--retries", type=int, help="runs tried again after a failure")
@click.option("--backoff", type=float, help="first retry's delay, seconds")
@click.option("--timeout", type=float, help="each run's deadline, seconds")
@pass_settings
def submit(
    settings: Settings,
    /,
    method: str,
    args: tuple[str, ...],
    params: str | None,
    **options: Any,
) -> None:
    """Submit METHOD with ARGS as a durable job; print its id."""
    values = parseParams(args, params)
    client = settings.client()
    with reported(settings):
        answer = client.request(SUBMIT, submitParams(method, values, options))
    if settings.json:
        settings.show(answer)
    else:
        click.echo(answer["job"])
        if answer.get("existing"):
            settings.err.print(f"(the job of key {options['key']!r}, submitted before)")


@main.command(cls=_JobCommand)
@click.argument("job")
@pass_settings
def status(settings: Settings, job: str) -> None:
    """Show JOB as it is now."""
    with reported(settings):
        answer = settings.client().request("$/job", {"job": job})
    if settings.json:
        settings.show(answer)
    else:
        settings.out.print(jobDetails(answer))


@main.command(cls=_JobCommand)
@click.argument("job")
@click.option("--timeout", type=float, help="seconds to wait at most")
@pass_settings
def watch(settings: Settings, job: str, timeout: float | None) -> None:
    """Follow JOB's progress until it ends; print its result (or error).

    Ctrl-C stops watching (exit 130); the job goes on."""
    client = settings.client()
    with reported(settings):
        now = client.request("$/job", {"job": job})
        handle = Job(client, job)
        try:
            with ProgressBar(settings.err, f"{now['method']} {job}") as bar:
                if isinstance(now.get("progress"), dict):
                    bar.update(now["progress"])
                for update in handle.progress(timeout):
                    bar.update(update)
        except KeyboardInterrupt:
            _interrupted(settings, f"stopped watching; job {job} goes on")
        except TimeoutError as e:
            settings.err.print(str(e), highlight=False)
            sys.exit(EXIT_CODES[ErrorCode.TIMED_OUT])
        result = handle.result()
    settings.show(result)


@main.command(cls=_JobCommand)
@click.argument("job")
@pass_settings
def cancel(settings: Settings, job: str) -> None:
    """Cancel JOB; print its state after."""
    with reported(settings):
        answer = settings.client().attach(job).cancel()
    settings.show(answer if settings.json else answer["state"])


@main.command()
@click.option("--state", type=click.Choice(JOB_STATES), help="only jobs in it")
@click.option("--method", help="only jobs of this task")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@pass_settings
def jobs(settings: Settings, state: str | None, method: str | None, limit: int) -> None:
    """List the newest jobs, newest first."""
    with reported(settings):
        found = settings.client().jobs(state=state, method=method, limit=limit)
    if settings.json:
        settings.show(found)
    else:
        settings.out.print(jobTable(found))


@main.command()
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True
)
@click.option("--once", is_flag=True, help="print one snapshot and exit")
@click.option(
    "--count", type=click.IntRange(min=1), help="stop after this many snapshots"
)
@pass_settings
def stats(settings: Settings, interval: float, once: bool, count: int | None) -> None:
    """A refreshing view of the server: workers, queue, throughput, jobs.

    Ctrl-C quits (exit 0). With --json or --once: one snapshot."""
    client = settings.client()
    view = StatsView(displayName(settings.server))
    with reported(settings):
        if settings.json or once:
            snapshot = client.stats()
            if settings.json:
                settings.show(snapshot)
            else:
                settings.out.print(view.render(snapshot, time.monotonic()))
            return
        try:
            with Live(console=settings.out, auto_refresh=False) as live:
                shown = 0
                while count is None or shown < count:
                    live.update(view.render(client.stats(), time.monotonic()))
                    live.refresh()
                    shown += 1
                    if count is None or shown < count:
                        time.sleep(interval)
        except KeyboardInterrupt:
            pass


def run(entry: Callable[..., Any] = main) -> None:
    """The console script (and C{python -m taskservice})."""
    entry(prog_name="taskservice")
