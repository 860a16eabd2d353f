"""
Unit tests for L{taskservice.examples}, the bundled demo tasks, called as
plain functions (no worker, no network: C{send_mail} is pointed at a port
nothing listens on, so any attempt to connect would fail the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.trial.unittest import SynchronousTestCase

from taskservice import examples
from taskservice.errors import InvalidParams
from taskservice.examples import send_mail
from taskservice.pool import ProcessPool
from taskservice.testing import FakeProcessReactor

_case = SynchronousTestCase()

NOWHERE = "127.0.0.1:9"
"""An SMTP server that is not there (the discard port, closed here)."""


@pytest.fixture(autouse=True)
def noSMTP(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(examples.SMTP_ENVIRONMENT, NOWHERE)


def test_sendMailTheFAQsCallAsWritten() -> None:
    """
    The Workerman FAQ's call as written (every value C{'xxx'}) succeeds:
    the recipient is not an address, so nothing is sent (no SMTP
    connection is even made) and the result says it was skipped.
    """
    args = {"from": "xxx", "to": "xxx", "contents": "xxx"}
    assert send_mail(**args) == {"sent": 0, "skipped": ["xxx"]}


@pytest.mark.parametrize(
    "address", ["xxx", "", "@example.com", "user@", "a@b\nBcc: x@y", "a@b\r"]
)
def test_sendMailSkipsWhatIsNotAnAddress(address: str) -> None:
    """
    A recipient without an C{@} between two non-empty parts, or with a line
    break (header injection), is skipped and listed, never sent to.
    """
    assert send_mail(to=[address]) == {"sent": 0, "skipped": [address]}


def test_sendMailRefusesWhatIsNotAString() -> None:
    """
    A recipient that is not a string at all is still an error, as is an
    empty list: those are wrong calls, not placeholders.
    """
    with pytest.raises(ValueError, match="not an e-mail address: 5"):
        send_mail(to=["a@example.com", 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-empty list"):
        send_mail(to=[])


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    """
    A started pool of the examples on fake workers (nothing runs: a call
    that gets past the checks is only queued).
    """
    reactor = FakeProcessReactor()
    started = ProcessPool(reactor, ["taskservice.examples"], size=1)
    started.startService()
    reactor.readyAll()
    yield started


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("fib", [True]),
        ("fib", [False]),
        ("fib", [99]),
        ("fib", ["7"]),
        ("fib", [7.0]),
        ("sleep", [True]),
        ("sleep", [-1]),
        ("sleep", [None]),
    ],
)
def test_exampleArgumentsCheckedBeforeQueueing(
    pool: ProcessPool, method: str, params: list[object]
) -> None:
    """
    C{fib} and C{sleep} check their argument in the service, before the
    call is queued: a JSON C{true} is no integer (though Python's C{True}
    is an C{int}), nor a number out of range; each is -32602 (invalid
    params) saying what is wanted, and nothing reaches a worker.
    """
    failure = _case.failureResultOf(pool.submit(method, params), InvalidParams)
    assert failure.value.code == -32602
    assert "must be" in str(failure.value.data)
    assert pool.stats()["queued"] == pool.stats()["running"] == 0


@pytest.mark.parametrize(
    ("method", "params"), [("fib", [0]), ("fib", [40]), ("sleep", [0.5])]
)
def test_exampleArgumentsInRangeAccepted(
    pool: ProcessPool, method: str, params: list[object]
) -> None:
    """
    Arguments in range pass the check and the call goes to a worker.
    """
    pool.submit(method, params)
    assert pool.stats()["running"] == 1


def test_examplesStillCheckWhenCalledInProcess() -> None:
    """
    Called as plain functions, C{fib} and C{sleep} refuse a C{bool} too.
    """
    with pytest.raises(ValueError, match="integer"):
        examples.fib(True)
    with pytest.raises(ValueError, match="number"):
        examples.sleep(True)
