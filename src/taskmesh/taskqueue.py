"""
The scheduler's queue of tasks waiting for a worker.

One FIFO per task type, so that a worker is only ever offered tasks it
announced it can run, and a type that no connected worker runs waits without
holding up the others.  Across the types a worker runs, the oldest task (the
lowest sequence number) goes first.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Protocol


class Queued(Protocol):
    """What the queue needs of a task: its type and its place in line."""

    type: str
    seq: int


class TaskQueue:
    """Waiting tasks, FIFO within a type, oldest first across types."""

    def __init__(self) -> None:
        self._by_type: dict[str, deque[Queued]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, task: Queued) -> None:
        """Queue a new task behind every other task of its type."""
        line = self._by_type.get(task.type)
        if line is None:
            line = self._by_type[task.type] = deque()
        line.append(task)
        self._size += 1

    def push_front(self, task: Queued) -> None:
        """
        Put a task that lost its worker back in line where it stood: ahead of
        every later submission of its type.
        """
        line = self._by_type.setdefault(task.type, deque())
        if not line or line[0].seq > task.seq:
            line.appendleft(task)
        else:
            # Rare: several requeued tasks of one type; keep them in order.
            items = sorted([*line, task], key=lambda queued: queued.seq)
            line.clear()
            line.extend(items)
        self._size += 1

    def has_waiting(self, task_type: str) -> bool:
        return bool(self._by_type.get(task_type))

    def pop_for(self, task_types: Iterable[str]) -> Queued | None:
        """The oldest waiting task of any of these types, or None."""
        best: deque[Queued] | None = None
        for task_type in task_types:
            line = self._by_type.get(task_type)
            if line and (best is None or line[0].seq < best[0].seq):
                best = line
        if best is None:
            return None
        self._size -= 1
        return best.popleft()

    def waiting_by_type(self) -> dict[str, int]:
        return {name: len(line) for name, line in self._by_type.items() if line}
