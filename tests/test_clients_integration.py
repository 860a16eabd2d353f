"""
L{taskservice.sync} and L{taskservice.aio} against a real C{twistd
taskservice} (L{taskservice.testing.Twistd}): real worker processes, a real
SQLite journal, real loopback TCP, a UNIX socket, and mutual TLS with a
token. Plain blocking test functions; the asyncio ones run their own loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from taskservice import aio, sync
from taskservice.errors import (
    Cancelled,
    JobNotFound,
    TaskFailed,
    Unauthorised,
    Unavailable,
)
from taskservice.testing import Twistd
from tests.test_security_integration import makePKI
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration

SECRET = "integration-secret-5d1c"


@contextmanager
def taskServer(cwd: Path, *args: str) -> Iterator[Twistd]:
    """
    A task server with two workers and no gateway, listening on a free
    loopback port (C{server.port}) unless C{args} say otherwise
    (C{--listen}), once it accepts connections.
    """
    with Twistd(cwd, "--no-websocket", "--workers", "2", *args) as server:
        if "--listen" not in args:
            server.connect().close()
        yield server


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One task server for the module's tests: its endpoint string."""
    with taskServer(tmp_path_factory.mktemp("clients")) as server:
        yield f"tcp:{HOST}:{server.port}"


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


def cancels(client: sync.Client) -> int:
    """Workers the server replaced to stop a cancelled call, so far."""
    count: int = client.stats()["restartsByCause"].get("cancel", 0)
    return count


def test_noTwistedImported() -> None:
    """
    Importing and using both clients loads no Twisted module (a Django or
    FastAPI process must not load a reactor).
    """
    code = (
        "import taskservice.sync, taskservice.aio, taskservice.cli, sys\n"
        "taskservice.sync.Client('tls:localhost:1:timeout=1')\n"
        "loaded = [m for m in sys.modules if m.startswith('twisted')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=DEADLINE)


def test_syncCalls(endpoint: str) -> None:
    """
    Results, progress, a task's error, 10 MB each way, and calls from
    several threads at once, through one connection to the real server.
    """
    updates: list[dict[str, Any]] = []
    with sync.Client(endpoint) as client:
        assert client.call("fib", 25) == 75025
        assert client.call("echo", value="named") == "named"
        assert client.call(
            "send_mail",
            to=["a@example.com", "b@example.com"],
            on_progress=updates.append,
        ) == {"sent": 2}
        with pytest.raises(TaskFailed) as failed:
            client.call("fail", "boom")
        assert (failed.value.remoteType, failed.value.remoteMessage) == (
            "ValueError",
            "boom",
        )
        big = "z" * 10_000_000
        assert client.call("echo", big) == big
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda n=n: results.append(client.call("fib", n)))
            for n in range(10)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert sorted(results) == sorted([0, 1, 1, 2, 3, 5, 8, 13, 21, 34])
        assert client.stats()["connections"] == 1
    assert updates == [{"done": 1, "total": 2}, {"done": 2, "total": 2}]


def test_syncInterruptCancelsServerSide(endpoint: str) -> None:
    """
    An interrupt while a call runs (raised from on_progress, as Ctrl-C
    raises KeyboardInterrupt) cancels it on the server: the worker
    running it is stopped (the cancel count in $/stats goes up).
    """
    with sync.Client(endpoint) as client:
        before = cancels(client)

        def interrupt(update: dict[str, Any]) -> None:
            if update["done"] == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.call(
                "send_mail",
                to=[f"u{i}@example.com" for i in range(5000)],
                on_progress=interrupt,
            )
        waitFor("the cancel", lambda: cancels(client) > before or None)
        assert client.call("echo", "after") == "after"


def test_aioCalls(endpoint: str) -> None:
    """
    The asyncio client: results and progress, 10 MB, gathered calls, and
    a cancelled task that stops its call on the server.
    """

    async def main() -> None:
        async with aio.Client(endpoint) as client:
            updates: list[dict[str, Any]] = []
            assert await client.call(
                "send_mail", to=["a@example.com"], on_progress=updates.append
            ) == {"sent": 1}
            assert updates == [{"done": 1, "total": 1}]
            big = "q" * 10_000_000
            assert await client.call("echo", big) == big
            assert await asyncio.gather(*(client.call("fib", n) for n in range(8))) == [
                0,
                1,
                1,
                2,
                3,
                5,
                8,
                13,
            ]
            before = (await client.stats())["restartsByCause"].get("cancel", 0)
            task = asyncio.ensure_future(client.call("sleep", 30))
            while (await client.stats())["running"] == 0:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while (await client.stats())["restartsByCause"].get("cancel", 0) == before:
                await asyncio.sleep(0.05)

    run(main())


def test_syncJobs(endpoint: str) -> None:
    """
    submit, progress iteration, result, status; a failing job's error;
    cancelling a delayed job; an unknown id is JobNotFound; jobs() lists.
    """
    with sync.Client(endpoint) as client:
        job = client.submit("send_mail", {"to": ["a@x.example", "b@x.example"]})
        updates = list(job.progress())
        assert updates[-1]["done"] == 2, updates
        assert job.result(timeout=DEADLINE) == {"sent": 2}
        assert job.status()["state"] == "succeeded"
        assert client.attach(job.id).result() == {"sent": 2}

        failing = client.submit("fail", ["nope"])
        with pytest.raises(TaskFailed, match="nope"):
            failing.result(timeout=DEADLINE)

        later = client.submit("sleep", [1], delay=3600, key=f"later-{job.id}")
        assert client.submit("sleep", [1], delay=3600, key=f"later-{job.id}").existing
        with pytest.raises(TimeoutError):
            later.result(timeout=0.3)
        assert later.cancel()["state"] == "cancelled"
        with pytest.raises(Cancelled):
            later.result()

        with pytest.raises(JobNotFound):
            client.attach("no-such-job")
        assert job.id in [j["job"] for j in client.jobs(method="send_mail")]


def test_aioJobs(endpoint: str) -> None:
    """The asyncio job handles: submit, progress, result, cancel, unknown."""

    async def main() -> None:
        async with aio.Client(endpoint) as client:
            job = await client.submit("send_mail", {"to": ["c@x.example"] * 3})
            updates = [u async for u in job.progress()]
            assert updates[-1]["done"] == 3
            assert await job.result() == {"sent": 3}
            assert (await (await client.attach(job.id)).status())[
                "state"
            ] == "succeeded"
            later = await client.submit("sleep", [1], delay=3600)
            assert (await later.cancel())["state"] == "cancelled"
            with pytest.raises(JobNotFound):
                await client.attach("no-such-job")

    run(main())


def test_unixSocket(tmp_path: Path) -> None:
    """Both clients call over a UNIX socket (unix:PATH)."""
    path = tmp_path / "tasks.sock"
    with taskServer(tmp_path / "unix", "--listen", f"unix:{path}") as server:
        waitFor("the socket", lambda: path.exists() or server.exited() or None)
        with sync.Client(f"unix:{path}") as client:
            assert client.call("echo", "over unix") == "over unix"

        async def main() -> Any:
            async with aio.Client(f"unix:{path}") as client:
                return await client.call("fib", 10)

        assert run(main()) == 55


def test_tokenAndMutualTLS(tmp_path: Path) -> None:
    """
    A task server with --tls-cert, --tls-ca and --token-file: both clients
    call with a tls: endpoint (the server's certificate checked for
    localhost, the client's presented) and the token from a file; a wrong
    token is Unauthorised; no client certificate is refused with the TLS
    reason.
    """
    pki = makePKI(tmp_path)
    tokenFile = tmp_path / "token"
    tokenFile.write_text(SECRET + "\n")
    tokenFile.chmod(0o600)
    with taskServer(
        tmp_path / "tls",
        "--tls-cert",
        str(pki.serverPEM),
        "--tls-ca",
        str(pki.caFile),
        "--token-file",
        str(tokenFile),
    ) as server:
        port = server.port
        base = f"tls:localhost:{port}:trustRoots={pki.caDir}"
        endpoint = f"{base}:certificate={pki.clientCert}:privateKey={pki.clientKey}"
        with sync.Client(endpoint, token_file=str(tokenFile)) as client:
            assert client.call("echo", "secure") == "secure"
            assert client.call("echo", "x" * 3_000_000) == "x" * 3_000_000
        with (
            sync.Client(endpoint, token="wrong") as client,
            pytest.raises(Unauthorised),
        ):
            client.call("echo", 1)
        # With TLS 1.3 the server refuses a missing client certificate only
        # after the handshake, with an alert; a request the client wrote
        # meanwhile makes the server's close a TCP reset, which can overtake
        # the alert (a loaded machine sees it). Every attempt is Unavailable;
        # one of a few tries must name the certificate.
        reasons = []
        for _ in range(5):
            with (
                sync.Client(base, token=SECRET) as client,
                pytest.raises(Unavailable) as refused,
            ):
                client.call("echo", 1)
            reasons.append(str((refused.value.data or {}).get("reason")))
            if "requires a client certificate" in reasons[-1]:
                break
        else:
            pytest.fail(f"no refusal named the client certificate: {reasons}")
        certificate = f"certificate={pki.clientCert}:privateKey={pki.clientKey}"
        for wrong, words in [
            (
                f"tls:tasks.example.org:{port}:trustRoots={pki.caDir}:{certificate}"
                f":endpoint=tcp\\:{HOST}\\:{port}",
                "host name mismatch",
            ),
            (
                f"tls:localhost:{port}:trustRoots={pki.otherCADir}:{certificate}",
                "not signed by a CA in trustRoots",
            ),
        ]:
            with sync.Client(wrong, token=SECRET) as client:
                with pytest.raises(Unavailable) as refused:
                    client.call("echo", 1)
                assert words in refused.value.data["reason"], refused.value.data

        async def main() -> Any:
            async with aio.Client(endpoint, token_file=str(tokenFile)) as client:
                return await client.call("echo", "secure too")

        assert run(main()) == "secure too"
