"""
Tests for L{taskservice.smtpsink}.

In memory: SMTP conversations typed over a L{StringTransport}, and Twisted's
own SMTP client talking to the sink through L{iosim}, with a L{Clock} for
the idle timeout. Integration: the sink as a C{strports} service on a real
socket on 127.0.0.1, fed by Python's C{smtplib} (in a thread, as the
C{send_mail} task does in a worker), by C{twisted.mail.smtp.sendmail}, and by
the C{send_mail} example task itself.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email.message import EmailMessage
from io import BytesIO

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.mail.smtp import SMTPSenderFactory, sendmail
from twisted.test import iosim
from zope.interface.verify import verifyObject

from taskservice import examples
from taskservice.smtpsink import (
    IDLE_TIMEOUT,
    RECENT_LIMIT,
    Envelope,
    SMTPSink,
    _Delivery,
    _Message,
    sinkService,
)
from taskservice.testing import freePort

SENDER = "sender@example.com"


class Conversation:
    """
    One SMTP client connection to a sink, typed by hand over a
    L{StringTransport}.
    """

    def __init__(self, sink: SMTPSink, clock: Clock | None = None) -> None:
        self.protocol = sink.factory(clock).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 50000)
        )
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000)
        )
        self.protocol.makeConnection(self.transport)
        self.greeting = self.replies()

    def dropped(self) -> bool:
        """
        Whether the sink has closed this connection.
        """
        return bool(self.transport.disconnecting)

    def replies(self) -> list[bytes]:
        """
        The reply lines written since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data.splitlines()

    def say(self, *lines: bytes) -> list[bytes]:
        """
        Send C{lines} (CRLF-terminated, in one chunk); return the replies.
        """
        self.protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
        return self.replies()

    def codes(self, *lines: bytes) -> list[int]:
        """
        Send C{lines}; return the final reply code of each reply.
        """
        return [
            int(reply[:3])
            for reply in self.say(*lines)
            if len(reply) > 3 and reply[3:4] == b" "
        ]

    def send(self, sender: bytes, recipients: list[bytes], body: list[bytes]) -> None:
        """
        Run one whole mail transaction and check that every step succeeds.
        """
        assert self.codes(b"MAIL FROM:<" + sender + b">") == [250]
        for recipient in recipients:
            assert self.codes(b"RCPT TO:<" + recipient + b">") == [250]
        assert self.codes(b"DATA") == [354]
        assert self.codes(*body, b".") == [250]


MESSAGE = [b"Subject: hello", b"", b"one line", b"..a line starting with a dot"]
MESSAGE_SIZE = sum(len(line) + 2 for line in MESSAGE) - 1
"""The message's size once the sink has removed the dot-stuffing."""


def test_conversationCountsEachRecipient() -> None:
    """
    One message to two recipients counts 2, and each copy's envelope is
    recorded (sender, recipient, size after dot-unstuffing).
    """
    sink = SMTPSink()
    talk = Conversation(sink)
    assert talk.greeting[0].startswith(b"220 localhost ")
    assert talk.codes(b"EHLO client.example") == [250]
    talk.send(b"a@example.com", [b"b@example.com", b"c@example.com"], MESSAGE)
    assert sink.received == 2
    assert sink.recent == [
        Envelope("a@example.com", "b@example.com", MESSAGE_SIZE),
        Envelope("a@example.com", "c@example.com", MESSAGE_SIZE),
    ]
    assert sink.stats() == {"received": 2, "duplicates": 0}
    assert talk.codes(b"QUIT") == [221]
    assert talk.dropped()


def test_threeMessagesToTwoRecipients() -> None:
    """
    Three messages to two recipients each over one connection count 6: the
    sink counts copies delivered, one per recipient per message.
    """
    sink = SMTPSink()
    talk = Conversation(sink)
    assert talk.codes(b"HELO client.example") == [250]
    for n in range(3):
        talk.send(
            b"a@example.com",
            [b"b@example.com", b"c@example.com"],
            [f"Subject: {n}".encode(), b"", b"body"],
        )
    assert sink.received == 6
    assert [e.recipient for e in sink.recent] == ["b@example.com", "c@example.com"] * 3


def test_acceptsAnySenderAndRecipient() -> None:
    """
    No relay checks: the null sender and any domain are accepted. (The
    headerless one-byte body counts 5 bytes: Twisted's server puts an empty
    header section before it.)
    """
    sink = SMTPSink()
    talk = Conversation(sink)
    talk.codes(b"EHLO client.example")
    talk.send(b"", [b"postmaster@elsewhere.invalid"], [b"x"])
    assert sink.recent == [Envelope("", "postmaster@elsewhere.invalid", 5)]


def test_recentIsBounded() -> None:
    """
    L{SMTPSink.recent} keeps only the latest C{recentLimit} envelopes,
    oldest first, while L{SMTPSink.received} keeps counting.
    """
    sink = SMTPSink(recentLimit=3)
    talk = Conversation(sink)
    talk.codes(b"EHLO client.example")
    for n in range(5):
        talk.send(b"a@example.com", [f"user{n}@example.com".encode()], [b"x"])
    assert sink.received == 5
    assert [e.recipient for e in sink.recent] == [
        "user2@example.com",
        "user3@example.com",
        "user4@example.com",
    ]
    sink.recent.clear()
    assert len(sink.recent) == 3, "recent is a copy"


def test_defaultRecentLimit() -> None:
    """
    Without a limit given, 150 copies leave the last 100 envelopes.
    """
    assert RECENT_LIMIT == 100
    sink = SMTPSink()
    talk = Conversation(sink)
    talk.codes(b"EHLO client.example")
    talk.send(
        b"a@example.com", [f"u{n}@example.com".encode() for n in range(150)], [b"x"]
    )
    assert sink.received == 150
    assert len(sink.recent) == 100
    assert sink.recent[0].recipient == "u50@example.com"


def test_truncatedMessageNotCounted() -> None:
    """
    A client that goes away in the middle of DATA delivers nothing, and the
    sink keeps serving other clients.
    """
    sink = SMTPSink()
    talk = Conversation(sink)
    talk.codes(b"EHLO client.example")
    talk.codes(b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA")
    talk.say(b"Subject: cut short", b"")
    talk.protocol.connectionLost(None)
    assert sink.received == 0
    assert sink.recent == []
    other = Conversation(sink)
    other.codes(b"EHLO client.example")
    other.send(b"a@example.com", [b"b@example.com"], [b"x"])
    assert sink.received == 1


def test_rsetDiscardsTransaction() -> None:
    """
    RSET before DATA abandons the transaction: nothing is counted.
    """
    sink = SMTPSink()
    talk = Conversation(sink)
    talk.codes(b"EHLO client.example")
    assert talk.codes(
        b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"RSET"
    ) == [250, 250, 250]
    assert sink.received == 0


def test_idleTimeoutOnInjectedClock() -> None:
    """
    With a clock, an idle client is dropped after the timeout (421), which
    each command resets; the clock is the injected one, never the global
    reactor.
    """
    clock = Clock()
    sink = SMTPSink()
    talk = Conversation(sink, clock)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(IDLE_TIMEOUT - 1)
    talk.codes(b"EHLO client.example")
    clock.advance(IDLE_TIMEOUT - 1)
    assert not talk.dropped()
    clock.advance(1)
    assert talk.replies()[0].startswith(b"421 ")
    assert talk.dropped()
    talk.protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_timeoutCancelledOnDisconnect() -> None:
    """
    A client that leaves leaves no delayed call behind on the clock.
    """
    clock = Clock()
    talk = Conversation(SMTPSink(), clock)
    talk.codes(b"QUIT")
    talk.protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_noClockNoTimeout() -> None:
    """
    Without a clock the sink never times out, and schedules nothing on the
    global reactor.
    """
    before = set(reactor.getDelayedCalls())
    talk = Conversation(SMTPSink())
    talk.codes(b"EHLO client.example")
    assert set(reactor.getDelayedCalls()) == before
    assert not talk.dropped()


def test_twistedClientInMemory() -> None:
    """
    Twisted's own SMTP client, connected to the sink through iosim, sends a
    message to two recipients: the client's Deferred reports 2 accepted and
    the sink counts 2.
    """
    sink = SMTPSink()
    result: Deferred[tuple[int, list[object]]] = Deferred()
    message = b"Subject: via iosim\r\n\r\nhello\r\n"
    client = SMTPSenderFactory(
        SENDER,
        ["b@example.com", "c@example.com"],
        BytesIO(message),
        result,
        retries=0,
        timeout=None,
    )
    server = sink.factory(Clock())
    _, _, pump = iosim.connectedServerAndClient(
        lambda: server.buildProtocol(None), lambda: client.buildProtocol(None)
    )
    outcome: list[tuple[int, list[object]]] = []
    result.addCallback(outcome.append)
    pump.flush()
    assert [accepted for accepted, _ in outcome] == [2]
    assert sink.received == 2
    assert {e.recipient for e in sink.recent} == {"b@example.com", "c@example.com"}
    assert {e.sender for e in sink.recent} == {SENDER}


def test_interfaces() -> None:
    """
    The delivery and message objects provide Twisted's mail interfaces.
    """
    sink = SMTPSink()
    assert verifyObject(IMessageDelivery, _Delivery(sink))
    assert verifyObject(IMessageSMTP, _Message(sink, "a@b", "c@d"))


# -- real sockets ------------------------------------------------------------


def _smtplibSend(port: int, messages: int, recipients: list[str]) -> None:
    """
    In a thread: send C{messages} messages, each to all C{recipients}, over
    one smtplib connection.
    """
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        for n in range(messages):
            message = EmailMessage()
            message["From"] = SENDER
            message["To"] = ", ".join(recipients)
            message["Subject"] = f"message {n}"
            message.set_content("hello\n.\nworld\n")
            refused = smtp.send_message(message)
            assert refused == {}


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_smtplibThroughSinkService() -> None:
    """
    Over a real socket, Python's smtplib (in a thread) sends 3 messages to 2
    recipients each through L{sinkService}: the sink counts 6, one per
    recipient per message.
    """
    sink = SMTPSink()
    port = freePort()
    service = sinkService(reactor, f"tcp:{port}:interface=127.0.0.1", sink)
    service.startService()
    try:
        await deferToThread(
            _smtplibSend, port, 3, ["one@example.com", "two@example.com"]
        )
    finally:
        await service.stopService()
    assert sink.received == 6
    assert [e.recipient for e in sink.recent] == [
        "one@example.com",
        "two@example.com",
    ] * 3
    assert all(e.sender == SENDER for e in sink.recent)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_twistedSendmail() -> None:
    """
    C{twisted.mail.smtp.sendmail} (ESMTP, no TLS offered) delivers one
    message to two recipients through a sink listening on port 0: it counts 2.
    """
    sink = SMTPSink()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        sink.factory(reactor)
    )
    try:
        accepted, _ = await sendmail(
            "127.0.0.1",
            SENDER,
            ["one@example.com", "two@example.com"],
            b"Subject: twisted\r\n\r\nhello\r\n",
            port=port.getHost().port,
            reactor=reactor,
        )
    finally:
        await port.stopListening()
    assert accepted == 2
    assert sink.received == 2


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_sendMailTaskToThousandUsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The C{send_mail} example task, run as a plain function in a thread and
    pointed at the sink through C{TASKSERVICE_SMTP}, sends to 1,000 users:
    it returns C{{"sent": 1000}} and the sink counts 1,000, the figure the
    demo page shows.
    """
    sink = SMTPSink()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        sink.factory(reactor)
    )
    monkeypatch.setenv(examples.SMTP_ENVIRONMENT, f"127.0.0.1:{port.getHost().port}")
    users = [f"user{n:04d}@example.com" for n in range(1, 1001)]
    try:
        result = await deferToThread(examples.send_mail, users)
    finally:
        await port.stopListening()
    assert result == {"sent": 1000}
    assert sink.received == 1000
    assert sink.recent[-1] == Envelope(
        examples.DEFAULT_SENDER, "user1000@example.com", sink.recent[-1].size
    )


@pytest.mark.integration
def test_importLeavesReactorAlone() -> None:
    """
    Importing L{taskservice.smtpsink} does not install the global reactor
    (L{twisted.mail.smtp} would; it is imported only to build a factory).
    """
    check = (
        "import sys, taskservice.smtpsink; "
        "assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_faqCallerSendMail(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The Workerman FAQ's own call, {"function": "send_mail", "args": {"from":
    ..., "to": ..., "contents": ...}}, is understood by the send_mail
    example: the message reaches the sink with that sender; an argument the
    FAQ does not use either is refused by name.
    """
    from taskservice.examples import send_mail

    sink = SMTPSink()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        sink.factory(reactor)
    )
    monkeypatch.setenv("TASKSERVICE_SMTP", f"127.0.0.1:{port.getHost().port}")
    try:
        args = {"from": "faq@example.com", "to": "a@example.com", "contents": "hi"}
        assert await deferToThread(lambda: send_mail(**args)) == {"sent": 1}
        assert sink.received == 1
        assert sink.recent[-1].sender == "faq@example.com"
        with pytest.raises(TypeError, match="unexpected arguments"):
            send_mail(to="a@example.com", colour="red")
    finally:
        await port.stopListening()


def test_repeatedMessageIdIsDroppedPerRecipient() -> None:
    """
    A copy whose Message-ID the sink already accepted for that recipient is
    a repeat: counted in duplicates, not received. The same id to another
    recipient, and messages without a Message-ID, are not repeats; the
    memory of ids is bounded (the oldest is forgotten first).
    """
    sink = SMTPSink(seenLimit=2)
    talk = Conversation(sink)
    assert talk.codes(b"HELO client.example") == [250]

    def message(messageId: bytes) -> list[bytes]:
        return [b"Message-ID: " + messageId, b"Subject: hi", b"", b"body"]

    talk.send(b"a@example.com", [b"b@example.com"], message(b"<1@x>"))
    talk.send(b"a@example.com", [b"b@example.com"], message(b"<1@x>"))
    talk.send(b"a@example.com", [b"c@example.com"], message(b"<1@x>"))
    talk.send(b"a@example.com", [b"b@example.com"], MESSAGE)
    talk.send(b"a@example.com", [b"b@example.com"], MESSAGE)
    assert sink.stats() == {"received": 4, "duplicates": 1}
    talk.send(b"a@example.com", [b"b@example.com"], message(b"<2@x>"))
    # <1@x> for b was the oldest of three remembered pairs: forgotten.
    talk.send(b"a@example.com", [b"b@example.com"], message(b"<1@x>"))
    assert sink.stats() == {"received": 6, "duplicates": 1}


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_faqPlaceholdersBesideRealAddresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Over a real SMTP socket: with the FAQ's placeholder C{'xxx'} as sender
    and among the recipients, the real address gets its message (from the
    default sender, since C{'xxx'} is not one) and C{'xxx'} is skipped and
    listed in the result.
    """
    from taskservice.examples import DEFAULT_SENDER, send_mail

    sink = SMTPSink()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        sink.factory(reactor)
    )
    monkeypatch.setenv("TASKSERVICE_SMTP", f"127.0.0.1:{port.getHost().port}")
    try:
        args = {"from": "xxx", "to": ["xxx", "a@example.com"], "contents": "xxx"}
        result = await deferToThread(lambda: send_mail(**args))
    finally:
        await port.stopListening()
    assert result == {"sent": 1, "skipped": ["xxx"]}
    assert sink.received == 1
    assert (sink.recent[-1].sender, sink.recent[-1].recipient) == (
        DEFAULT_SENDER,
        "a@example.com",
    )
