"""
Metrics and JSON logs for real: C{/metrics} scraped over HTTP from a real
gateway site (real workers, real sockets on 127.0.0.1, port 0), and from a
real C{twistd taskservice --metrics} subprocess; and
C{twistd --logger=taskservice.logs.jsonLogger} writing JSON lines.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor

from taskservice.gateway import GatewaySite
from taskservice.metrics import makeRegistry
from taskservice.pool import ProcessPool
from taskservice.testing import Twistd, freePort
from tests.test_gateway_integration import Gateway, TaskServer
from tests.test_twistd import DEADLINE, HOST, call, waitFor

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of a Prometheus text exposition, by name and labels.
    """
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


@pytest_twisted.ensureDeferred
async def test_scrapeTheGatewaySite(tmp_path: Path) -> None:
    """
    A gateway site whose registry holds the pool's, the task server's and
    the gateway's metrics serves them at /metrics over HTTP, in the text
    format: after a browser's call, the call is counted by the pool and by
    the gateway, and the workers and connections are there.
    """
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    pool.startService()
    await pool.whenReady()
    server = TaskServer(pool)
    await server.listen()
    (tmp_path / "index.html").write_text("<title>tasks</title>")
    gateway = Gateway(server, tmp_path)
    registry = makeRegistry(pool=pool, server=server.factory, gateway=gateway.factory)
    gateway.site = GatewaySite(gateway.factory, tmp_path, metrics=registry)
    await gateway.start()
    try:
        browser = await gateway.browser()
        browser.call(1, "add", 2, 3)
        assert (await browser.next())["result"] == 5
        status, headers, body = await gateway.get("/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=")
        scraped = samples(body.decode())
        assert value(scraped, "taskservice_calls_total", task="add", outcome="ok") == 1
        assert value(scraped, "taskservice_call_seconds_count", task="add") == 1
        assert value(scraped, "taskservice_gateway_calls_total", outcome="ok") == 1
        assert value(scraped, "taskservice_gateway_browsers") == 1
        assert value(scraped, "taskservice_workers", state="idle") == 1
        assert value(scraped, "taskservice_connections") == 1
        assert value(scraped, "process_open_fds") is not None
    finally:
        await gateway.stop()
        await server.stopListening()
        await pool.stopService()


def get(port: int, path: str) -> tuple[int, str, str]:
    """
    A blocking HTTP GET on 127.0.0.1: status, content type and body.
    """
    try:
        with urllib.request.urlopen(
            f"http://{HOST}:{port}{path}", timeout=DEADLINE
        ) as response:
            return (
                response.status,
                response.headers["content-type"],
                response.read().decode(),
            )
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read().decode()


def test_metricsThroughTwistd(tmp_path: Path) -> None:
    """
    twistd taskservice --metrics serves the process's metrics on that
    endpoint, and the gateway's /metrics shows the same registry: the pool's
    calls and workers, the task server's connections, the gateway's
    counters, the process's own. Other paths of --metrics are 404.
    """
    listenPort, wsPort, metricsPort = freePort(), freePort(), freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:{listenPort}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
        "--metrics",
        f"tcp:{metricsPort}:interface={HOST}",
    ) as server:
        connection = server.connect(listenPort)
        with connection, connection.makefile("rb") as reader:
            assert call(
                connection,
                reader,
                b'{"jsonrpc":"2.0","id":1,"method":"echo","params":["hi"]}\n',
            ) == {"jsonrpc": "2.0", "id": 1, "result": "hi"}
            status, contentType, text = get(metricsPort, "/metrics")
            _, _, gatewayText = get(wsPort, "/metrics")
        assert status == 200, text
        assert contentType.startswith("text/plain; version="), contentType
        for scraped in (samples(text), samples(gatewayText)):
            ok = value(scraped, "taskservice_calls_total", task="echo", outcome="ok")
            assert ok == 1, scraped
            assert value(scraped, "taskservice_pool_size") == 1
            assert value(scraped, "taskservice_connections") is not None
            assert value(scraped, "taskservice_gateway_browsers") == 0
            assert value(scraped, "process_resident_memory_bytes")
        assert get(metricsPort, "/")[0] == 404
        assert get(metricsPort, "/stats")[0] == 404
        assert "Traceback" not in server.output(), server.output()


def test_metricsPortInUse(tmp_path: Path) -> None:
    """
    When the --metrics port is taken, twistd exits non-zero naming it,
    without starting a worker.
    """
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        metricsPort = squatter.getsockname()[1]
        with Twistd(
            tmp_path,
            "--workers",
            "1",
            # Port 0: no other port of the machine may be taken meanwhile.
            "--listen",
            f"tcp:0:interface={HOST}",
            "--no-websocket",
            "--no-smtp-sink",
            "--metrics",
            f"tcp:{metricsPort}:interface={HOST}",
        ) as server:
            returncode = waitFor("twistd to exit", server.exited)
            output = server.output()
            assert returncode == 1, output
            assert f"{HOST}:{metricsPort}" in output, output
            assert "started worker" not in output, output


def test_jsonLogsThroughTwistd(tmp_path: Path) -> None:
    """
    twistd --logger=taskservice.logs.jsonLogger writes every log event as
    one line of JSON on standard output, twistd's own included: a call
    past its deadline is logged with its task, call id and worker id, and
    every line has the formatted text and the level's name.
    """
    listenPort = freePort()
    with Twistd(
        tmp_path,
        "--workers",
        "1",
        "--listen",
        f"tcp:{listenPort}:interface={HOST}",
        "--no-websocket",
        twistdOptions=["--logger=taskservice.logs.jsonLogger"],
    ) as server:
        connection = server.connect(listenPort)
        with connection, connection.makefile("rb") as reader:
            reply = call(
                connection,
                reader,
                b'{"jsonrpc":"2.0","id":1,"method":"sleep","params":[30],'
                b'"timeout":0.2}\n',
            )
        assert reply["error"]["code"] == -32001, reply
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=DEADLINE) == -signal.SIGTERM
        waitFor("no process left", lambda: True if not server.family() else None)
        lines = server.output().splitlines()

    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\nin:\n" + "\n".join(lines))
    assert all(isinstance(e["text"], str) and e["level"] for e in events), events
    [timedOut] = [e for e in events if "passed its" in e["text"]]
    assert timedOut["level"] == "warn"
    assert timedOut["log_namespace"] == "taskservice.pool.ProcessPool"
    assert (timedOut["task"], timedOut["cid"], timedOut["timeout"]) == (
        "sleep",
        1,
        0.2,
    )
    assert isinstance(timedOut["workerID"], int)
    assert isinstance(timedOut["pid"], int)
    started = [
        e for e in events if e.get("log_format", "").startswith("started worker")
    ]
    assert [e["workerID"] for e in started] == [1, 2], "the killed one is replaced"
    assert any(e["text"] == "Server Shut Down." for e in events)
