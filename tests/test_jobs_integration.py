"""
Durable jobs on faults, as an operator meets them: real C{twistd taskservice}
subprocesses on a real SQLite file, real worker processes, real sockets.

The tasks (L{tests.jobtasks}) leave a file per run in a directory of the
test's, so what ran, how often, at which attempt and with which checkpoint
is seen from outside, whatever happened to the processes. Tasks caught
mid-run wait for a gate file the test creates.

Like tests/test_twistd.py these are plain, blocking test functions; every
wait polls with a deadline.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from taskservice._sqlitejournal import APPLICATION_ID, SCHEMA_VERSION
from taskservice.testing import Twistd, freePort
from tests.jobtasks import runs
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


@pytest.fixture(autouse=True)
def pythonPath(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The twistd processes (and their workers) import L{tests.jobtasks} from
    this checkout.
    """
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


class Rpc:
    """
    A blocking JSON-RPC line connection: one request at a time, its reply
    matched by id; notifications met on the way are kept.
    """

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.reader = connection.makefile("rb")
        self.notifications: list[dict[str, Any]] = []
        self._nextId = 0

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        self._nextId += 1
        message: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": self._nextId,
            "method": method,
        }
        if params is not None:
            message["params"] = params
        self.connection.sendall(json.dumps(message).encode() + b"\n")
        while True:
            line = self.reader.readline()
            assert line.endswith(b"\n"), f"connection closed: {line!r}"
            reply: dict[str, Any] = json.loads(line)
            if "id" in reply:
                assert reply["id"] == self._nextId, reply
                return reply
            self.notifications.append(reply)

    def result(self, method: str, params: Any = None) -> Any:
        reply = self.request(method, params)
        assert "result" in reply, reply
        return reply["result"]

    def submit(self, method: str, params: Any, **options: Any) -> str:
        submitted = self.result(
            "$/submit", {"method": method, "params": params, **options}
        )
        jobId: str = submitted["job"]
        return jobId

    def job(self, jobId: str) -> dict[str, Any]:
        job: dict[str, Any] = self.result("$/job", {"job": jobId})
        return job

    def until(self, jobId: str, *states: str) -> dict[str, Any]:
        """
        Poll C{$/job} until the job is in one of C{states}.
        """

        def inState() -> dict[str, Any] | None:
            job = self.job(jobId)
            return job if job["state"] in states else None

        return waitFor(f"job {jobId} to be {' or '.join(states)}", inState)

    def close(self) -> None:
        self.reader.close()
        self.connection.close()


@contextmanager
def jobServer(
    cwd: Path, journal: Path, port: int, *args: str
) -> Iterator[tuple[Twistd, Rpc]]:
    """
    A task server (no gateway, no SMTP sink) running L{tests.jobtasks} with
    its journal at C{journal}, and a connection to it.
    """
    cwd.mkdir(exist_ok=True)
    with Twistd(
        cwd,
        "--no-websocket",
        "--no-smtp-sink",
        "--tasks",
        "tests.jobtasks",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--jobs-db",
        str(journal),
        *args,
    ) as server:
        rpc = Rpc(server.connect(port))
        try:
            yield server, rpc
        finally:
            rpc.close()


def runsOf(directory: Path, name: str, count: int) -> list[dict[str, Any]]:
    """
    Wait until C{name} has run C{count} times; return its runs.
    """
    return waitFor(
        f"{count} run(s) of {name}",
        lambda: found if len(found := runs(directory, name)) >= count else None,
    )


def gone(server: Twistd) -> None:
    """
    Wait until no process of C{server} (twistd or a worker) is left.
    """
    waitFor("no process of twistd left", lambda: True if not server.family() else None)


def test_parentKilledThenRestarted(tmp_path: Path) -> None:
    """
    twistd is SIGKILLed with jobs running (of an idempotent, a
    non-idempotent and a resumable task), queued and scheduled, and started
    again on the same journal: the queued job runs; the scheduled one runs
    once, not before its time; the idempotent job runs again as attempt 2;
    the resumable one runs again and sees, through currentJob(), the
    progress its first attempt reported; the non-idempotent one is
    interrupted (-32008, saying why) and never runs again.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    d = str(runsDir)
    journal = tmp_path / "jobs.sqlite3"
    port = freePort()
    with jobServer(
        tmp_path / "first", journal, port, "--workers", "3", "--job-concurrency", "3"
    ) as (server, rpc):
        againJob = rpc.submit("again", [d, "again"])
        onceJob = rpc.submit("once", [d, "once"])
        resumeJob = rpc.submit("resume", [d, "resume"])
        runsOf(runsDir, "again", 1)
        runsOf(runsDir, "once", 1)
        runsOf(runsDir, "resume", 1)
        waitFor(
            "the resumable job's checkpoint",
            lambda: (
                True
                if rpc.job(resumeJob)["progress"] == {"done": 2, "total": 4}
                else None
            ),
        )
        # A $/job is read by the journal's writer after every write queued
        # before it: once this one answers, the checkpoint is committed.
        rpc.job(resumeJob)
        # All three job slots are taken: this one waits in the journal.
        queuedJob = rpc.submit("quick", [d, "queued"])
        scheduledJob = rpc.submit("quick", [d, "scheduled"], delay=4.0)
        assert rpc.job(queuedJob)["state"] == "queued"
        scheduled = rpc.job(scheduledJob)
        assert scheduled["state"] == "scheduled", scheduled
        assert [rpc.job(j)["state"] for j in (againJob, onceJob, resumeJob)] == [
            "running"
        ] * 3
        server.process.kill()
        assert server.process.wait(timeout=DEADLINE) == -signal.SIGKILL
        gone(server)
    assert runs(runsDir, "queued") == [] and runs(runsDir, "scheduled") == []
    (runsDir / "release").touch()

    with jobServer(tmp_path / "second", journal, port) as (server, rpc):
        if time.time() < scheduled["runAt"]:
            # (Unless this machine took 4 s to restart.)
            assert rpc.job(scheduledJob)["state"] == "scheduled"
        queued = rpc.until(queuedJob, *FINAL)
        assert (queued["state"], queued["attempts"]) == ("succeeded", 1), queued

        again = rpc.until(againJob, *FINAL)
        assert again["state"] == "succeeded", again
        assert (again["attempts"], again["result"]) == (2, 2), again
        assert [run["attempt"] for run in runs(runsDir, "again")] == [1, 2]

        resumed = rpc.until(resumeJob, *FINAL)
        assert resumed["state"] == "succeeded", resumed
        assert resumed["result"] == {"attempt": 2, "resumedAt": 2}, resumed
        resumeRuns = runs(runsDir, "resume")
        assert [run["progress"] for run in resumeRuns] == [
            None,
            {"done": 2, "total": 4},
        ], resumeRuns

        interrupted = rpc.job(onceJob)
        assert interrupted["state"] == "interrupted", interrupted
        assert interrupted["attempts"] == 1, interrupted
        error = interrupted["error"]
        assert error["code"] == -32008, error
        assert error["data"]["job"] == onceJob, error
        assert "not safe to run again" in error["data"]["reason"], error
        attach = rpc.request("$/attach", {"job": onceJob})
        assert attach["error"]["code"] == -32008, attach

        done = rpc.until(scheduledJob, *FINAL)
        assert (done["state"], done["attempts"]) == ("succeeded", 1), done
        [ran] = runs(runsDir, "scheduled")
        assert ran["at"] >= scheduled["runAt"], (ran, scheduled)

        # Everything else has finished, with the gate open: a second run of
        # the interrupted job (or of the scheduled one) would be there.
        assert rpc.result("$/stats")["jobs"]["running"] == 0
        assert len(runs(runsDir, "once")) == 1
        assert len(runs(runsDir, "scheduled")) == 1
        assert rpc.job(onceJob)["state"] == "interrupted"


def test_workerLostMidJob(tmp_path: Path) -> None:
    """
    A job whose task SIGKILLs its own worker is retried with exponential
    back-off while it has attempts left (here it survives its third); one
    whose task kills its worker every time stops after its attempts (the
    task's own retries=2), failed with -32002 "worker lost", as does one
    with no retries after its only run. The runs are bounded, and the pool,
    its workers replaced, still answers plain calls.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    d = str(runsDir)
    port = freePort()
    with jobServer(tmp_path, tmp_path / "jobs.sqlite3", port, "--workers", "2") as (
        server,
        rpc,
    ):
        retried = rpc.submit("killsWorker", [d, "retried", 3], retries=2, backoff=0.5)
        doomed = rpc.submit("alwaysKillsWorker", [d, "doomed"])
        lost = rpc.submit("killsWorker", [d, "lost"])

        ok = rpc.until(retried, *FINAL)
        assert ok["state"] == "succeeded", ok
        assert (ok["attempts"], ok["maxAttempts"], ok["result"]) == (3, 3, 3), ok
        first, second, third = runs(runsDir, "retried")
        assert [first["attempt"], second["attempt"], third["attempt"]] == [1, 2, 3]
        # backoff * 2**(attempt-1) * (0.5 + random()): 0.25-0.75 s, then
        # 0.5-1.5 s (plus the time to notice the loss and start the run).
        firstWait = second["at"] - first["at"]
        secondWait = third["at"] - second["at"]
        assert 0.25 <= firstWait < 0.75 + 5, (firstWait, secondWait)
        assert 0.5 <= secondWait < 1.5 + 5, (firstWait, secondWait)

        for jobId, attempts in ((doomed, 3), (lost, 1)):
            failed = rpc.until(jobId, *FINAL)
            assert failed["state"] == "failed", failed
            assert failed["attempts"] == failed["maxAttempts"] == attempts, failed
            assert failed["error"]["code"] == -32002, failed
            assert failed["error"]["message"] == "worker lost", failed
            attach = rpc.request("$/attach", {"job": jobId})
            assert attach["error"]["code"] == -32002, attach

        # No crash loop: the pool is whole again and serves plain calls,
        # and no further run of the failed jobs happened meanwhile.
        def whole() -> dict[str, Any] | None:
            stats: dict[str, Any] = rpc.result("$/stats")
            return stats if stats["workers"]["idle"] == 2 else None

        stats = waitFor("both workers back", whole)
        assert stats["jobs"]["failed"] == 2, stats
        for i in range(5):
            assert rpc.result("echo", [i]) == i
        assert len(runs(runsDir, "doomed")) == 3
        assert len(runs(runsDir, "lost")) == 1
        assert len(runs(runsDir, "retried")) == 3


def test_sigtermDrainsThenLeavesTheRest(tmp_path: Path) -> None:
    """
    SIGTERM with three jobs running: the one that finishes within
    --shutdown-timeout is recorded succeeded before twistd exits; the two
    still running when it runs out are left to the next start, where the
    idempotent one runs again (attempt 2) and the other is interrupted
    (-32008) without running again.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    d = str(runsDir)
    journal = tmp_path / "jobs.sqlite3"
    port = freePort()
    shutdownTimeout = 3.0
    with jobServer(
        tmp_path / "first",
        journal,
        port,
        "--workers",
        "3",
        "--shutdown-timeout",
        str(shutdownTimeout),
    ) as (server, rpc):
        finishing = rpc.submit("once", [d, "finishing", "finish"])
        leftAgain = rpc.submit("again", [d, "leftAgain"])
        leftOnce = rpc.submit("once", [d, "leftOnce"])
        for name in ("finishing", "leftAgain", "leftOnce"):
            runsOf(runsDir, name, 1)
        terminated = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        def refused() -> bool | None:
            try:
                socket.create_connection((HOST, port), timeout=DEADLINE).close()
            except ConnectionRefusedError:
                return True
            return None

        # The listener is closed: the stop is under way. Only now may the
        # first job finish.
        waitFor("twistd to stop listening", refused)
        (runsDir / "finish").touch()
        assert server.process.wait(timeout=DEADLINE) == -signal.SIGTERM
        stopping = time.monotonic() - terminated
        output = server.output()
        assert stopping >= shutdownTimeout, (stopping, output)
        assert "Traceback" not in output, output
        gone(server)
    (runsDir / "release").touch()

    with jobServer(tmp_path / "second", journal, port) as (server, rpc):
        finished = rpc.job(finishing)
        assert finished["state"] == "succeeded", finished
        assert (finished["attempts"], finished["result"]) == (1, 1), finished
        assert finished["finishedAt"] is not None

        again = rpc.until(leftAgain, *FINAL)
        assert again["state"] == "succeeded", again
        assert (again["attempts"], again["result"]) == (2, 2), again

        interrupted = rpc.job(leftOnce)
        assert interrupted["state"] == "interrupted", interrupted
        assert interrupted["error"]["code"] == -32008, interrupted
        assert rpc.result("$/stats")["jobs"]["running"] == 0
        assert len(runs(runsDir, "finishing")) == 1
        assert len(runs(runsDir, "leftOnce")) == 1
        assert len(runs(runsDir, "leftAgain")) == 2


def _refusedWhileBroken(
    rpc: Rpc, runsDir: Path, breakIt: Callable[[], object], mend: Callable[[], object]
) -> str:
    """
    With the journal working, then broken by C{breakIt}, then mended: while
    broken, $/submit answers -32009 with a reason, which $/stats shows, and
    reading a job and plain calls keep working on the same connection; once
    mended, submits are accepted and run. Return the reason.
    """
    d = str(runsDir)
    before = rpc.submit("quick", [d, "before"])
    assert rpc.until(before, *FINAL)["state"] == "succeeded"
    breakIt()
    try:
        refused = rpc.request("$/submit", {"method": "quick", "params": [d, "refused"]})
        error = refused.get("error")
        assert error is not None and error["code"] == -32009, refused
        reason: str = error["data"]["reason"]
        assert reason, refused
        assert rpc.result("echo", ["still here"]) == "still here"
        assert rpc.result("$/stats")["jobs"]["journal"] == reason
        assert rpc.job(before)["state"] == "succeeded"
    finally:
        mend()
    after = rpc.submit("quick", [d, "after"])
    assert rpc.until(after, *FINAL)["state"] == "succeeded"
    assert rpc.result("$/stats")["jobs"]["journal"] == "ok"
    assert runs(runsDir, "refused") == []
    assert rpc.result("echo", [1]) == 1
    return reason


def test_journalThatCannotBeWritten(tmp_path: Path) -> None:
    """
    The journal's file cannot be written while the server runs: twistd's
    file-size limit is lowered to one byte (prlimit; as root too), so every
    write SQLite makes fails. Submits are refused with -32009 while plain
    calls carry on, and accepted again once the limit is lifted.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    port = freePort()
    with jobServer(tmp_path, tmp_path / "jobs.sqlite3", port, "--workers", "1") as (
        server,
        rpc,
    ):
        pid = server.process.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        reason = _refusedWhileBroken(
            rpc,
            runsDir,
            lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard)),
            lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard)),
        )
        assert "I/O error" in reason or "full" in reason, reason


@contextmanager
def smallFilesystem(directory: Path) -> Iterator[Path]:
    """
    A 1 MiB tmpfs mounted on C{directory}, for as long as the context
    lasts (skip where mounting is not permitted).
    """
    directory.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(path: Path) -> None:
    """
    Write C{path} until its filesystem has not one byte left.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 16 or 1]
    finally:
        os.close(fd)


def test_journalOnAFullDisk(tmp_path: Path) -> None:
    """
    The journal's disk (a tiny tmpfs) fills up while the server runs:
    submits are refused with -32009 saying the disk is full, plain calls
    carry on; once space is freed, submits are accepted again.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    port = freePort()
    with smallFilesystem(tmp_path / "disk") as disk:
        filler = disk / "filler"
        with jobServer(
            tmp_path / "cwd", disk / "jobs.sqlite3", port, "--workers", "1"
        ) as (server, rpc):
            reason = _refusedWhileBroken(
                rpc, runsDir, lambda: fill(filler), filler.unlink
            )
            assert "full" in reason, reason
        gone(server)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def _refusedAtStart(tmp_path: Path, journal: Path, *expected: str) -> None:
    """
    twistd started on C{journal} exits non-zero, its output naming the
    file and saying C{expected}, leaving the file's directory as it was.
    """
    before = _snapshot(journal.parent)
    port = freePort()
    cwd = tmp_path / f"run-{journal.name}"
    cwd.mkdir()
    with Twistd(
        cwd,
        "--no-websocket",
        "--no-smtp-sink",
        "--workers",
        "1",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--jobs-db",
        str(journal),
    ) as server:
        returncode = waitFor("twistd to exit", server.exited)
        output = server.output()
        assert returncode != 0, output
        assert str(journal) in output, output
        for text in expected:
            assert text in output, output
        gone(server)
    assert _snapshot(journal.parent) == before


def test_startUpErrors(tmp_path: Path) -> None:
    """
    A journal path holding a file that is not SQLite, an SQLite database of
    another application, or a journal of a newer schema makes twistd exit
    non-zero with a message naming the file, which is left as it was (no
    byte changed, nothing added beside it).
    """
    files = tmp_path / "files"
    files.mkdir()
    text = files / "notes.txt"
    text.write_bytes(b"not a database at all\n" * 100)
    _refusedAtStart(tmp_path, text, "is not an SQLite database")

    foreign = files / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()
    _refusedAtStart(tmp_path, foreign, "another application")

    newer = files / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("CREATE TABLE jobs (id TEXT)")
    db.close()
    _refusedAtStart(tmp_path, newer, f"schema {SCHEMA_VERSION + 1}")


def test_secondServerOnTheSameJournal(tmp_path: Path) -> None:
    """
    A second twistd on a journal another one is using exits non-zero,
    naming the file and saying it is in use, without changing it; the first
    server carries on.
    """
    runsDir = tmp_path / "runs"
    runsDir.mkdir()
    journalDir = tmp_path / "journal"
    journalDir.mkdir()
    journal = journalDir / "jobs.sqlite3"
    with jobServer(tmp_path / "first", journal, freePort(), "--workers", "1") as (
        server,
        rpc,
    ):
        first = rpc.submit("quick", [str(runsDir), "first"])
        assert rpc.until(first, *FINAL)["state"] == "succeeded"
        _refusedAtStart(tmp_path, journal, "in use by another task server")
        assert server.exited() is None
        later = rpc.submit("quick", [str(runsDir), "later"])
        assert rpc.until(later, *FINAL)["state"] == "succeeded"


def test_unknownJobIds(tmp_path: Path) -> None:
    """
    $/job, $/attach and $/cancelJob of an id the journal does not hold
    answer -32007 naming the id; the connection keeps working.
    """
    port = freePort()
    with jobServer(tmp_path, tmp_path / "jobs.sqlite3", port, "--workers", "1") as (
        server,
        rpc,
    ):
        for method in ("$/job", "$/attach", "$/cancelJob"):
            reply = rpc.request(method, {"job": "no-such-job"})
            assert reply["error"]["code"] == -32007, reply
            assert reply["error"]["data"] == {"job": "no-such-job"}, reply
            assert rpc.result("echo", [method]) == method
        assert rpc.result("$/jobs") == []


def test_submitAndWait(tmp_path: Path) -> None:
    """
    C{$/submit} with C{"wait": true} on a real server: the job's id comes
    first (a C{$/progress} of the request, once it is committed), the reply
    is the job's result. A connection lost mid-wait leaves the job running:
    it ends succeeded, and another connection attaches to its result.
    """
    port = freePort()
    with jobServer(tmp_path, tmp_path / "jobs.sqlite3", port, "--workers", "1") as (
        server,
        rpc,
    ):
        reply = rpc.request(
            "$/submit", {"method": "echo", "params": [42], "wait": True}
        )
        assert reply["result"] == 42, reply
        [told] = rpc.notifications
        assert told["method"] == "$/progress", told
        assert told["params"]["id"] == reply["id"], told
        jobId = told["params"]["job"]
        assert told["params"]["state"] in ("queued", "running"), told
        assert rpc.job(jobId)["state"] == "succeeded"

        other = Rpc(server.connect(port))
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "$/submit",
            "params": {
                "method": "once",
                "params": [str(tmp_path), "lost"],
                "wait": True,
            },
        }
        other.connection.sendall(json.dumps(request).encode() + b"\n")
        first = json.loads(other.reader.readline())
        assert first["method"] == "$/progress", first
        lost = first["params"]["job"]
        runsOf(tmp_path, "lost", 1)
        other.close()
        (tmp_path / "release").touch()
        done = rpc.until(lost, *FINAL)
        assert done["state"] == "succeeded", done
        assert rpc.result("$/attach", {"job": lost}) == 1
