"""
A small SMTP sink for the demo and the tests: Twisted's own ESMTP server
accepting every sender and every recipient, counting what it receives and
keeping nothing but a bounded record of recent envelopes (no disk I/O, no
message bodies kept).

Counting rule: L{SMTPSink.received} counts one per recipient of each message
received, that is, per copy delivered. A message sent to two recipients in
one SMTP transaction counts 2. C{send_mail} sends one message per recipient,
so a C{send_mail} to 1,000 users shows C{received == 1000}, whichever way a
client groups its recipients.

Repeats: like most mail stores, the sink drops a copy whose C{Message-ID}
it has already accepted for the same recipient, and counts it in
L{SMTPSink.duplicates} instead (it remembers the last L{SEEN_LIMIT} ids).
A message without a C{Message-ID} is never a repeat. This is what lets a
durable C{send_mail} job that ran again after a crash deliver each message
once (docs/tasks).

Embedding::

    sink = SMTPSink()
    service = sinkService(reactor, "tcp:2525:interface=127.0.0.1", sink)
    service.setServiceParent(application)
    # point the workers at it: TASKSERVICE_SMTP=127.0.0.1:2525

L{twisted.mail.smtp} installs the global reactor when it is imported, so it
is imported only when a protocol factory is built: importing this module
does not touch the reactor.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.mail.smtp import Address, User

RECENT_LIMIT = 100
"""How many recent envelopes an L{SMTPSink} keeps by default."""
SEEN_LIMIT = 100_000
"""How many (Message-ID, recipient) pairs an L{SMTPSink} remembers to drop
repeats."""
IDLE_TIMEOUT = 600
"""Seconds of silence after which the sink drops a client (Twisted's
default for its SMTP server)."""
DOMAIN = b"localhost"
"""The host name the sink announces in its greeting."""


@dataclass(frozen=True)
class Envelope:
    """
    One copy of a message delivered to the sink.

    @ivar sender: the C{MAIL FROM} address (C{""} for the null sender).
    @ivar recipient: the C{RCPT TO} address this copy was delivered to.
    @ivar size: the message's size in bytes (headers and body, lines ended
        with CRLF, after dot-unstuffing; Twisted's server puts an empty
        line before a message that has no headers, and that counts too).
    """

    sender: str
    recipient: str
    size: int


class SMTPSink:
    """
    Accepts and counts every message sent to it.

    @ivar received: copies delivered so far: one per recipient of each
        complete message (a message cut short by a lost connection does not
        count), repeats left out.
    @ivar duplicates: copies dropped as repeats (a C{Message-ID} already
        accepted for that recipient).
    """

    def __init__(
        self, recentLimit: int = RECENT_LIMIT, seenLimit: int = SEEN_LIMIT
    ) -> None:
        """
        @param recentLimit: how many of the latest envelopes L{recent} keeps.
        @param seenLimit: how many message ids are remembered for repeats.
        """
        self.received = 0
        self.duplicates = 0
        self._recent: deque[Envelope] = deque(maxlen=recentLimit)
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._seenLimit = seenLimit

    @property
    def recent(self) -> list[Envelope]:
        """
        The envelopes of the latest copies received (at most C{recentLimit}),
        oldest first.
        """
        return list(self._recent)

    def stats(self) -> dict[str, int]:
        """
        The counters, as JSON-ready data (the gateway's C{/stats} shows them
        as C{"smtpSink"}).
        """
        return {"received": self.received, "duplicates": self.duplicates}

    def factory(
        self, reactor: IReactorTime | None = None, timeout: int = IDLE_TIMEOUT
    ) -> IProtocolFactory:
        """
        A protocol factory serving this sink with Twisted's ESMTP server.

        @param reactor: the clock for the idle timeout; with L{None}, idle
            clients are never dropped (handy in memory tests).
        @param timeout: seconds of silence before a client is dropped.
        """
        from taskservice._smtpserver import SinkSMTPFactory

        return SinkSMTPFactory(_Delivery(self), reactor, timeout, DOMAIN)

    def _delivered(self, envelope: Envelope, messageId: str | None = None) -> None:
        if messageId is not None:
            seen = (messageId, envelope.recipient)
            if seen in self._seen:
                self.duplicates += 1
                return
            self._seen[seen] = None
            if len(self._seen) > self._seenLimit:
                self._seen.popitem(last=False)
        self.received += 1
        self._recent.append(envelope)


def sinkService(reactor: Any, endpoint: str, sink: SMTPSink) -> IService:
    """
    A service listening on C{endpoint} (a server endpoint string, such as
    C{"tcp:2525:interface=127.0.0.1"}) with C{sink}'s SMTP server. Like every
    listener here it is a C{strports.service}: a bind error fails
    C{startService} instead of leaving a half-started process.
    """
    service: IService = strports.service(
        endpoint, sink.factory(reactor), reactor=reactor
    )
    return service


def _text(address: Address) -> str:
    return bytes(address).decode("utf-8", "replace")


@implementer(IMessageDelivery)
class _Delivery:
    """
    Accepts any sender and any recipient; each recipient gets its own
    L{_Message}, so each copy is counted.
    """

    def __init__(self, sink: SMTPSink) -> None:
        self._sink = sink

    def receivedHeader(
        self, helo: tuple[bytes, bytes], origin: Address, recipients: list[User]
    ) -> None:
        # No Received: header: the sink keeps nothing but the envelope.
        return None

    def validateFrom(self, helo: tuple[bytes, bytes], origin: Address) -> Address:
        return origin

    def validateTo(self, user: User) -> Callable[[], _Message]:
        sink = self._sink
        sender = _text(user.orig)
        recipient = _text(user.dest)
        return lambda: _Message(sink, sender, recipient)


@implementer(IMessageSMTP)
class _Message:
    """
    One copy of one message on its way in: counts its bytes, keeps none.
    """

    def __init__(self, sink: SMTPSink, sender: str, recipient: str) -> None:
        self._sink = sink
        self._sender = sender
        self._recipient = recipient
        self._size = 0
        self._inHeaders = True
        self._messageId: str | None = None

    def lineReceived(self, line: bytes) -> None:
        self._size += len(line) + 2
        if self._inHeaders:
            if not line:
                self._inHeaders = False
            elif line[:11].lower() == b"message-id:":
                self._messageId = line[11:].strip().decode("ascii", "replace")

    def eomReceived(self) -> Deferred[None]:
        self._sink._delivered(
            Envelope(self._sender, self._recipient, self._size), self._messageId
        )
        return succeed(None)

    def connectionLost(self) -> None:
        # The message was cut short: it is not counted.
        pass
