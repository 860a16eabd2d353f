"""
One contract, two workers: the frames a worker answers to the parent's
frames, checked against L{taskservice.testing.FakeWorker} (on a
L{FakeProcessReactor}) and against a real C{python -m taskservice.worker}
process, with the same tests (klein's C{test/test_memory.py} pattern: one
suite, two fixtures). What the fake gets right here, tests built on it can
rely on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from taskservice import _json
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._task import Registry
from taskservice.testing import FakeProcessReactor, FakeWorker

_MODULES = ["tests.pooltasks"]
_MAX_RESULT = 1000


class _Recorder(ProcessProtocol):
    """
    The parent's side, reduced to frames: what the worker sends, in order.
    """

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.ended: Deferred[BaseException] = Deferred()
        self._decoder = FrameDecoder()
        self._waiting: list[tuple[Any, Deferred[None]]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != RESULTS_FD:
            return
        for payload in self._decoder.feed(data):
            self.frames.append(_json.loads(payload))
        self._wake()

    def processEnded(self, reason: Failure) -> None:
        assert reason.value is not None
        self.ended.callback(reason.value)

    def _wake(self) -> None:
        still = []
        for predicate, d in self._waiting:
            if predicate():
                d.callback(None)
            else:
                still.append((predicate, d))
        self._waiting = still

    def until(self, predicate: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((predicate, d))
        self._wake()
        return d


class _Harness:
    """
    Starts a worker, sends it frames, and reads its answers.
    """

    def __init__(self, kind: str, recorder: _Recorder, transport: Any) -> None:
        self.kind = kind
        self.recorder = recorder
        self.transport = transport
        self.fake: FakeWorker | None = None
        self.registry = Registry.fromModules(_MODULES)

    def send(self, *messages: dict[str, Any]) -> None:
        """
        Send C{messages} in one write (as the parent's coalesced writes).
        """
        self.transport.writeToChild(
            COMMANDS_FD, b"".join(frame(_json.dumps(m)) for m in messages)
        )
        if self.fake is not None:
            self.fake.runCalls(self.registry)

    async def answers(self, *cids: int) -> list[dict[str, Any]]:
        """
        The frames about calls C{cids}, once each has its result or error.
        """

        def answered() -> bool:
            done = {f.get("cid") for f in self.recorder.frames if f["op"] != "progress"}
            return set(cids) <= done

        await self.recorder.until(answered)
        return [f for f in self.recorder.frames if f.get("cid") in cids]

    async def answer(self, cid: int) -> dict[str, Any]:
        return (await self.answers(cid))[-1]

    async def close(self) -> BaseException:
        """
        Close the command pipe: the worker exits.
        """
        self.transport.closeChildFD(COMMANDS_FD)
        if self.fake is not None:
            self.fake.reap()
        return await self.recorder.ended


def _call(cid: int, task: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {
        "op": "call",
        "cid": cid,
        "task": task,
        "args": list(args),
        "kwargs": {},
    } | (extra)


def _args() -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskservice.worker",
        "--max-result",
        str(_MAX_RESULT),
        *_MODULES,
    ]


_CHILD_FDS = {0: "w", 1: "r", 2: "r", COMMANDS_FD: "w", RESULTS_FD: "r"}


@pytest_twisted.async_yield_fixture(
    params=["fake", pytest.param("real", marks=pytest.mark.integration)]
)
async def worker(request: Any) -> AsyncIterator[_Harness]:
    recorder = _Recorder()
    if request.param == "fake":
        fakeReactor = FakeProcessReactor()
        transport = fakeReactor.spawnProcess(
            recorder, sys.executable, _args(), env={}, childFDs=_CHILD_FDS
        )
        harness = _Harness("fake", recorder, transport)
        harness.fake = fakeReactor.workers[0]
        harness.fake.ready()
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(
            recorder, sys.executable, _args(), env=env, childFDs=_CHILD_FDS
        )
        transport.closeStdin()
        harness = _Harness("real", recorder, transport)
    await recorder.until(lambda: bool(recorder.frames))
    yield harness
    if not recorder.ended.called:
        await harness.close()


@pytest_twisted.ensureDeferred
async def test_readyFirst(worker: _Harness) -> None:
    """
    A worker's first frame says it is ready, with its pid.
    """
    first = worker.recorder.frames[0]
    assert first["op"] == "ready"
    assert isinstance(first["pid"], int)


@pytest_twisted.ensureDeferred
async def test_result(worker: _Harness) -> None:
    """
    A call is answered with a result frame naming its call id.
    """
    worker.send(_call(1, "add", 2, 3))
    assert await worker.answer(1) == {"op": "result", "cid": 1, "result": 5}


@pytest_twisted.ensureDeferred
async def test_progressThenResult(worker: _Harness) -> None:
    """
    Progress frames come in order, before the call's result.
    """
    worker.send(_call(1, "count", 3))
    frames = await worker.answers(1)
    assert frames == [
        *(
            {"op": "progress", "cid": 1, "update": {"done": i, "total": 3}}
            for i in (1, 2, 3)
        ),
        {"op": "result", "cid": 1, "result": 3},
    ]


@pytest_twisted.ensureDeferred
async def test_taskRaises(worker: _Harness) -> None:
    """
    An exception is an error frame with its type and message; a traceback
    only when the call asks for one.
    """
    worker.send(_call(1, "add", 1, "x"), _call(2, "add", 1, "x", tb=True))
    plain, withTraceback = await worker.answers(1, 2)
    assert plain["op"] == "error" and "code" not in plain
    assert plain["error"]["type"] == "TypeError"
    assert "unsupported operand" in plain["error"]["message"]
    assert "traceback" not in plain["error"]
    assert "Traceback" in withTraceback["error"]["traceback"]


@pytest_twisted.ensureDeferred
async def test_resultNotJSON(worker: _Harness) -> None:
    """
    A result that is not JSON is an error frame, and the worker carries on.
    """
    worker.send(_call(1, "unserialisable"), _call(2, "add", 1, 1))
    bad, good = await worker.answers(1, 2)
    assert bad["op"] == "error" and "code" not in bad
    assert "cannot be sent as JSON" in bad["error"]["message"]
    assert good["result"] == 2


@pytest_twisted.ensureDeferred
async def test_resultTooLarge(worker: _Harness) -> None:
    """
    A result whose JSON is longer than C{--max-result} is an error frame
    with C{"code": "too_large"}; one exactly at the limit is sent.
    """
    atLimit = _MAX_RESULT - 2  # the JSON string's two quotes
    worker.send(_call(1, "big", atLimit + 1), _call(2, "big", atLimit))
    tooLarge, fits = await worker.answers(1, 2)
    assert tooLarge["op"] == "error"
    assert tooLarge["code"] == "too_large"
    assert tooLarge["error"]["type"] == "TooLarge"
    assert tooLarge["error"]["message"] == (
        f"the result is {_MAX_RESULT + 1} bytes of JSON,"
        f" over the limit of {_MAX_RESULT}"
    )
    assert fits == {"op": "result", "cid": 2, "result": "x" * atLimit}


@pytest_twisted.ensureDeferred
async def test_unknownTask(worker: _Harness) -> None:
    """
    A call of a task the worker's modules lack is an error frame
    (C{LookupError}), and the worker carries on.
    """
    worker.send(_call(1, "no.such.task"), _call(2, "add", 1, 2))
    unknown, good = await worker.answers(1, 2)
    assert unknown == {
        "op": "error",
        "cid": 1,
        "error": {"type": "LookupError", "message": "no such task here"},
    }
    assert good["result"] == 3


@pytest_twisted.ensureDeferred
async def test_cancelOfAWaitingCallSkipsIt(worker: _Harness) -> None:
    """
    A cancel that arrives with (or before the turn of) a plain call still
    waiting in the pipe skips it: answered "cancelled", never run.
    """
    worker.send(_call(1, "add", 1, 1), {"op": "cancel", "cid": 2}, _call(2, "count", 5))
    first, skipped = await worker.answers(1, 2)
    assert first["result"] == 2
    assert skipped == {
        "op": "error",
        "cid": 2,
        "code": "cancelled",
        "error": {"type": "CancelledError", "message": "cancelled"},
    }


@pytest_twisted.ensureDeferred
async def test_jobContext(worker: _Harness) -> None:
    """
    A call's C{job} field is what the task reads with C{currentJob()};
    without one, it reads L{None}.
    """
    job = {"id": "j-1", "attempt": 2, "progress": {"done": 3}}
    worker.send(_call(1, "jobInfo", job=job), _call(2, "jobInfo"))
    withJob, without = await worker.answers(1, 2)
    assert withJob["result"]["id"] == "j-1"
    assert withJob["result"]["attempt"] == 2
    assert without["result"] is None


@pytest_twisted.ensureDeferred
async def test_exitsWhenThePipeCloses(worker: _Harness) -> None:
    """
    Closing the command pipe ends the worker with exit status 0.
    """
    reason = await worker.close()
    assert getattr(reason, "exitCode", None) == 0
