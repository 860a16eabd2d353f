"""
docs/clients' examples, as they are in docs/examples/, against a real
C{twistd taskservice}: the plain script runs as a subprocess; the Flask
app through Flask's test client, the FastAPI app through Starlette's
TestClient (its lifespan included), the Django views through Django's
RequestFactory. Each calls and submits through taskservice.sync or
taskservice.aio; nothing is faked but the HTTP side.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.test_clients_integration import taskServer
from tests.test_twistd import DEADLINE, HOST, waitFor

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
TO = ["one@example.com", "two@example.com"]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One task server for the examples; TASKSERVICE_SERVER names it."""
    with taskServer(tmp_path_factory.mktemp("examples")) as server:
        endpoint = f"tcp:{HOST}:{server.port}"
        previous = os.environ.get("TASKSERVICE_SERVER")
        os.environ["TASKSERVICE_SERVER"] = endpoint
        try:
            yield endpoint
        finally:
            if previous is None:
                del os.environ["TASKSERVICE_SERVER"]
            else:
                os.environ["TASKSERVICE_SERVER"] = previous


def example(name: str) -> ModuleType:
    """Import docs/examples/NAME.py (under a name of its own)."""
    spec = importlib.util.spec_from_file_location(
        f"docs_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def untilEnded(status: Any) -> Any:
    """Poll C{status()} (a JSON body) until its job has ended."""

    def ended() -> Any:
        body = status()
        return body if body["state"] == "succeeded" else None

    return waitFor("the job to end", ended)


def test_plainScript(endpoint: str) -> None:
    """The script prints a result, progress, a task's error and a job's."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "script.py")],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
        env={**os.environ, "TASKSERVICE_SERVER": endpoint},
    )
    lines = done.stdout.splitlines()
    assert lines[:5] == [
        "fib(30) = 832040",
        "sent 1 of 2",
        "sent 2 of 2",
        "{'sent': 2}",
        "failed: ValueError no such user",
    ], done.stdout
    assert lines[5].startswith("job ") and lines[5].endswith("-> {'sent': 1}")


def test_flask(endpoint: str) -> None:
    """
    The Flask views call, submit and report a job; an unknown job is 404
    and a task server error becomes 502.
    """
    module = example("flask_app")
    with module.app.test_client() as http:
        assert http.get("/fib/20").get_json() == {"result": 6765}
        started = http.post("/campaigns", json={"to": TO})
        assert started.status_code == 202
        jobId = started.get_json()["job"]
        ended = untilEnded(lambda: http.get(f"/campaigns/{jobId}").get_json())
        assert ended["result"] == {"sent": 2}
        assert ended["progress"]["done"] == 2
        assert http.get("/campaigns/nope").status_code == 404
        assert http.get("/fib/-1").status_code == 404  # Flask's int: no sign
    module.tasks.close()


def test_fastapi(endpoint: str) -> None:
    """The FastAPI handlers call, submit and report, in the app's loop."""
    from fastapi.testclient import TestClient

    module = example("fastapi_app")
    with TestClient(module.app) as http:
        assert http.get("/fib/20").json() == {"result": 6765}
        started = http.post("/campaigns", json={"to": TO})
        assert started.status_code == 202
        jobId = started.json()["job"]
        ended = untilEnded(lambda: http.get(f"/campaigns/{jobId}").json())
        assert ended["result"] == {"sent": 2}
        assert http.get("/campaigns/nope").status_code == 404


def test_django(endpoint: str) -> None:
    """The Django views, called with RequestFactory requests."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["testserver"])
    from django.test import RequestFactory

    module = example("django_views")
    factory = RequestFactory()
    response = module.fib(factory.get("/fib/20"), 20)
    assert json.loads(response.content) == {"result": 6765}
    started = module.start_campaign(
        factory.post("/campaigns", {"to": TO}, content_type="application/json")
    )
    assert started.status_code == 202
    jobId = json.loads(started.content)["job"]
    ended = untilEnded(
        lambda: json.loads(module.campaign(factory.get("/c"), jobId).content)
    )
    assert ended["progress"]["done"] == 2
    assert module.campaign(factory.get("/c"), "nope").status_code == 404
    assert module.fib(factory.post("/fib/1"), 1).status_code == 405
    module.tasks.close()
