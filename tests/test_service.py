"""
TaskServerService stops in an order that loses no reply.
"""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from taskservice.pool import ProcessPool
from taskservice.server import TaskServerFactory
from taskservice.service import TaskServerService
from taskservice.testing import FakeProcessReactor

_case = SynchronousTestCase()


def test_stopOrder() -> None:
    """
    Stopping the service stops listening first, lets the running call finish
    and writes its reply, refuses new calls on open connections with
    -32006, then closes each connection gracefully.
    """
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["tests.pooltasks"], size=1)
    factory = TaskServerFactory(pool)
    service = TaskServerService(reactor, "tcp:12345:interface=127.0.0.1", pool, factory)
    service.startService()
    assert [p[0] for p in reactor.tcpServers] == [12345]
    reactor.readyAll()
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}\n')
    stopped = service.stopService()
    assert not service.listener.running, "listening stopped first"
    protocol.dataReceived(b'{"jsonrpc":"2.0","id":2,"method":"add","params":[1,2]}\n')
    reactor.runAllCalls(pool.registry)
    replies = [json.loads(line) for line in transport.value().splitlines()]
    assert replies[0]["id"] == 2 and replies[0]["error"]["code"] == -32006
    assert replies[1] == {"jsonrpc": "2.0", "id": 1, "result": 3}
    _case.assertNoResult(stopped)
    reactor.reapAll()
    assert transport.disconnecting, "the connection is closed after the drain"
    _case.assertNoResult(stopped)
    protocol.connectionLost(None)
    assert _case.successResultOf(stopped) is None
