"""
Placement: which worker takes a call, and which tasks are "short".

- a plain call goes to an IDLE worker, so no call waits behind a long task
  while a worker is free; when none is idle and the task is measured to be
  short, it may wait in the pipe of a busy worker running only short calls
  (up to C{pipeline} calls there), never behind a long one;
- a coroutine call goes to a BUSY worker already running coroutine calls
  with room for more (up to C{concurrency}), else to an IDLE one: idle
  workers stay free for plain calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from taskservice._call import Call
from taskservice._workerproc import WorkerProcess, WorkerState

SHORT_CALL = 0.001
"""A task whose calls average less than this many seconds is "short": its
calls may wait in a busy worker's pipe behind other short calls."""
_SHORT_SAMPLES = 5
_EWMA = 0.2


class Placement:
    """
    Chooses workers for calls, and learns how long each task's calls run.
    """

    def __init__(
        self, concurrency: int, pipeline: int, shortCall: float = SHORT_CALL
    ) -> None:
        self.concurrency = concurrency
        self.pipeline = pipeline
        self.shortCall = shortCall
        self._runTime: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self.short: set[str] = set()
        """The names of the tasks measured to be short."""

    def workerFor(
        self,
        call: Call,
        workers: Iterable[WorkerProcess],
        idle: Sequence[WorkerProcess],
    ) -> WorkerProcess | None:
        """
        The worker to take C{call} now, or L{None} if it must wait.
        """
        spec = call.spec
        assert spec is not None
        if spec.isAsync:
            # Pack coroutine calls onto workers already running some, keeping
            # idle workers free for plain calls.
            for worker in workers:
                if (
                    worker.state is WorkerState.BUSY
                    and not worker.blocking
                    and len(worker.calls) < self.concurrency
                ):
                    return worker
        if idle:
            return idle[-1]
        if self.pipeline > 1 and call.task in self.short:
            # No idle worker: a short call may wait in the pipe of a worker
            # running only short calls (never behind a long one).
            best: WorkerProcess | None = None
            for worker in workers:
                if (
                    worker.state is WorkerState.BUSY
                    and worker.blocking
                    and worker.shortOnly
                    and len(worker.calls) < self.pipeline
                    and (best is None or len(worker.calls) < len(best.calls))
                ):
                    best = worker
            return best
        return None

    def isShort(self, name: str) -> bool:
        """
        Whether calls of task C{name} have been measured to be short.
        """
        return name in self.short

    def measureAll(
        self, worker: WorkerProcess, answered: list[tuple[Call, bytes]], now: float
    ) -> None:
        """
        L{measure} each call of C{answered} (in order), all answered at
        C{now}: the same numbers, the same task for the calls in a row
        kept in locals.
        """
        name: str | None = None
        samples = 0
        runTime = 0.0
        lastAnswerAt = worker.lastAnswerAt
        for call, _ in answered:
            if call.task != name:
                if name is not None:
                    self._learned(name, samples, runTime)
                name = call.task
                samples = self._samples.get(name, 0)
                runTime = self._runTime.get(name, 0.0)
            startedAt = call.startedAt or now
            seconds = now - (startedAt if startedAt > lastAnswerAt else lastAnswerAt)
            lastAnswerAt = now
            runTime = runTime + _EWMA * (seconds - runTime) if samples else seconds
            samples += 1
        worker.lastAnswerAt = lastAnswerAt
        if name is not None:
            self._learned(name, samples, runTime)

    def _learned(self, name: str, samples: int, runTime: float) -> None:
        self._samples[name] = samples
        self._runTime[name] = runTime
        if samples >= _SHORT_SAMPLES and runTime < self.shortCall:
            self.short.add(name)
        else:
            self.short.discard(name)

    def measure(self, worker: WorkerProcess, call: Call, now: float) -> None:
        """
        Learn how long the task's calls run: from when the call could start
        (dispatch, or the worker's previous answer) to its answer.
        """
        started = max(call.startedAt or now, worker.lastAnswerAt)
        worker.lastAnswerAt = now
        name = call.task
        seconds = now - started
        samples = self._samples.get(name, 0)
        self._samples[name] = samples + 1
        if samples:
            runTime = self._runTime[name] + _EWMA * (seconds - self._runTime[name])
        else:
            runTime = seconds
        self._runTime[name] = runTime
        if samples + 1 >= _SHORT_SAMPLES and runTime < self.shortCall:
            self.short.add(name)
        else:
            self.short.discard(name)
