"""
Unit tests for L{taskservice.examples}, the bundled demo tasks, called as
plain functions (no worker, no network: C{send_mail} is pointed at a port
nothing listens on, so any attempt to connect would fail the test).
"""

from __future__ import annotations

import pytest

from taskservice import examples
from taskservice.examples import send_mail

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
