"""
The tools of the benchmarks' TCP and websocket load scenarios: the compiled
epoll load client (C{taskservice/bench/loadclient.c}, built by
L{taskservice.bench._loadclient}) and the FAQ-style baseline server
(L{taskservice.bench._faqserver}).

Each client mode runs a few hundred calls against a real C{twistd
taskservice} (task server and websocket gateway) and against the baseline,
and must get every reply right; servers that answer wrongly, slowly, in
pieces or not at all show that the client's checks and its timeout work.
Real processes and loopback sockets; no timing is asserted.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted

from taskservice.bench import _faqserver, _twistedecho
from taskservice.bench._jobs import jobsScenario
from taskservice.bench._loadclient import (
    NO_COMPILER,
    LoadResult,
    build,
    compiler,
    run,
)
from taskservice.bench._tcp import tcpScenario
from taskservice.bench._wsload import wsloadScenario
from taskservice.testing import Twistd, freePort
from tests.test_twistd import HOST

pytestmark = pytest.mark.integration

TOTAL = 200


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The load client, built into a temporary cache directory.
    """
    if compiler() is None:
        pytest.skip("no C compiler (cc) to build the load client")
    binary = build(tmp_path_factory.mktemp("cache"))
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def taskservice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """
    twistd taskservice with 2 workers and its gateway: the ports of its task
    server ("tcp") and of its websocket gateway ("ws").
    """
    ports = {"tcp": freePort(), "ws": freePort()}
    with Twistd(
        tmp_path_factory.mktemp("twistd"),
        "--workers",
        "2",
        "--no-smtp-sink",
        "--listen",
        f"tcp:{ports['tcp']}:interface={HOST}",
        "--websocket",
        f"tcp:{ports['ws']}:interface={HOST}",
    ) as server:
        for port in ports.values():
            server.connect(port).close()
        yield ports


@pytest.fixture(scope="module")
def faqServer() -> Iterator[_faqserver.FaqServer]:
    server = _faqserver.start(2)
    yield server
    server.stop()


def assertAllAnswered(result: LoadResult, connections: int) -> None:
    assert (result.calls, result.ok, result.errors) == (TOTAL, TOTAL, 0), result
    assert result.firstError == "", result
    assert result.connections == connections, result
    assert result.p50 is not None
    assert result.p99 is not None
    assert 0 < result.p50 <= result.p99, result


def test_buildIsCached(client: Path) -> None:
    """
    Building again with the same source reuses the cached binary.
    """
    before = client.stat().st_mtime_ns
    assert build(client.parent) == client
    assert client.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("mode", "connections"), [("persistent", 10), ("faq", 10), ("sequential", 1)]
)
def test_tcpModesAgainstTaskservice(
    client: Path, taskservice: dict[str, int], mode: str, connections: int
) -> None:
    """
    Every TCP mode gets all its calls answered right by twistd taskservice:
    JSON-RPC on persistent connections, the FAQ dialect on a connection
    per call.
    """
    result = run(client, mode, taskservice["tcp"], TOTAL, connections, timeout=30)
    assertAllAnswered(result, connections)


@pytest.mark.parametrize(
    ("mode", "connections"), [("ws-persistent", 10), ("ws-sequential", 1)]
)
def test_websocketModesAgainstTaskservice(
    client: Path, taskservice: dict[str, int], mode: str, connections: int
) -> None:
    """
    The websocket modes upgrade (with the gateway's own Origin) and get all
    their calls answered right through the gateway.
    """
    result = run(client, mode, taskservice["ws"], TOTAL, connections, timeout=30)
    assertAllAnswered(result, connections)


@pytest.mark.parametrize(
    ("mode", "connections"), [("jobs", 10), ("jobs-sequential", 1), ("submit", 10)]
)
def test_jobModesAgainstTaskservice(
    client: Path, taskservice: dict[str, int], mode: str, connections: int
) -> None:
    """
    The durable-job modes get every job submitted (and, but for submit,
    attached to and answered with its echo) by twistd taskservice, and
    time the submits on their own.
    """
    result = run(client, mode, taskservice["tcp"], TOTAL, connections, timeout=30)
    assertAllAnswered(result, connections)
    assert result.submitP50 is not None
    assert result.submitP99 is not None
    assert 0 < result.submitP50 <= result.submitP99, result


@pytest.mark.parametrize(
    ("mode", "connections"), [("persistent", 10), ("faq", 10), ("sequential", 1)]
)
def test_tcpModesAgainstFaqServer(
    client: Path, faqServer: _faqserver.FaqServer, mode: str, connections: int
) -> None:
    """
    The FAQ-style baseline answers both dialects right, in every mode.
    """
    result = run(client, mode, faqServer.port, TOTAL, connections, timeout=30)
    assertAllAnswered(result, connections)


@pytest.mark.parametrize(
    ("mode", "connections"), [("persistent", 10), ("faq", 10), ("sequential", 1)]
)
def test_tcpModesAgainstInlineTwisted(
    client: Path, mode: str, connections: int
) -> None:
    """
    The inline Twisted reference answers both dialects right, in every mode,
    and stops when told.
    """
    server = _twistedecho.start()
    try:
        result = run(client, mode, server.port, TOTAL, connections, timeout=30)
        assertAllAnswered(result, connections)
    finally:
        server.stop()


def test_faqServerStopReapsItsChildren() -> None:
    """
    Stopping the FAQ-style server leaves none of its processes behind.
    """
    server = _faqserver.start(2)
    children = [
        int(pid)
        for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children")
        .read_text()
        .split()
    ]
    assert len(children) == 2
    server.stop()
    for pid in [server.pid, *children]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


Reply = Callable[[bytes], bytes]


def _echoId(line: bytes) -> int:
    import json

    request = json.loads(line)
    value: int = request["params"][0] if "params" in request else request["args"][0]
    return value


def wrongResult(line: bytes) -> bytes:
    k = _echoId(line)
    return b'{"jsonrpc":"2.0","id":%d,"result":%d}\n' % (k, k + 1)


def wrongId(line: bytes) -> bytes:
    k = _echoId(line)
    return b'{"jsonrpc":"2.0","id":%d,"result":%d}\n' % (k + 1, k)


def errorReply(line: bytes) -> bytes:
    k = _echoId(line)
    return b'{"jsonrpc":"2.0","id":%d,"error":{"code":-32000,"message":"no"}}\n' % k


def wrongBare(line: bytes) -> bytes:
    return b"%d\n" % (_echoId(line) + 1)


def rightReply(line: bytes) -> bytes:
    k = _echoId(line)
    if b'"function"' in line:
        return b"%d\n" % k
    return b'{"jsonrpc":"2.0","id":%d,"result":%d}\n' % (k, k)


@pytest.fixture
def lineServer() -> Iterator[Callable[[Reply, bool], int]]:
    """
    Start a threaded line server answering each line with C{reply(line)},
    byte by byte if asked; returns its port. Shut down after the test.
    """
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(reply: Reply, dribble: bool = False) -> int:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for line in self.rfile:
                    answer = reply(line)
                    if dribble:
                        for i in range(len(answer)):
                            self.wfile.write(answer[i : i + 1])
                    else:
                        self.wfile.write(answer)

        server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port: int = server.server_address[1]
        return port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("mode", "reply"),
    [
        ("persistent", wrongResult),
        ("persistent", wrongId),
        ("sequential", errorReply),
        ("faq", wrongBare),
    ],
)
def test_wrongRepliesAreErrors(
    client: Path, lineServer: Callable[[Reply, bool], int], mode: str, reply: Reply
) -> None:
    """
    A reply with the wrong result or id, or an error, counts as an error:
    the client's check can fail.
    """
    result = run(client, mode, lineServer(reply, False), 20, 2, timeout=10)
    assert (result.calls, result.ok, result.errors) == (20, 0, 20), result
    assert result.firstError.startswith("wrong reply: "), result


def jobReplies(offBy: int) -> Reply:
    """
    A fake job server: a submit of echo(K) names job C{j-K}; an attach to
    it sends a progress notification, then the result K + C{offBy}.
    """
    import json

    def reply(line: bytes) -> bytes:
        request = json.loads(line)
        if request["method"] == "$/submit":
            k = request["params"]["params"][0]
            return (
                b'{"jsonrpc":"2.0","id":%d,"result":{"job":"j-%d","state":"queued"}}\n'
                % (
                    request["id"],
                    k,
                )
            )
        job = request["params"]["job"]
        return (
            b'{"jsonrpc":"2.0","method":"$/progress","params":{"id":%d,"job":"%s",'
            b'"done":1,"total":1}}\n' % (request["id"], job.encode())
        ) + b'{"jsonrpc":"2.0","id":%d,"result":%d}\n' % (
            request["id"],
            int(job[2:]) + offBy,
        )

    return reply


@pytest.mark.parametrize("dribble", [False, True])
def test_jobModeAttachesToTheJobNamed(
    client: Path, lineServer: Callable[[Reply, bool], int], dribble: bool
) -> None:
    """
    The jobs mode attaches to the job id its submit was answered with,
    skips the progress notifications, and checks the result (whole replies
    or a byte at a time).
    """
    result = run(client, "jobs", lineServer(jobReplies(0), dribble), 20, 2, timeout=10)
    assert (result.calls, result.ok, result.errors) == (20, 20, 0), result


def test_jobModeWrongResultsAreErrors(
    client: Path, lineServer: Callable[[Reply, bool], int]
) -> None:
    """
    An attach answered with another result than the job's echo is an error.
    """
    result = run(client, "jobs", lineServer(jobReplies(1), False), 20, 2, timeout=10)
    assert (result.calls, result.ok, result.errors) == (20, 0, 20), result
    assert result.firstError.startswith("wrong attach reply: "), result


def test_jobModeWrongSubmitRepliesAreErrors(
    client: Path, lineServer: Callable[[Reply, bool], int]
) -> None:
    """
    A submit answered without a job id (here: a plain result) is an error,
    and no attach is sent for it.
    """
    import json

    def plainResult(line: bytes) -> bytes:
        k = json.loads(line)["id"]
        return b'{"jsonrpc":"2.0","id":%d,"result":%d}\n' % (k, k)

    result = run(client, "jobs", lineServer(plainResult, False), 20, 2, timeout=10)
    assert (result.calls, result.ok, result.errors) == (20, 0, 20), result
    assert result.firstError.startswith("wrong submit reply: "), result


@pytest.mark.parametrize("mode", ["persistent", "faq"])
def test_repliesInPieces(
    client: Path, lineServer: Callable[[Reply, bool], int], mode: str
) -> None:
    """
    Replies that arrive a byte at a time are put together: partial reads.
    """
    result = run(client, mode, lineServer(rightReply, True), 20, 2, timeout=10)
    assert (result.calls, result.ok, result.errors) == (20, 20, 0), result


@pytest.mark.parametrize("mode", ["persistent", "faq", "ws-persistent"])
def test_silentServerTimesOut(client: Path, mode: str) -> None:
    """
    A server that accepts but never answers: the run ends at its timeout
    and every call is an error.
    """
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(16)
        result = run(client, mode, silent.getsockname()[1], 10, 2, timeout=0.5)
    assert (result.calls, result.ok, result.errors) == (10, 0, 10), result
    assert result.firstError == "timed out", result


@pytest.mark.parametrize("mode", ["persistent", "faq", "ws-sequential"])
def test_nothingListening(client: Path, mode: str) -> None:
    """
    Connections refused: every call is an error and the run ends at once.
    """
    result = run(client, mode, freePort(), 10, 2, timeout=30)
    assert (result.calls, result.ok, result.errors) == (10, 0, 10), result
    assert "Connection refused" in result.firstError, result
    assert result.wall < 10, result


@pytest.mark.parametrize(
    "scenario",
    [
        tcpScenario,
        wsloadScenario,
        lambda *args: jobsScenario(None, *args),
    ],
)
@pytest_twisted.ensureDeferred
async def test_noCompilerSkipsTheScenarios(
    monkeypatch: pytest.MonkeyPatch, scenario: Callable[..., Awaitable[None]]
) -> None:
    """
    Without a C compiler the scenarios report that they were skipped
    instead of failing.
    """
    monkeypatch.setenv("CC", "no-such-compiler-here")
    rows: list[list[str]] = []
    notes: list[str] = []
    await scenario(1, True, rows, notes)
    assert len(rows) == 1
    assert rows[0][1] == NO_COMPILER
