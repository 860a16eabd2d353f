"""
The bundled example tasks, served by ``twistd taskservice`` by default.

``send_mail`` speaks real SMTP to the server named by the environment
variable ``TASKSERVICE_SMTP`` (``host:port``; default ``127.0.0.1:25``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from taskservice import currentJob, progress, task

SMTP_ENVIRONMENT = "TASKSERVICE_SMTP"
DEFAULT_SMTP = "127.0.0.1:25"
DEFAULT_SENDER = "taskservice@localhost"
DEFAULT_BODY = "This message was sent by a taskservice worker."
MAX_SLEEP = 3600.0
MAX_FIB = 40


@task(idempotent=True)
def echo(value: Any) -> Any:
    """
    Return C{value} unchanged.
    """
    return value


def _checkSleep(seconds: object) -> None:
    # A JSON true is no number of seconds (though Python's True is an int).
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not 0 <= seconds <= MAX_SLEEP
    ):
        raise ValueError(f"seconds must be a number from 0 to {MAX_SLEEP:g}")


def _checkFib(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_FIB:
        raise ValueError(f"n must be an integer from 0 to {MAX_FIB}")


@task(idempotent=True, validate=_checkSleep)
def sleep(seconds: float) -> float:
    """
    Block the worker for C{seconds} (at most an hour), then return them.
    Checked before it is queued (C{sleep(true)} is invalid params).
    """
    _checkSleep(seconds)
    time.sleep(seconds)
    return seconds


@task(idempotent=True, validate=_checkFib)
def fib(n: int) -> int:
    """
    The C{n}th Fibonacci number, computed the slow recursive way: CPU-bound.
    Checked before it is queued (C{fib(true)}, C{fib(99)} are invalid
    params).
    """
    _checkFib(n)
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


@task
def fail(message: str = "this task always fails") -> None:
    """
    Raise C{ValueError(message)}: shows how task errors reach the caller.
    """
    raise ValueError(message)


def smtpServer() -> tuple[str, int]:
    """
    The SMTP server from C{TASKSERVICE_SMTP}, as C{(host, port)}.
    """
    value = os.environ.get(SMTP_ENVIRONMENT, "") or DEFAULT_SMTP
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{SMTP_ENVIRONMENT} must be host:port, not {value!r}")
    return host.strip("[]"), int(port)


@task(timeout=900, resumable=True)
def send_mail(
    to: str | list[str],
    subject: str = "Hello from taskservice",
    body: str = DEFAULT_BODY,
    sender: str = DEFAULT_SENDER,
    contents: str | None = None,
    **faq: str,
) -> dict[str, Any]:
    """
    Send one message to each address in C{to} over one SMTP connection,
    reporting progress after each. Returns C{{"sent": n}}.

    The Workerman FAQ's caller names its arguments C{from}, C{to} and
    C{contents}; those are accepted too (C{from} cannot be a Python
    parameter name, hence C{**faq}). So is its call as written, whose
    values are the placeholder C{'xxx'}: a recipient that is not an e-mail
    address (no C{@}, or a line break) is skipped, never sent to, and
    listed in the result as C{"skipped"}; a sender that is not one is
    replaced by L{DEFAULT_SENDER}. With nothing left to send to, no SMTP
    connection is made.
    """
    unexpected = sorted(set(faq) - {"from"})
    if unexpected:
        raise TypeError(f"send_mail() got unexpected arguments {unexpected}")
    sender = faq.get("from", sender)
    if contents is not None:
        body = contents
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not recipients:
        raise ValueError("to must be an address or a non-empty list of addresses")
    for address in recipients:
        if not isinstance(address, str):
            raise ValueError(f"not an e-mail address: {address!r}")
    for name, text in (("subject", subject), ("body", body), ("sender", sender)):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string")
    if not _isAddress(sender):
        sender = DEFAULT_SENDER
    deliverable = [address for address in recipients if _isAddress(address)]
    skipped = [address for address in recipients if not _isAddress(address)]
    result: dict[str, Any] = {"sent": len(deliverable)}
    if skipped:
        result["skipped"] = skipped
    if not deliverable:
        return result
    # Imported here, not at the top: smtplib and email (with ssl) would add
    # about 7 MiB and 25 ms to every worker, mail or no mail.
    import smtplib
    from email.message import EmailMessage

    host, port = smtpServer()
    total = len(deliverable)
    # Run as a durable job, this may be a second attempt (the server went
    # away mid-send): skip the recipients the first reported done, and give
    # each message a Message-ID of the job and recipient, so that a mail
    # store which drops repeats (most do) drops the few sent after the last
    # progress the journal recorded. See docs/tasks ("Tasks safe to run
    # again").
    job = currentJob()
    start = 0
    if job is not None and job.progress is not None:
        start = min(total, max(0, int(job.progress.get("done", 0))))
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        for done, address in enumerate(deliverable[start:], start + 1):
            message = EmailMessage()
            message["From"] = sender
            message["To"] = address
            message["Subject"] = subject
            if job is not None:
                message["Message-ID"] = f"<{job.id}.{done}@taskservice.invalid>"
            message.set_content(body)
            smtp.send_message(message)
            progress(done, total)
    return result


def _isAddress(text: str) -> bool:
    """
    Whether C{text} may be an e-mail address: it has an C{@} with something
    on both sides, and no line break (which would inject headers).
    """
    local, at, domain = text.rpartition("@")
    return bool(at and local and domain) and not any(c in text for c in "\r\n")
