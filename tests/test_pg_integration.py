"""
Several task servers on one PostgreSQL journal, as an operator runs them:
real C{twistd taskservice} subprocesses, real worker processes, a real
throwaway PostgreSQL cluster, real loopback sockets.

Like tests/test_jobs_integration.py these are plain, blocking test
functions; every wait polls with a deadline.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from taskservice.testing import Twistd, freePort
from tests.pgtasks import runsByJob
from tests.test_jobs_integration import FINAL, Rpc, gone, pythonPath, runsOf
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration
__all__ = ["pythonPath"]

SERVER_TIMEOUT = 2.0


@contextmanager
def pgServer(
    cwd: Path, dsn: str, port: int, *args: str
) -> Iterator[tuple[Twistd, Rpc]]:
    """
    A task server (no gateway, no SMTP sink) running tests.pgtasks and
    tests.jobtasks on the PostgreSQL journal C{dsn}, and a connection to it.
    """
    cwd.mkdir(exist_ok=True)
    with Twistd(
        cwd,
        "--no-websocket",
        "--no-smtp-sink",
        "--tasks",
        "tests.pgtasks",
        "--tasks",
        "tests.jobtasks",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--jobs-db",
        dsn,
        "--server-timeout",
        str(SERVER_TIMEOUT),
        *args,
    ) as server:
        rpc = Rpc(server.connect(port))
        try:
            yield server, rpc
        finally:
            rpc.close()


def pipelined(rpc: Rpc, requests: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """
    Send every request at once, then read their replies (by id, in order).
    """
    lines = []
    for n, (method, params) in enumerate(requests, start=1_000_000):
        lines.append(
            json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params})
        )
    rpc.connection.sendall(("\n".join(lines) + "\n").encode())
    replies: dict[int, dict[str, Any]] = {}
    while len(replies) < len(requests):
        line = rpc.reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        reply = json.loads(line)
        if "id" in reply:
            replies[reply["id"]] = reply
    return [replies[n] for n in range(1_000_000, 1_000_000 + len(requests))]


def test_anyServerAnswersForAnyJob(tmp_path: Path, pgDSN: str) -> None:
    """
    With a job running on server A: server B reports it ($/job), follows it
    ($/attach: the latest progress at once, then each further step, then the
    result, all through the database's notifications) and cancels another
    job running on A ($/cancelJob: A kills its worker; B's reply, and A's
    record, say cancelled). A job submitted to B while B's only job slot is
    taken is run by A, woken by the notification.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    d = str(runsDir)
    portA, portB = freePort(), freePort()
    with ExitStack() as stack:
        serverA, a = stack.enter_context(
            pgServer(tmp_path / "a", pgDSN, portA, "--workers", "2")
        )
        resumeJob = a.submit("resume", [d, "resume"])
        cancelJob = a.submit("once", [d, "doomed", "never"])
        runsOf(runsDir, "resume", 1)
        runsOf(runsDir, "doomed", 1)
        waitFor(
            "the checkpoint",
            lambda: (
                True
                if a.job(resumeJob)["progress"] == {"done": 2, "total": 4}
                else None
            ),
        )
        serverB, b = stack.enter_context(
            pgServer(
                tmp_path / "b",
                pgDSN,
                portB,
                "--workers",
                "1",
                "--job-concurrency",
                "1",
            )
        )
        seen = b.job(resumeJob)
        assert (seen["state"], seen["progress"]) == (
            "running",
            {"done": 2, "total": 4},
        ), seen

        b.connection.sendall(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 99,
                    "method": "$/attach",
                    "params": {"job": resumeJob},
                }
            ).encode()
            + b"\n"
        )
        first = json.loads(b.reader.readline())
        assert first["method"] == "$/progress", first
        assert first["params"] == {"done": 2, "total": 4, "job": resumeJob, "id": 99}
        (runsDir / "release").touch()
        progress = []
        while True:
            message = json.loads(b.reader.readline())
            if "id" in message:
                break
            progress.append((message["params"]["done"], message["params"]["total"]))
        assert message == {
            "jsonrpc": "2.0",
            "id": 99,
            "result": {"attempt": 1, "resumedAt": 0},
        }, message
        # Progress from another server comes as saved: at most one update
        # per commit of its journal, the latest, and the last with the end.
        assert progress in ([(3, 4), (4, 4)], [(4, 4)]), progress

        assert b.job(cancelJob)["state"] == "running"
        cancelled = b.result("$/cancelJob", {"job": cancelJob})
        assert cancelled == {"job": cancelJob, "state": "cancelled"}, cancelled
        record = a.job(cancelJob)
        assert record["state"] == "cancelled", record
        assert record["error"]["code"] == -32800, record

        # B's one slot is taken: the next job it is given is A's to run.
        busy = b.submit("once", [d, "busy", "hold"])
        runsOf(runsDir, "busy", 1)
        woken = b.submit("quick", [d, "woken"])
        done = b.until(woken, *FINAL)
        assert done["state"] == "succeeded", done
        [ran] = runsOf(runsDir, "woken", 1)
        workersOfA = {p.pid for p in serverA.family()}
        assert ran["pid"] in workersOfA, (ran, workersOfA)
        (runsDir / "hold").touch()
        assert b.until(busy, *FINAL)["state"] == "succeeded"


def test_serverKilledMidRunWithAThousandJobs(tmp_path: Path, pgDSN: str) -> None:
    """
    Two servers share 1,000 jobs (half of an idempotent task, half of one
    that is not); one is SIGKILLed mid-run. The other recovers its jobs by
    itself: every job ends exactly once, none is lost; the idempotent ones
    all succeeded, the others succeeded or are interrupted and never ran
    twice; and no job ever had two runs at once: a later run of a job
    always started after the earlier one returned or, for a run cut short
    by the kill, after every process of the killed server was gone (seen
    within 50 ms of the kill; the survivor waits for the 2 s server
    timeout).
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    d = str(runsDir)
    # 20 ms a run: A's 500 jobs take its 2 workers ~5 s, so A is still
    # running its share when the kill comes, however slowly B's 500
    # submissions went in on a loaded machine (with 5 ms a run, A could end
    # its share before the test began to wait, and nothing was recovered).
    portA, portB = freePort(), freePort()
    options = ("--workers", "2", "--job-concurrency", "20")
    with ExitStack() as stack:
        serverA, a = stack.enter_context(
            pgServer(tmp_path / "a", pgDSN, portA, *options)
        )
        serverB, b = stack.enter_context(
            pgServer(tmp_path / "b", pgDSN, portB, *options)
        )
        requests = [
            (
                "$/submit",
                {"method": "safeStep" if n % 2 else "unsafeStep", "params": [d, 0.02]},
            )
            for n in range(1000)
        ]
        replies = pipelined(a, requests[:500]) + pipelined(b, requests[500:])
        jobs = {}
        for (_, params), reply in zip(requests, replies, strict=True):
            assert "result" in reply, reply
            jobs[reply["result"]["job"]] = params["method"]
        assert len(jobs) == 1000

        waitFor(
            "300 runs",
            lambda: True if len(list(runsDir.iterdir())) >= 300 else None,
        )
        pidsOfA = {p.pid for p in serverA.family()}
        serverA.process.kill()
        killedAt = time.time()
        assert serverA.process.wait(timeout=DEADLINE) == -signal.SIGKILL
        gone(serverA)
        goneAt = time.time()
        assert goneAt - killedAt < SERVER_TIMEOUT

        def allFinal() -> dict[str, Any] | None:
            counts = b.result("$/stats")["jobs"]
            return counts if sum(counts[s] for s in FINAL) == 1000 else None

        counts = waitFor("every job to end", allFinal)
        assert counts["failed"] == counts["cancelled"] == 0, counts
        states = pipelined(b, [("$/job", {"job": jobId}) for jobId in jobs])

    runs = runsByJob(runsDir)
    recovered = 0
    for reply in states:
        job = reply["result"]
        jobId, method = job["job"], jobs[job["job"]]
        mine = runs.get(jobId, [])
        if method == "safeStep":
            assert job["state"] == "succeeded", job
            assert mine and mine[-1]["end"] is not None, (job, mine)
            recovered += job["attempts"] > 1
        else:
            assert job["state"] in ("succeeded", "interrupted"), job
            assert len(mine) <= 1, (job, mine)
            if job["state"] == "succeeded":
                assert len(mine) == 1 and mine[0]["end"] is not None, (job, mine)
            else:
                recovered += 1
                assert job["error"]["code"] == -32008, job
        assert job["attempts"] >= len(mine), (job, mine)
        for earlier, later in itertools.pairwise(mine):
            if earlier["end"] is not None:
                assert earlier["end"] <= later["start"], (job, mine)
            else:
                assert earlier["pid"] in pidsOfA, (job, mine)
                assert later["start"] > goneAt, (job, mine, goneAt)
    # The kill caught jobs mid-run, and the survivor took them over.
    assert recovered > 0
    ranOnA = {run["pid"] for r in runs.values() for run in r} & pidsOfA
    assert ranOnA, "server A ran none of the jobs"
