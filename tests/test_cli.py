"""
The C{taskservice} command against a real C{twistd taskservice}: with
click's C{CliRunner} (output captured, exit statuses checked), as a
subprocess (the console script and C{python -m taskservice}), and in a real
terminal: tmux runs C{taskservice call ... --progress}, its screen shows the
bar, Ctrl-C is typed, and the task is seen cancelled on the server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from taskservice import cli
from taskservice.sync import Client
from tests.test_clients_integration import taskServer
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration

TMUX = shutil.which("tmux")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One task server for the module's tests: its endpoint string."""
    with taskServer(tmp_path_factory.mktemp("cli")) as server:
        yield f"tcp:{HOST}:{server.port}"


def invoke(endpoint: str, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["--server", endpoint, *args])


def test_call(endpoint: str) -> None:
    """
    call prints the result (text as it is, values as JSON); --json prints
    JSON; arguments are JSON when they parse, else strings; --json PARAMS
    gives the params whole; --progress draws a bar on stderr and leaves
    stdout to the result.
    """
    result = invoke(endpoint, "call", "fib", "30")
    assert (result.exit_code, result.stdout) == (0, "832040\n")
    result = invoke(endpoint, "call", "echo", "hi")
    assert (result.exit_code, result.stdout) == (0, "hi\n")
    result = invoke(endpoint, "call", "echo", "--", "-1")
    assert (result.exit_code, result.stdout) == (0, "-1\n")
    result = invoke(endpoint, "--json", "call", "echo", "hi")
    assert result.stdout == '"hi"\n'
    to = [f"u{i}@example.com" for i in range(3)]
    result = invoke(
        endpoint, "call", "send_mail", "--json", json.dumps({"to": to}), "--progress"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sent": 3}
    assert "3/3" in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("call", "fail", "boom"), 1, "error -32000"),
        (("call", "nosuchtask"), 11, "error -32601"),
        (("call", "fib", "5", "--json", "[1]"), 2, "not both"),
        (("call", "fib", "--json", "{oops"), 2, "not JSON"),
        (("call", "fib", "--json", "3"), 2, "array or object"),
        (("call", "sleep", "5", "--timeout", "0.3"), 4, "timed out"),
        (("watch", "no-such-job"), 8, "error -32007: job not found"),
        # Job ids are URL-safe base64: one may start with "-".
        (("status", "-no-such-job"), 8, "error -32007: job not found"),
    ],
)
def test_errors(endpoint: str, args: tuple[str, ...], status: int, words: str) -> None:
    """Each outcome has its exit status (docs/cli) and says what it was."""
    result = invoke(endpoint, *args)
    assert result.exit_code == status, result.output
    assert words in result.stderr, result.stderr


def test_jsonErrorsAndUnreachable(endpoint: str) -> None:
    """
    With --json an error is a JSON object on stdout; no server is exit 3;
    an endpoint these clients cannot use is a usage error (2).
    """
    result = invoke(endpoint, "--json", "call", "fail", "x")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == -32000
    result = CliRunner().invoke(cli.main, ["-s", "tcp:127.0.0.1:1", "call", "fib", "1"])
    assert result.exit_code == 3
    assert "unreachable" in result.stderr
    result = CliRunner().invoke(cli.main, ["-s", "ssl:127.0.0.1:1", "stats"])
    assert result.exit_code == 2
    assert "tcp:, tls: and unix:" in result.stderr


def test_jobs(endpoint: str) -> None:
    """
    submit prints the id; watch follows it and prints its result; status
    shows it; a delayed job is cancelled by cancel, and watching it then
    exits 9; jobs lists them, as a table and as JSON.
    """
    submitted = invoke(endpoint, "submit", "fib", "20")
    assert submitted.exit_code == 0, submitted.output
    jobId = submitted.stdout.strip()
    watched = invoke(endpoint, "watch", jobId)
    assert (watched.exit_code, watched.stdout) == (0, "6765\n")
    status = invoke(endpoint, "--json", "status", jobId)
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert "succeeded" in invoke(endpoint, "status", jobId).stdout

    later = invoke(endpoint, "--json", "submit", "sleep", "1", "--delay", "3600")
    laterId = json.loads(later.stdout)["job"]
    assert json.loads(later.stdout)["state"] == "scheduled"
    cancelled = invoke(endpoint, "cancel", laterId)
    assert (cancelled.exit_code, cancelled.stdout) == (0, "cancelled\n")
    watched = invoke(endpoint, "watch", laterId)
    assert watched.exit_code == 9, watched.output

    listed = invoke(endpoint, "--json", "jobs", "--method", "fib")
    assert jobId in [job["job"] for job in json.loads(listed.stdout)]
    assert jobId in invoke(endpoint, "jobs", "--limit", "5").stdout


def test_stats(endpoint: str) -> None:
    """
    stats --json is $/stats; --once prints one view; the live view
    refreshes (here twice) with the throughput.
    """
    snapshot = json.loads(invoke(endpoint, "--json", "stats").stdout)
    assert snapshot["workers"]["size"] == 2
    assert "workers" in invoke(endpoint, "stats", "--once").stdout
    live = invoke(endpoint, "stats", "--count", "2", "--interval", "0.1")
    assert live.exit_code == 0, live.output
    assert "calls/s" in live.stdout


def test_consoleScriptAndModule(endpoint: str) -> None:
    """The installed console script and python -m taskservice both run."""
    for command in ([str(BIN / "taskservice")], [sys.executable, "-m", "taskservice"]):
        done = subprocess.run(
            [*command, "--server", endpoint, "call", "fib", "10"],
            capture_output=True,
            timeout=DEADLINE,
            check=False,
        )
        assert (done.returncode, done.stdout) == (0, b"55\n"), done.stderr


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_progressBarAndCtrlCInTmux(endpoint: str, tmp_path: Path) -> None:
    """
    In a real terminal (tmux), taskservice call send_mail --progress draws
    a live bar; Ctrl-C cancels the task on the server (its worker is
    stopped: the cancel count in $/stats goes up) and exits 130.
    """
    assert TMUX is not None
    # A tmux server of the test's own, its socket in the test's directory.
    socketPath = str(tmp_path / "tmux.sock")
    to = json.dumps({"to": [f"u{i}@example.com" for i in range(50_000)]})
    params = tmp_path / "params.json"
    params.write_text(to)
    command = (
        f"{BIN / 'taskservice'} --server {endpoint} call send_mail"
        f" --json @{params} --progress; echo EXIT=$?; sleep 600"
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            [TMUX, "-S", socketPath, *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=True,
        ).stdout

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "cli")

    with Client(endpoint) as client:
        before = client.stats()["restartsByCause"].get("cancel", 0)
        tmux("new-session", "-d", "-s", "cli", "-x", "120", "-y", "20", command)
        try:
            waitFor(
                "the bar to show progress",
                lambda: screen() if "/50000" in screen() else None,
            )
            shown = screen()
            assert "send_mail" in shown and "━" in shown, shown
            tmux("send-keys", "-t", "cli", "C-c")
            final = waitFor(
                "the command to exit", lambda: screen() if "EXIT=" in screen() else None
            )
            assert "EXIT=130" in final, final
            assert "interrupted: send_mail cancelled" in final, final
            waitFor(
                "the server to cancel the task",
                lambda: (
                    client.stats()["restartsByCause"].get("cancel", 0) > before or None
                ),
            )
        finally:
            subprocess.run(
                [TMUX, "-S", socketPath, "kill-server"], timeout=DEADLINE, check=False
            )


def test_tokenFile(tmp_path: Path) -> None:
    """
    --token-file sends the server's token; a wrong one exits 7
    (unauthorised); a token file that cannot be read is a usage error.
    """
    good, wrong = tmp_path / "token", tmp_path / "wrong"
    for path, secret in ((good, "cli-secret-9a7b"), (wrong, "not-it")):
        path.write_text(secret + "\n")
        path.chmod(0o600)
    with taskServer(tmp_path / "server", "--token-file", str(good)) as server:
        endpoint = f"tcp:{HOST}:{server.port}"
        result = invoke(endpoint, "--token-file", str(good), "call", "echo", "ok")
        assert (result.exit_code, result.stdout) == (0, "ok\n"), result.output
        result = invoke(endpoint, "--token-file", str(wrong), "call", "echo", "ok")
        assert result.exit_code == 7, result.output
        assert "error -32005" in result.stderr
        result = invoke(endpoint, "call", "echo", "ok")
        assert result.exit_code == 7, result.output
    result = invoke(endpoint, "--token-file", str(tmp_path / "none"), "stats")
    assert result.exit_code == 2
    assert "token file" in result.stderr
