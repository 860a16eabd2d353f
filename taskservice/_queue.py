"""
Where accepted calls wait for a worker: the L{CallQueue} interface and its
first-in, first-out implementation.

The pool asks a queue only for its length, its next call (L{CallQueue.peek}
and L{CallQueue.pop}) and for calls to be taken out (L{CallQueue.remove},
L{CallQueue.removeWhere}, L{CallQueue.clear}); it never assumes an order.
So a priority queue, or one kept on disk for durable jobs, can stand in for
L{FifoQueue}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from taskservice._call import Call


class CallQueue(Protocol):
    """
    The calls waiting for a worker, in the order they are to be placed.
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Call]: ...

    def push(self, call: Call) -> None:
        """
        Add an accepted call.
        """

    def peek(self) -> Call | None:
        """
        The call to place next, left in the queue; L{None} if it is empty.
        """

    def pop(self) -> Call:
        """
        Take out the call L{peek} returns.
        """

    def remove(self, call: Call) -> None:
        """
        Take out C{call}, which is in the queue.
        """

    def removeWhere(self, predicate: Callable[[Call], bool]) -> list[Call]:
        """
        Take out, and return, every call for which C{predicate} is true.
        """

    def clear(self) -> list[Call]:
        """
        Take out, and return, every call.
        """


class FifoQueue:
    """
    First in, first out.

    @ivar calls: the calls, oldest first; the one deque for the queue's
        life, which the pool's scheduler reads directly on its hot path.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: deque[Call] = deque()

    @property
    def calls(self) -> deque[Call]:
        return self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(self._calls)

    def push(self, call: Call) -> None:
        self._calls.append(call)

    def peek(self) -> Call | None:
        calls = self._calls
        return calls[0] if calls else None

    def pop(self) -> Call:
        return self._calls.popleft()

    def remove(self, call: Call) -> None:
        calls = self._calls
        if calls and calls[-1] is call:
            # The newest, refused as overloaded: no scan.
            calls.pop()
        else:
            calls.remove(call)

    def removeWhere(self, predicate: Callable[[Call], bool]) -> list[Call]:
        taken = [call for call in self._calls if predicate(call)]
        if taken:
            kept = [call for call in self._calls if not predicate(call)]
            self._calls.clear()
            self._calls.extend(kept)
        return taken

    def clear(self) -> list[Call]:
        taken = list(self._calls)
        self._calls.clear()
        return taken
