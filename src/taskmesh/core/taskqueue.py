"""
The scheduler's queue of tasks waiting for a worker.

One heap per task type, so that a worker is only ever offered tasks it
announced it can run, and a type that no connected worker runs waits without
holding up the others.  Within the types a worker runs, the highest priority
goes first, and among equals the oldest (the lowest sequence number): FIFO
within a priority.  A task that comes back (its worker was lost, or it waits
out a retry delay) therefore regains its place without special handling, and
so do the pieces of a chunk split after its worker was lost (they keep the
chunk's sequence number; the id breaks the tie).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class Waiting(Protocol):
    """What the queue needs of what waits in it (a task, or a job's chunk)."""

    @property
    def type(self) -> str: ...
    @property
    def id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def priority(self) -> int: ...


T = TypeVar("T", bound=Waiting)


class TaskQueue(Generic[T]):
    """Waiting tasks: by priority, then FIFO, within each type."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[tuple[int, int, int, T]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, task: T) -> None:
        line = self._by_type.get(task.type)
        if line is None:
            line = self._by_type[task.type] = []
        heapq.heappush(line, (-task.priority, task.seq, task.id, task))
        self._size += 1

    def has_waiting(self, task_type: str) -> bool:
        return bool(self._by_type.get(task_type))

    def peek(self, task_type: str) -> T | None:
        """The task of this type that would go next, without taking it."""
        line = self._by_type.get(task_type)
        return line[0][3] if line else None

    def pop_for(self, task_types: Iterable[str]) -> T | None:
        """The first waiting task of any of these types, or None."""
        best: list[tuple[int, int, int, T]] | None = None
        for task_type in task_types:
            line = self._by_type.get(task_type)
            if line and (best is None or line[0] < best[0]):
                best = line
        if best is None:
            return None
        self._size -= 1
        return heapq.heappop(best)[3]

    def remove(self, task: T) -> bool:
        """Take a task out of line (it was cancelled); O(n), and rare."""
        line = self._by_type.get(task.type)
        if not line:
            return False
        for index, entry in enumerate(line):
            if entry[3] is task:
                line[index] = line[-1]
                line.pop()
                heapq.heapify(line)
                self._size -= 1
                return True
        return False

    def remove_all(self, tasks: list[T]) -> None:
        """Take many tasks out of line at once (a job was closed): O(n) per type."""
        doomed = {id(task) for task in tasks}
        for task_type in {task.type for task in tasks}:
            line = self._by_type.get(task_type)
            if not line:
                continue
            kept = [entry for entry in line if id(entry[3]) not in doomed]
            self._size -= len(line) - len(kept)
            heapq.heapify(kept)
            self._by_type[task_type] = kept

    def waiting_by_type(self) -> dict[str, int]:
        return {name: len(line) for name, line in self._by_type.items() if line}
