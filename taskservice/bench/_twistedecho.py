"""
A second reference for the TCP scenario: one Twisted process answering
every line inline, as the FAQ-style baseline answers it (L{answer}), on the
same reactor as C{twistd taskservice} but with no worker hop, no checks and
no pool. It shows what one process on Twisted's reactor can do at most, the
ceiling for our task server's parent, which does all the protocol work for
its workers.
"""

from __future__ import annotations

from taskservice.bench._faqserver import BACKLOG, HOST, FaqServer, answer, spawn


def serve() -> None:
    from typing import Any

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol

    class Inline(Protocol):
        def __init__(self) -> None:
            self.buffer = b""

        def dataReceived(self, data: bytes) -> None:
            lines = (self.buffer + data).split(b"\n")
            self.buffer = lines.pop()
            assert self.transport is not None
            self.transport.write(b"".join(answer(line) for line in lines if line))

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    endpoint = TCP4ServerEndpoint(reactor, 0, backlog=BACKLOG, interface=HOST)
    endpoint.listen(Factory.forProtocol(Inline)).addCallback(listening)
    reactor.run()


def start() -> FaqServer:
    """
    Start the server as a subprocess; return once it listens.
    """
    return spawn("taskservice.bench._twistedecho")


if __name__ == "__main__":
    serve()
