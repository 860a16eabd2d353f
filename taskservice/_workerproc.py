"""
The parent's side of one worker process: its lifecycle state, its frames
in and out, and its output logged with its id.

Lifecycle (L{WorkerState})::

    STARTING --ready--> IDLE <--> BUSY --(recycled)--> RETIRING
        |                 |         |                      |
        +-----------------+---------+---- exit/kill/close -+--> DEAD

A worker takes calls only when IDLE, or when BUSY with coroutine calls and
room for more. RETIRING workers finish their calls and take no new ones.

A L{WorkerProcess} knows nothing of the pool: it tells its L{WorkerOwner}
(the supervisor) of each frame, each change of state and its end.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskservice import _coalesce, _json
from taskservice._defaults import DEFAULT_MAX_RESULT
from taskservice._frames import (
    COMMANDS_FD,
    MAX_FRAME,
    RESULTS_FD,
    FrameDecoder,
    FrameError,
    frame,
)
from taskservice._task import Registry

if TYPE_CHECKING:
    from taskservice._call import Call

_MAX_OUTPUT_LINE = 64 * 1024
_HEADER = struct.Struct(">I")
"""A frame's length header (see L{taskservice._frames})."""
CHILD_FDS: Mapping[int, str] = {
    0: "w",
    1: "r",
    2: "r",
    COMMANDS_FD: "w",
    RESULTS_FD: "r",
}
"""A worker's file descriptors (see docs/pool.rst, "Processes")."""


class WorkerState(Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"
    DEAD = "dead"


_ALLOWED = {
    WorkerState.STARTING: {WorkerState.IDLE, WorkerState.DEAD},
    WorkerState.IDLE: {WorkerState.BUSY, WorkerState.RETIRING, WorkerState.DEAD},
    WorkerState.BUSY: {WorkerState.IDLE, WorkerState.RETIRING, WorkerState.DEAD},
    WorkerState.RETIRING: {WorkerState.DEAD},
    WorkerState.DEAD: set(),
}


class WorkerOwner(Protocol):
    """
    What a L{WorkerProcess} tells the one who started it.
    """

    def workerMessage(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """
        C{worker} sent a frame.
        """

    def workerResults(
        self, worker: WorkerProcess, results: list[tuple[int, bytes]]
    ) -> None:
        """
        C{worker} answered calls: C{(cid, result)} pairs, each result still
        its JSON (the common frames, as many as came in a row in one read).
        """

    def workerStateChanged(
        self, worker: WorkerProcess, old: WorkerState, new: WorkerState
    ) -> None:
        """
        C{worker} went from C{old} to C{new} (called for every change).
        """

    def workerEnded(self, worker: WorkerProcess, reason: BaseException) -> None:
        """
        C{worker}'s process has exited and its pipes are closed.
        """


class WorkerProcess(ProcessProtocol):
    """
    One worker, as the pool sees it.

    @ivar calls: the calls it holds (running or waiting in its pipe), by
        call id; changed only through L{assign} and L{take}.
    @ivar blocking: whether it is running plain (blocking) calls; such a
        worker takes no coroutine call until it is done.
    @ivar shortOnly: all its plain calls are of tasks measured to be short:
        more short calls may wait in its pipe (see C{ProcessPool.pipeline}).
    @ivar completed: calls it has answered, for recycling.
    @ivar retireCause: why it is due for replacement ("recycled", "memory"),
        once it is; it serves on until its C{successor} is ready.
    @ivar killedByPool: the pool killed it (deadline, cancel, stop); its
        death is not a crash.
    @ivar notReadyInTime: it was killed for not being ready within the
        pool's C{startTimeout}.

    C{successor}, C{predecessor}, C{retireCause}, C{startTimer} and
    C{notReadyInTime} are the supervisor's notes about this worker.
    """

    log = Logger()

    def __init__(self, owner: WorkerOwner, workerID: int) -> None:
        self.owner = owner
        self.workerID = workerID
        self.state = WorkerState.STARTING
        self.calls: dict[int, Call] = {}
        self.blocking = False
        self.shortOnly = False
        self.lastAnswerAt = 0.0
        self.completed = 0
        self.successor: WorkerProcess | None = None
        self.predecessor: WorkerProcess | None = None
        self.retireCause: str | None = None
        self.killedByPool = False
        self.startTimer: IDelayedCall | None = None
        self.notReadyInTime = False
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._frames = FrameDecoder()
        self._partial: dict[int, bytes] = {1: b"", 2: b""}
        self._commands: Any = None
        self.holding: list[bytes] = []
        """Call frames held by L{sendCall}, sent by L{sendHeld}."""

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.workerID} pid={self.pid} {self.state.value}>"

    def stopStartTimer(self) -> None:
        timer, self.startTimer = self.startTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def setState(self, new: WorkerState) -> None:
        old = self.state
        if new is old:
            return
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"worker {self.workerID}: {old} -> {new}")
        self.state = new
        self.owner.workerStateChanged(self, old, new)

    def assign(self, call: Call, short: bool) -> None:
        """
        C{call} is being sent to this worker (C{short}: its task is measured
        to be short, so more short calls may wait behind it).
        """
        if self.state is not WorkerState.BUSY:
            self.setState(WorkerState.BUSY)
        self.shortOnly = short and (self.shortOnly or not self.calls)
        self.calls[call.cid] = call
        self.blocking = not call.spec.isAsync  # type: ignore[union-attr]

    def take(self, cid: int, answered: bool = True) -> Call | None:
        """
        Forget call C{cid} (answered, or never sent: C{answered} false), and
        return it; when no call is left, the worker is free again.
        """
        call = self.calls.pop(cid, None)
        if call is None:
            return None
        if answered:
            self.completed += 1
        if not self.calls:
            self.blocking = self.shortOnly = False
            if self.state is WorkerState.BUSY:
                self.setState(WorkerState.IDLE)
        return call

    def takeAnswered(
        self, results: list[tuple[int, bytes]]
    ) -> list[tuple[Call, bytes]]:
        """
        L{take} each call answered in C{results} (C{(cid, result)} pairs;
        a cid it does not hold is skipped), and return them with their
        results, in order.
        """
        calls = self.calls
        pop = calls.pop
        answered = []
        for cid, raw in results:
            call = pop(cid, None)
            if call is not None:
                answered.append((call, raw))
        self.completed += len(answered)
        if not calls and answered:
            self.blocking = self.shortOnly = False
            if self.state is WorkerState.BUSY:
                self.setState(WorkerState.IDLE)
        return answered

    def takeAll(self) -> list[Call]:
        """
        Forget every call it holds (it is dead), and return them.
        """
        calls, self.calls = self.calls, {}
        return list(calls.values())

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        # The command pipe itself (a real process's ProcessWriter), written
        # through the coalescer; None for transports without one (fakes).
        self._commands = getattr(self.transport, "pipes", {}).get(COMMANDS_FD)
        # Tasks that read stdin get end-of-file rather than hang.
        self.transport.closeStdin()

    def send(self, message: dict[str, Any], decoded: bool = False) -> None:
        """
        Send a frame (C{decoded}: C{message} holds only values decoded from
        JSON; see L{_json.dumpsDecoded}).
        """
        self._write(
            frame(_json.dumpsDecoded(message) if decoded else _json.dumps(message))
        )

    def sendCall(self, call: Call, tb: bool, decoded: bool, hold: bool = False) -> None:
        """
        Send C{call}'s frame (C{tb}: ask for tracebacks; C{decoded}: its
        arguments hold only values decoded from JSON; C{hold}: keep it
        with the others held until L{sendHeld}). Raises L{TypeError} or
        L{ValueError} for arguments JSON cannot carry.
        """
        payload = _json.callPayload(
            call.cid, call.task, call.args, call.kwargs, tb, call.job, decoded
        )
        size = len(payload)
        if size > MAX_FRAME:
            raise FrameError(f"frame of {size} bytes is over {MAX_FRAME}")
        data = _HEADER.pack(size) + payload
        if hold and self._commands is not None:
            self.holding.append(data)
        else:
            # (Not held for a transport without a command pipe, such as an
            # in-memory worker: what its write raises is the call's error.)
            self._write(data)

    def sendHeld(self) -> None:
        """
        Send the frames L{sendCall} held, in one write.
        """
        holding = self.holding
        if holding:
            data = holding[0] if len(holding) == 1 else b"".join(holding)
            holding.clear()
            # (Written here, not through _write: an in-memory worker decodes
            # the frames on this stack, no deeper than they were encoded.)
            commands = self._commands
            if commands is not None:
                _coalesce.write(commands, data)
            else:
                assert self.transport is not None
                self.transport.writeToChild(COMMANDS_FD, data)

    def _write(self, data: bytes) -> None:
        commands = self._commands
        if commands is not None:
            # The frames of one reactor pass go to the worker in one write.
            _coalesce.write(commands, data)
        else:
            assert self.transport is not None
            self.transport.writeToChild(COMMANDS_FD, data)

    def kill(self) -> None:
        """
        SIGKILL the process; it will never receive another call.
        """
        self.setState(WorkerState.DEAD)
        self.killedByPool = True
        try:
            assert self.transport is not None
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def close(self) -> None:
        """
        Close the command pipe: the worker exits when it reads end of file.
        """
        self.setState(WorkerState.DEAD)
        self.killedByPool = True
        assert self.transport is not None
        if self._commands is not None:
            _coalesce.flush(self._commands)
        self.transport.closeChildFD(COMMANDS_FD)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == RESULTS_FD:
            owner = self.owner
            resultFrame = _json.resultFrame
            results: list[tuple[int, bytes]] = []
            for payload in self._frames.feed(data):
                found = resultFrame(payload)
                if found is not None:
                    results.append(found)
                    continue
                # Any other frame in its turn, after the results before it.
                if results:
                    owner.workerResults(self, results)
                    results = []
                owner.workerMessage(self, _json.loads(payload))
            if results:
                owner.workerResults(self, results)
            return
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > _MAX_OUTPUT_LINE:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            self._logOutput(childFD, line)

    def _logOutput(self, childFD: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if childFD == 2:
            self.log.warn(
                "worker {workerID} (pid {pid}) stderr: {line}",
                workerID=self.workerID,
                pid=self.pid,
                line=text,
            )
        else:
            self.log.info(
                "worker {workerID} (pid {pid}) stdout: {line}",
                workerID=self.workerID,
                pid=self.pid,
                line=text,
            )

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._partial.items():
            if rest:
                self._logOutput(childFD, rest)
        assert reason.value is not None
        self.owner.workerEnded(self, reason.value)
        self.ended.callback(None)


def workerCommand(python: str, registry: Registry, maxResult: int) -> list[str]:
    """
    The command line of a worker running C{registry}'s modules.
    """
    args = [python, "-m", "taskservice.worker"]
    if maxResult != DEFAULT_MAX_RESULT:
        args += ["--max-result", str(maxResult)]
    if any(spec.needsReactor for spec in registry.values()):
        args.append("--reactor")
    return args + list(registry.modules)


def workerEnvironment(env: Mapping[str, str] | None) -> dict[str, str]:
    """
    The workers' environment: C{env} (default: this process's), unbuffered,
    with this process's import path unless C{PYTHONPATH} is set.
    """
    found = dict(os.environ if env is None else env)
    found["PYTHONUNBUFFERED"] = "1"
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    found.setdefault("PYTHONPATH", os.pathsep.join(path))
    return found


def exitDescription(reason: BaseException) -> dict[str, int]:
    """
    C{{"signal": n}} or C{{"exitCode": n}} for a process-ended reason.
    """
    if isinstance(reason, ProcessTerminated) and reason.signal is not None:
        return {"signal": reason.signal}
    return {"exitCode": getattr(reason, "exitCode", None) or 0}
