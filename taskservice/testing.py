"""
In-memory fakes for testing code built on taskservice, without processes.

L{FakeProcessReactor} is a L{MemoryReactorClock} whose C{spawnProcess}
records a L{FakeWorker} for each process the pool starts. A test drives each
worker by hand (L{FakeWorker.ready}, L{FakeWorker.reply},
L{FakeWorker.exit}...) or lets L{FakeWorker.runCalls} run the queued calls
in-process with the pool's own registry::

    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, ["myapp.tasks"], size=2)
    pool.startService()
    reactor.readyAll()
    d = pool.submit("add", [1, 2])
    reactor.runAllCalls(pool.registry)
    assert successResultOf(d) == 3

L{GatewayRig} (loaded when first used: it imports the gateway) is the
websocket gateway in memory, in front of such a pool: browsers, gateway,
its client and the task server all connected over C{iosim}.

For tests that start real servers: L{freePort} is a free TCP port on
loopback, and L{Twistd} one real C{twistd taskservice} subprocess (options
in; ports, pid, output, signals and a restart out; always reaped)::

    with Twistd(tmp_path, "--workers", "2", "--no-websocket") as server:
        connection = server.connect()          # once --listen answers
        ...
        server.terminate()
        assert server.wait() == -signal.SIGTERM
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from taskservice import _json
from taskservice._defaults import DEFAULT_MAX_RESULT
from taskservice._frames import COMMANDS_FD, RESULTS_FD, FrameDecoder, frame
from taskservice._task import Registry, _jobContext, _progressHook, jobContextFrom
from taskservice._twistdprocess import Twistd, TwistdFailed, freePort
from taskservice.worker import (
    cancelledMessage,
    describeError,
    resultPayload,
    unknownTaskMessage,
)

__all__ = [
    "FakeProcessReactor",
    "FakeProcessTransport",
    "FakeWorker",
    "GatewayRig",
    "MemoryEndpoint",
    "Twistd",
    "TwistdFailed",
    "freePort",
]

_SIGNALS = {"KILL": 9, "TERM": 15, "INT": 2, "HUP": 1}


class FakeProcessTransport:
    """
    The transport a L{FakeWorker}'s protocol writes to.
    """

    def __init__(self, worker: FakeWorker, pid: int) -> None:
        self.worker = worker
        self.pid: int | None = pid
        self.signals: list[str | int] = []
        self.closedFDs: set[int] = set()

    def writeToChild(self, childFD: int, data: bytes) -> None:
        if childFD in self.closedFDs:
            raise RuntimeError(f"write to closed fd {childFD}")
        self.worker._received(childFD, data)

    def closeChildFD(self, childFD: int) -> None:
        self.closedFDs.add(childFD)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def loseConnection(self) -> None:
        for fd in (0, 1, 2, COMMANDS_FD, RESULTS_FD):
            self.closeChildFD(fd)

    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


class FakeWorker:
    """
    One fake worker process, driven by the test.

    @ivar calls: the C{call} messages sent to it that it has not answered.
    @ivar messages: every message the parent sent it.
    @ivar maxResult: the C{--max-result} it was started with: results whose
        JSON is longer fail as too large in L{runCalls}, as in a real worker.
    """

    def __init__(
        self,
        reactor: FakeProcessReactor,
        protocol: IProcessProtocol,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        childFDs: Mapping[int, Any] | None,
        pid: int,
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.args = list(args)
        self.env = dict(env or {})
        self.childFDs = dict(childFDs or {})
        self.transport = FakeProcessTransport(self, pid)
        self.messages: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.saidReady = False
        self.maxResult = DEFAULT_MAX_RESULT
        if "--max-result" in self.args:
            self.maxResult = int(self.args[self.args.index("--max-result") + 1])
        self._decoder = FrameDecoder()

    @property
    def pid(self) -> int | None:
        return self.transport.pid

    @property
    def alive(self) -> bool:
        return self.transport.pid is not None

    @property
    def cancelled(self) -> list[int]:
        """
        The call ids the parent asked this worker to cancel.
        """
        return [m["cid"] for m in self.messages if m.get("op") == "cancel"]

    def acknowledgeCancel(self, cid: int) -> None:
        """
        Answer a cancelled coroutine call as the real worker does.
        """
        self._take(cid)
        self.send(cancelledMessage(cid))

    @property
    def killed(self) -> bool:
        return "KILL" in self.transport.signals

    @property
    def closed(self) -> bool:
        """
        Whether the parent closed the command pipe (asked it to exit).
        """
        return COMMANDS_FD in self.transport.closedFDs

    def _received(self, childFD: int, data: bytes) -> None:
        assert childFD == COMMANDS_FD, childFD
        for payload in self._decoder.feed(data):
            message = _json.loads(payload)
            self.messages.append(message)
            if message.get("op") == "call":
                self.calls.append(message)

    def send(self, message: dict[str, Any]) -> None:
        """
        Send a frame to the parent, as the real worker would.
        """
        self.protocol.childDataReceived(RESULTS_FD, frame(_json.dumps(message)))

    def ready(self) -> None:
        self.saidReady = True
        self.send({"op": "ready", "pid": self.pid})

    def _take(self, cid: int | None) -> dict[str, Any]:
        if not self.calls:
            raise AssertionError("this worker has no call to answer")
        if cid is None:
            return self.calls.pop(0)
        for i, call in enumerate(self.calls):
            if call["cid"] == cid:
                return self.calls.pop(i)
        raise AssertionError(f"this worker has no call {cid}")

    def reply(self, result: Any, cid: int | None = None) -> None:
        call = self._take(cid)
        self.send({"op": "result", "cid": call["cid"], "result": result})

    def raise_(self, type: str, message: str, cid: int | None = None) -> None:
        call = self._take(cid)
        self.send(
            {
                "op": "error",
                "cid": call["cid"],
                "error": {"type": type, "message": message},
            }
        )

    def progress(self, update: dict[str, Any], cid: int | None = None) -> None:
        call = (
            self.calls[0]
            if cid is None
            else next(c for c in self.calls if c["cid"] == cid)
        )
        self.send({"op": "progress", "cid": call["cid"], "update": update})

    def output(self, data: bytes, childFD: int = 1) -> None:
        self.protocol.childDataReceived(childFD, data)

    def exit(self, exitCode: int = 0, signal: int | None = None) -> None:
        """
        End the process; C{signal} as if killed by that signal number.
        """
        if self.transport.pid is None:
            raise AssertionError("this worker already exited")
        self.transport.pid = None
        reason: Exception
        if exitCode == 0 and signal is None:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(exitCode if signal is None else None, signal)
        self.protocol.processEnded(Failure(reason))

    def reap(self) -> None:
        """
        If the parent signalled or closed this worker, let it exit as the
        real one would.
        """
        if not self.alive:
            return
        if self.killed:
            self.exit(signal=_SIGNALS["KILL"])
        elif self.closed:
            self.exit(0)

    def _reporter(self, cid: int) -> Callable[[dict[str, Any]], None]:
        def report(update: dict[str, Any]) -> None:
            self.send({"op": "progress", "cid": cid, "update": update})

        return report

    def runCalls(self, registry: Registry) -> None:
        """
        Run every call waiting on this worker in-process, with progress,
        and answer it as the real worker would.
        """
        while self.calls and self.alive and not self.killed:
            call = self.calls.pop(0)
            cid = call["cid"]
            spec = registry.get(call["task"])
            if spec is None:
                # A task this worker's modules lack, as the real one says.
                self.send(unknownTaskMessage(cid))
                continue
            if cid in self.cancelled and not spec.isAsync:
                # Cancelled while waiting in the pipe: skipped, as the real
                # worker does.
                self.send(cancelledMessage(cid))
                continue
            token = _progressHook.set(self._reporter(cid))
            jobToken = _jobContext.set(jobContextFrom(call.get("job")))
            try:
                result = spec.function(*call["args"], **call["kwargs"])
                if spec.isAsync:
                    result = asyncio.run(result)
            except Exception as e:
                error = describeError(e, bool(call.get("tb")))
                self.send({"op": "error", "cid": cid, "error": error})
            else:
                # Encoded as the real worker does: a result that is not
                # JSON, or longer than --max-result, is an error frame.
                payload = resultPayload(cid, result, self.maxResult)
                self.protocol.childDataReceived(RESULTS_FD, frame(payload))
            finally:
                _progressHook.reset(token)
                _jobContext.reset(jobToken)


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """
    A memory reactor with a clock whose C{spawnProcess} makes L{FakeWorker}s.

    @ivar spawnProcessException: an exception C{spawnProcess} raises instead
        of starting a worker, while set (as Twisted's own
        C{DummyProcessReactor}): C{OSError(errno.EMFILE, ...)} plays a
        machine out of file descriptors.
    @ivar spawnFailures: how many times C{spawnProcess} raised it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.workers: list[FakeWorker] = []
        self.spawnProcessException: BaseException | None = None
        self.spawnFailures = 0
        self._nextPid = 1000

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[Any, Any] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> Any:
        if self.spawnProcessException is not None:
            self.spawnFailures += 1
            raise self.spawnProcessException
        self._nextPid += 1
        worker = FakeWorker(
            self,
            processProtocol,
            [a if isinstance(a, str) else a.decode() for a in args],
            env,
            childFDs,
            self._nextPid,
        )
        self.workers.append(worker)
        processProtocol.makeConnection(worker.transport)  # type: ignore[arg-type]
        return worker.transport

    @property
    def alive(self) -> list[FakeWorker]:
        """
        The workers that have not exited.
        """
        return [w for w in self.workers if w.alive]

    def readyAll(self) -> None:
        """
        Every live worker that has not said so yet says it is ready.
        """
        for worker in self.alive:
            if not worker.saidReady:
                worker.ready()

    def reapAll(self) -> None:
        """
        Let every killed or closed worker exit.
        """
        for worker in list(self.workers):
            worker.reap()

    def runAllCalls(self, registry: Registry) -> None:
        """
        Run every waiting call in-process until no worker has one waiting.
        """
        while True:
            pending = [w for w in self.alive if w.calls and not w.killed]
            if not pending:
                return
            for worker in pending:
                worker.runCalls(registry)


if TYPE_CHECKING:
    from taskservice._gatewayrig import GatewayRig, MemoryEndpoint

_RIG = frozenset({"GatewayRig", "MemoryEndpoint"})


def __getattr__(name: str) -> Any:
    # The gateway rig imports autobahn and the gateway: only when used.
    if name in _RIG:
        from taskservice import _gatewayrig

        return getattr(_gatewayrig, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
