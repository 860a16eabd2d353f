"""
Shared fixtures. The autouse L{cleanReactor} fixture fails any test that
leaves delayed calls, open sockets or pipes, or child processes behind
(pytest-twisted has no dirty-reactor check of its own).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.internet import process, reactor
from twisted.internet.task import deferLater

# The machine is shared: generating or running an example may be slow there
# without anything being wrong, so neither fails a property test.
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")


_SETTLE_SECONDS = 5.0
_POLL = 0.01


def _snapshot() -> tuple[set[Any], set[Any], set[int]]:
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return (
        {call for call in reactor.getDelayedCalls() if call.active()},
        # The reactor's own wakers (threads, signals) come and go with it.
        {s for s in selectables if not type(s).__name__.endswith("Waker")},
        set(process.reapProcessHandlers),
    )


def _leftovers(
    before: tuple[set[Any], set[Any], set[int]],
) -> tuple[set[Any], set[Any], set[int]]:
    now = _snapshot()
    return (now[0] - before[0], now[1] - before[1], now[2] - before[2])


@pytest.fixture(autouse=True)
def cleanReactor() -> Iterator[None]:
    """
    Fail the test if it leaves the reactor dirty; then clean it up so that
    one leak does not fail every later test.
    """
    # Make sure the reactor is running before taking the first snapshot.
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))
    before = _snapshot()
    yield
    waited = 0.0
    left = _leftovers(before)
    while any(left) and waited < _SETTLE_SECONDS:
        pytest_twisted.blockon(deferLater(reactor, _POLL, lambda: None))
        waited += _POLL
        left = _leftovers(before)
    calls, selectables, pids = left
    if not any(left):
        return
    for call in calls:
        if call.active():
            call.cancel()
    for selectable in selectables:
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        if hasattr(selectable, "loseConnection"):
            selectable.loseConnection()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(
        "the test left the reactor dirty:"
        f"\n  delayed calls: {sorted(map(repr, calls))}"
        f"\n  readers/writers: {sorted(map(repr, selectables))}"
        f"\n  child processes: {sorted(pids)}"
    )


@pytest.fixture(scope="session")
def pgCluster() -> Iterator[Any]:
    """
    A throwaway PostgreSQL cluster for the whole session (see
    L{taskservice._pgcluster}), stopped at the end. Skipped, saying why, only
    where PostgreSQL's server binaries are not installed.
    """
    from taskservice import _pgcluster as pgcluster

    bindir = pgcluster.binDir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed:"
            " apt-get install postgresql (.ci/run does)"
        )
    cluster = pgcluster.start(bindir)
    try:
        yield cluster
    finally:
        cluster.stop()


_databases = itertools.count()


@pytest.fixture
def pgDSN(pgCluster: Any) -> Iterator[str]:
    """
    The address of a new, empty database of the session's cluster, dropped
    after the test.
    """
    import psycopg

    name = f"test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pgCluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
    try:
        yield pgCluster.dsn(name)
    finally:
        with psycopg.connect(pgCluster.dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
