"""
Twisted's ESMTP server with an injected clock, for L{taskservice.smtpsink}.

Kept apart because importing L{twisted.mail.smtp} installs the global
reactor: L{taskservice.smtpsink} imports this module only when it builds a
factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.mail.interfaces import IMessageDelivery
from twisted.mail.smtp import ESMTP, SMTPFactory


class SinkESMTP(ESMTP):
    """
    An ESMTP server protocol delivering through one L{IMessageDelivery},
    timing idle clients out on an injected clock (or never, without one).
    """

    noisy = False

    def __init__(
        self, delivery: IMessageDelivery, clock: IReactorTime | None, timeout: int
    ) -> None:
        super().__init__()
        self.delivery = delivery
        self.timeout = timeout
        self._clock = clock

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        assert self._clock is not None
        return self._clock.callLater(period, func)

    def setTimeout(self, period: float | None) -> Any:
        if self._clock is None:
            return None
        return super().setTimeout(period)


class SinkSMTPFactory(SMTPFactory):
    """
    Builds L{SinkESMTP} protocols sharing one delivery.
    """

    noisy = False

    def __init__(
        self,
        delivery: IMessageDelivery,
        clock: IReactorTime | None,
        timeout: int,
        domain: bytes,
    ) -> None:
        super().__init__()
        self.domain = domain
        self._delivery = delivery
        self._clock = clock
        self._timeout = timeout

    def buildProtocol(self, addr: Any) -> SinkESMTP:
        protocol = SinkESMTP(self._delivery, self._clock, self._timeout)
        protocol.factory = self
        protocol.host = self.domain
        return protocol
