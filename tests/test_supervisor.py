"""
Unit tests of the pool's worker supervision when C{spawnProcess} itself
fails, on the in-memory FakeProcessReactor's C{spawnProcessException} knob
(as Twisted's C{runner/test/test_procmon.py} tests C{ProcessMonitor}).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from taskservice.metrics import PoolMetrics, makeRegistry
from taskservice.testing import FakeProcessReactor
from tests.test_pool import makePool, noResult, result


def _emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


@pytest.fixture
def events() -> Any:
    found: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(found.append)
    yield found
    globalLogPublisher.removeObserver(found.append)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"].name == "error"]


def test_spawnFailureAtStartIsAFailedStart(events: list[dict[str, Any]]) -> None:
    """
    When C{spawnProcess} raises C{OSError} as the pool starts, no worker is
    counted (nothing is "starting"), the attempt is counted as
    C{spawn_failed}, logged once for the whole episode, and retried with the
    back-off of a failed start until a spawn succeeds; C{whenReady} fires
    then.
    """
    reactor = FakeProcessReactor()
    reactor.spawnProcessException = _emfile()
    from taskservice.pool import ProcessPool

    pool = ProcessPool(reactor, ["tests.pooltasks"], size=2)
    pool.startService()
    ready = pool.whenReady()
    assert reactor.workers == [] and pool.workers == frozenset()
    assert pool.stats()["workers"]["starting"] == 0
    assert pool.stats()["restartsByCause"] == {"spawn_failed": 1}
    reactor.advance(0.1)
    assert reactor.spawnFailures == 2
    reactor.advance(0.1)
    assert reactor.spawnFailures == 2, "the second retry waits twice as long"
    reactor.advance(0.1)
    assert reactor.spawnFailures == 3
    assert len(_errors(events)) == 1, "logged once per episode"
    assert "could not start a worker" in _errors(events)[0]
    assert os.strerror(errno.EMFILE) in _errors(events)[0]
    noResult(ready)
    reactor.spawnProcessException = None
    reactor.advance(0.4)
    assert len(reactor.workers) == 2
    assert pool.stats()["workers"]["starting"] == 2
    reactor.readyAll()
    assert result(ready) is None
    assert pool.stats()["restartsByCause"] == {"spawn_failed": 3}
    assert pool.restarts == 3
    infos = [formatEvent(e) for e in events if "failures" in e]
    assert infos == [
        f"started worker {reactor.workers[0].protocol.workerID} after 3 failed attempts"
    ]
    d = pool.stopService()
    reactor.reapAll()
    assert result(d) is None
    assert reactor.getDelayedCalls() == []


def test_spawnFailureOfAReplacement(events: list[dict[str, Any]]) -> None:
    """
    A worker that crashes while the system refuses new processes leaves the
    pool one worker short, not with a "starting" worker that does not
    exist: the survivors serve, C{whenReady} fires, the replacement is
    retried with back-off, and stopping the pool is clean (no
    C{AssertionError} from closing a worker that never had a process).
    """
    reactor, pool = makePool(size=2)
    reactor.readyAll()
    reactor.spawnProcessException = _emfile()
    reactor.workers[0].exit(signal=9)
    stats = pool.stats()
    assert stats["workers"] == {
        "size": 2,
        "idle": 1,
        "busy": 0,
        "starting": 0,
        "retiring": 0,
    }
    assert stats["restartsByCause"] == {"crash": 1, "spawn_failed": 1}
    assert result(pool.whenReady()) is None
    d = pool.submit("add", [1, 2])
    reactor.runAllCalls(pool.registry)
    assert result(d) == 3
    reactor.advance(0.1)
    reactor.advance(0.2)
    assert reactor.spawnFailures == 3
    assert len(_errors(events)) == 1, "logged once per episode"
    reactor.spawnProcessException = None
    reactor.advance(0.4)
    assert len(reactor.alive) == 2
    reactor.readyAll()
    assert pool.stats()["workers"]["idle"] == 2
    stopped = pool.stopService()
    reactor.reapAll()
    assert result(stopped) is None
    critical = [e for e in events if e["log_level"].name == "critical"]
    assert critical == []


def test_stopWhileASpawnIsRetried() -> None:
    """
    Stopping a pool whose workers cannot be spawned fires at once and
    leaves no retry timer behind.
    """
    reactor = FakeProcessReactor()
    reactor.spawnProcessException = _emfile()
    from taskservice.pool import ProcessPool

    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    pool.startService()
    assert result(pool.stopService()) is None
    assert reactor.getDelayedCalls() == []
    assert reactor.workers == []


def test_otherSpawnErrorsAreNotHidden() -> None:
    """
    Only C{OSError} (what the system says about resources) is a failed
    start; any other exception from C{spawnProcess} is a bug and
    propagates, as in Twisted's C{ProcessMonitor}.
    """
    reactor = FakeProcessReactor()
    reactor.spawnProcessException = SystemError("a bug")
    from taskservice.pool import ProcessPool

    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    with pytest.raises(SystemError):
        pool.startService()
    assert pool.workers == frozenset()


def test_spawnFailureOfARecyclingSuccessor() -> None:
    """
    When the successor of a worker due for recycling cannot be spawned, the
    worker keeps serving: the pool never goes short to recycle.
    """
    reactor, pool = makePool(size=1, maxTasksPerChild=2)
    reactor.readyAll()
    reactor.spawnProcessException = _emfile()
    for i in range(3):
        d = pool.submit("add", [i, i])
        reactor.runAllCalls(pool.registry)
        assert result(d) == 2 * i
    assert pool.stats()["workers"]["idle"] == 1
    assert pool.stats()["restartsByCause"]["spawn_failed"] >= 1
    assert len(reactor.alive) == 1
    stopped = pool.stopService()
    reactor.reapAll()
    assert result(stopped) is None


def test_spawnFailuresAreAMetric() -> None:
    """
    The worker-restarts metric has a C{spawn_failed} series from the start,
    and counts failed spawns.
    """
    reactor, pool = makePool(size=1)
    registry = makeRegistry(pool=pool)
    metrics = [c for c in registry._collector_to_names if isinstance(c, PoolMetrics)]
    assert metrics

    def value() -> float | None:
        return registry.get_sample_value(
            "taskservice_worker_restarts_total", {"cause": "spawn_failed"}
        )

    assert value() == 0.0
    reactor.readyAll()
    reactor.spawnProcessException = _emfile()
    reactor.workers[0].exit(1)
    assert value() == 1.0
    pool.stopService()
