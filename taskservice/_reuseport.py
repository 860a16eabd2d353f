"""
A TCP listener that other processes may share (C{SO_REUSEPORT}).

Each task server is one parent process and its workers; the parent does
all the protocol work, so one task server keeps one core busy at most. Run
several on one machine, each with C{--reuse-port} and the same C{--listen},
and the kernel spreads new connections over them: every core gets a parent
(see docs/deployment). Twisted's C{tcp:} endpoint cannot set the option, so
the socket is made here and handed to the reactor with the public
C{IReactorSocket.adoptStreamPort}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listen on C{interface}:C{port} with C{SO_REUSEPORT} (and
    C{SO_REUSEADDR}), over TLS when given C{tls} (an C{IOpenSSLContextFactory}
    such as the task server's mutual-TLS options).
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "",
        backlog: int = 50,
        tls: Any = None,
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog
        self._tls = tls

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        if self._tls is not None:
            protocolFactory = TLSMemoryBIOFactory(self._tls, False, protocolFactory)
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            port = self._reactor.adoptStreamPort(sock.fileno(), family, protocolFactory)
        except OSError as e:
            return fail(CannotListenError(self._interface, self._port, e))
        finally:
            # The reactor has its own copy of the descriptor.
            sock.close()
        return succeed(port)
