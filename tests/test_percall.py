"""
Unit tests of the pool's per-call path (issue 15, 2a): a worker's answers
of one read handled as one batch, call ends kept as tuples and folded into
the metrics and recent calls when read (L{taskservice._callrecords}), the
frames one dispatch places on a worker sent in one write, the call frame
encoded without a dict, and a FIFO queue read directly. Each test holds
the new path to what the old one did, on the in-memory FakeProcessReactor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from taskservice import _json
from taskservice._call import Call
from taskservice._callrecords import FOLD_AT, CallRecords, Columns
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._placement import Placement
from taskservice._poolmetrics import PoolMetrics
from taskservice._recentcalls import RecentCalls
from taskservice._workerproc import WorkerProcess
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor, FakeWorker
from taskservice.wire import NO_OPTIONS
from tests.test_pool import makePool, result


class Sink:
    """
    A lean-lane caller: keeps each call's end.
    """

    def __init__(self) -> None:
        self.done: list[Call] = []

    def callDone(self, call: Call) -> None:
        self.done.append(call)

    def callProgress(self, call: Call, update: dict[str, Any]) -> None:
        pass


def _writes(worker: FakeWorker) -> list[bytes]:
    """
    Give C{worker}'s protocol a command pipe (as a real process has) that
    records each write the pool makes and hands it to the fake worker.
    """
    writes: list[bytes] = []

    class Pipe:
        def write(self, data: bytes) -> None:
            writes.append(data)
            worker.transport.writeToChild(COMMANDS_FD, data)

    worker.protocol._commands = Pipe()
    return writes


def _answer(worker: FakeWorker, count: int) -> None:
    """
    The worker answers its first C{count} calls (echoing their first
    argument) in one read, as a pipe delivers several frames at once.
    """
    calls, worker.calls[:count] = worker.calls[:count], []
    worker.protocol.childDataReceived(
        RESULTS_FD,
        b"".join(
            frame(_json.dumps({"op": "result", "cid": c["cid"], "result": c["args"]}))
            for c in calls
        ),
    )


def _pipelined(
    queued: int, **kwargs: Any
) -> tuple[FakeProcessReactor, ProcessPool, FakeWorker, Sink]:
    """
    A pool of one worker that pipelines "add" (measured short), holding
    C{pipeline} calls, with C{queued} more waiting in the queue.
    """
    reactor, pool = makePool(size=1, pipeline=4, **kwargs)
    reactor.readyAll()
    (worker,) = reactor.workers
    for i in range(5):  # five samples make a task short
        d = pool.submit("add", [i, i])
        worker.runCalls(pool.registry)
        assert result(d) == 2 * i
    assert pool.isShort("add")
    sink = Sink()
    for i in range(4 + queued):
        pool.start("add", [i, 0], {}, NO_OPTIONS, sink, i)
    assert len(worker.calls) == 4 and len(pool._scheduler.queue) == queued
    return reactor, pool, worker, sink


def test_answersOfOneReadAreOneDispatchAndOneWrite() -> None:
    """
    Four answers in one read end their four calls in order, and the four
    queued calls then placed on the worker reach it in one write.
    """
    reactor, pool, worker, sink = _pipelined(queued=6)
    writes = _writes(worker)
    _answer(worker, 4)
    assert [c.tag for c in sink.done] == [0, 1, 2, 3]
    assert [c.resultBytes for c in sink.done] == [
        b"[0,0]",
        b"[1,0]",
        b"[2,0]",
        b"[3,0]",
    ]
    assert len(writes) == 1
    assert [m["cid"] for m in _frames(writes[0])] == [c["cid"] for c in worker.calls]
    assert len(worker.calls) == 4 and len(pool._scheduler.queue) == 2
    pool.stopService()
    reactor.reapAll()


def _frames(data: bytes) -> list[dict[str, Any]]:
    return [_json.loads(p) for p in FrameDecoder().feed(data)]


def test_progressBetweenResultsOfOneRead() -> None:
    """
    Result, progress, result in one read: the first call ends, then the
    second hears its progress, then it ends.
    """
    reactor, pool, worker, sink = _pipelined(queued=0)
    second = pool._scheduler._running()[1]
    heard: list[object] = []
    second.sink = None
    second.onProgress = lambda update: heard.append((update, len(sink.done)))
    calls, worker.calls[:2] = worker.calls[:2], []
    worker.protocol.childDataReceived(
        RESULTS_FD,
        frame(_json.dumps({"op": "result", "cid": calls[0]["cid"], "result": 1}))
        + frame(_json.dumps({"op": "progress", "cid": calls[1]["cid"], "update": {}}))
        + frame(_json.dumps({"op": "result", "cid": calls[1]["cid"], "result": 2})),
    )
    assert heard == [({}, 1)], "the first result was told before the progress"
    assert second.outcome is not None and second.outcome.value == 2
    pool.stopService()
    reactor.reapAll()


def test_aDroppedOwnersCallsLeaveTheQueueTheSchedulerReads() -> None:
    """
    Dropping an owner's queued calls keeps the FIFO queue's one deque (the
    scheduler appends to it directly): calls queued afterwards still run.
    """
    reactor, pool, worker, sink = _pipelined(queued=0)
    gone = object()
    for i in range(3):
        pool.start("add", [i, 1], {}, NO_OPTIONS, sink, ("gone", i), gone)
    assert pool.dropQueued(gone) == 3
    pool.start("add", [5, 5], {}, NO_OPTIONS, sink, "after")
    assert len(pool._scheduler.queue) == 1
    worker.runCalls(pool.registry)
    worker.runCalls(pool.registry)
    assert [c.tag for c in sink.done if c.tag == "after"] == ["after"]
    assert sink.done[-1].outcome is not None and sink.done[-1].outcome.value == 10
    pool.stopService()
    reactor.reapAll()


def test_aFullFifoQueueRefusesTheNextCall() -> None:
    """
    The direct FIFO path keeps the waiting room's limit: the call past
    C{maxQueue} is overloaded, the ones before it wait.
    """
    reactor, pool, worker, sink = _pipelined(queued=2, maxQueue=3)
    pool.start("add", [1, 1], {}, NO_OPTIONS, sink, "third")
    pool.start("add", [1, 1], {}, NO_OPTIONS, sink, "fourth")
    assert len(pool._scheduler.queue) == 3
    (refused,) = sink.done
    assert refused.tag == "fourth" and refused.outcome is not None
    assert refused.outcome.kind == "overloaded" and refused.queuedAt is None
    pool.stopService()
    reactor.reapAll()


# -- call ends folded when read ------------------------------------------------


class CountingMetrics(PoolMetrics):
    def __init__(self, pool: ProcessPool) -> None:
        super().__init__(pool)
        self.perCall = 0
        self.batches: list[int] = []

    def callFinished(self, *args: Any) -> None:
        self.perCall += 1
        super().callFinished(*args)

    def callsFinished(self, calls: Columns) -> None:
        self.batches.append(len(calls.tasks))
        super().callsFinished(calls)


def test_metricsFoldCallsWhenScraped() -> None:
    """
    The pool's metrics hear of calls that ran well in one batch when they
    are collected, not call by call; failures are told at once, after the
    calls that ended before them.
    """
    reactor, pool = makePool(size=1)
    metrics = CountingMetrics(pool)
    registry = CollectorRegistry()
    registry.register(metrics)
    reactor.readyAll()
    (worker,) = reactor.workers
    for i in range(3):
        d = pool.submit("add", [i, 1])
        worker.runCalls(pool.registry)
        assert result(d) == i + 1
    assert (metrics.perCall, metrics.batches) == (0, [])
    failed = pool.submit("add", [1, "x"])
    worker.runCalls(pool.registry)
    failed.addErrback(lambda f: None)
    assert (metrics.perCall, metrics.batches) == (1, [3])
    pool.submit("add", [2, 2])
    worker.runCalls(pool.registry)
    count = registry.get_sample_value(
        "taskservice_calls_total", {"task": "add", "outcome": "ok"}
    )
    assert count == 4.0 and metrics.batches == [3, 1]
    pool.stopService()
    reactor.reapAll()


def test_pendingCallsAreBounded() -> None:
    """
    Nobody scraping: every L{FOLD_AT} calls the pending ends are folded.
    """
    records = CallRecords()
    seen: list[int] = []

    class Reader:
        def callsFinished(self, calls: Columns) -> None:
            seen.append(len(calls.tasks))

    records.readers.append(Reader())
    reactor, pool = makePool(size=1)
    scheduler = pool._scheduler
    scheduler.records = records
    reactor.readyAll()
    (worker,) = reactor.workers
    for i in range(FOLD_AT + 5):
        pool.submit("add", [i, 0])
        worker.runCalls(pool.registry)
    assert seen == [FOLD_AT] and len(records.pending) == 5
    pool.stopService()
    reactor.reapAll()


class _Pool:
    """
    What L{PoolMetrics} reads of a pool, with nothing running.
    """

    observer = None
    registry = {"add": None, "hang": None}
    workerExits: Counter[str] = Counter()

    def foldCalls(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        workers = dict.fromkeys(("starting", "idle", "busy", "retiring", "size"), 0)
        return {"queued": 0, "maxQueue": 0, "running": 0, "workers": workers}


def _samples(metrics: PoolMetrics) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.collect()
        for s in family.samples
    }


_times = st.floats(min_value=0.0, max_value=5000.0, allow_nan=False)
_steps = st.floats(min_value=-0.01, max_value=50.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "hang", ""]),
            st.sampled_from(["ok", "cancelled", "invalid_params"]),
            _times,
            _steps,
            _steps,
        ),
        min_size=1,
        max_size=40,
    )
)
def test_foldedMetricsAreThoseCountedOneByOne(
    ends: list[tuple[str, str, float, float, float]],
) -> None:
    """
    Folding a batch of calls into the metrics gives what telling them one
    by one gives (as the pool told them: queued until started, run until
    ended, a clock stepping back counted as zero): the same counts in the
    same buckets, the same sums (to a float's rounding), task by task.
    """
    one, batch = PoolMetrics(_Pool()), PoolMetrics(_Pool())
    records = []
    for task, kind, queuedAt, waited, ran in ends:
        startedAt = queuedAt + waited
        endedAt = startedAt + ran
        one.callFinished(task, kind, startedAt - queuedAt, endedAt - startedAt)
        records.append((task, kind, queuedAt, startedAt, endedAt))
    batch.callsFinished(Columns(*zip(*records, strict=True)))
    expected, found = _samples(one), _samples(batch)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert abs(found[key] - value) <= 1e-9 * max(1.0, abs(value)), key
        else:
            assert found[key] == value, key


def test_recentCallsFoldInTheOrderCallsEnded() -> None:
    """
    The recent calls see the folded batch before a failure told at once,
    in the order the calls ended.
    """
    recent = RecentCalls()
    recent.callsFinished(Columns(("add",), ("ok",), (1.0,), (2.0,), (4.0,)))
    assert recent.latency(5.0)["calls"] == 1
    assert recent.latency(5.0)["max"] == 3.0


# -- placement, deadlines, workers: the batch forms equal the single ones ------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.floats(0.0, 0.01)),
        min_size=1,
        max_size=12,
    ),
    st.floats(0.0, 0.02),
)
def test_measureAllIsMeasureInTurn(
    calls: list[tuple[str, float]], lastAnswerAt: float
) -> None:
    """
    L{Placement.measureAll} learns what L{Placement.measure} learns call by
    call, in order: run times, samples, short tasks, the worker's last answer.
    """
    one, batch = Placement(1, 8), Placement(1, 8)
    left, right = WorkerProcess(None, 1), WorkerProcess(None, 2)
    left.lastAnswerAt = right.lastAnswerAt = lastAnswerAt
    made: list[Call] = []
    for task, startedAt in calls:
        call = Call(None, 1, task, None, (), {}, 1.0, 0.0)
        call.startedAt = startedAt or None
        made.append(call)
    for _ in range(2):  # twice: the second time with samples to go on
        for call in made:
            one.measure(left, call, 0.03)
        batch.measureAll(right, [(call, b"") for call in made], 0.03)
        assert one._runTime == batch._runTime
        assert one._samples == batch._samples
        assert one.short == batch.short
        assert left.lastAnswerAt == right.lastAnswerAt


def test_callPayloadIsTheDictEncoded() -> None:
    """
    A call frame's payload is what encoding its dict gives, the traceback
    flag and job only when given; values JSON cannot carry are refused as
    L{_json.dumps} refuses them.
    """
    decoded = _json.loads(b'{"a": [1, 2.5, "\\u00e9", null, true]}')
    for tb, job in ((False, None), (True, None), (False, {"id": "j"})):
        message: dict[str, Any] = {
            "op": "call",
            "cid": 7,
            "task": "add",
            "args": [1, decoded],
            "kwargs": {"k": decoded},
        }
        if tb:
            message["tb"] = True
        if job is not None:
            message["job"] = job
        assert _json.callPayload(
            7, "add", [1, decoded], {"k": decoded}, tb, job, decoded=True
        ) == _json.dumpsDecoded(message)
        assert _json.callPayload(
            7, "add", [1, decoded], {"k": decoded}, tb, job
        ) == _json.dumps(message)
    for bad in ({1, 2}, float("nan")):
        try:
            _json.callPayload(1, "add", [bad], {})
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError(f"{bad!r} was encoded")
    # A lone surrogate (from a "\\ud800" escape) still goes, as dumps sends it.
    lone = _json.loads(b'["\\ud800"]')
    assert _json.loads(_json.callPayload(1, "add", lone, {}, decoded=True)) == {
        "op": "call",
        "cid": 1,
        "task": "add",
        "args": lone,
        "kwargs": {},
    }
