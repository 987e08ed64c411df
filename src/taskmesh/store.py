"""
What must survive a scheduler restart, behind one interface.

The scheduler core decides the order of writes and when they must be
durable: a task is durable before its submission is acknowledged, a result
is durable before it is reported.  A store only buffers writes until
``commit()``, which the core calls once per reactor turn that wrote
anything: group commit, so durability costs one commit per turn rather than
one per task.  Which tasks are running is deliberately not stored: after a
restart every unfinished task is queued again (at-least-once).

``MemoryStore`` keeps everything in this process (nothing survives a
restart); ``taskmesh.sqlite_store.SqliteStore`` is the embedded default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterator

from zope.interface import Interface, implementer


class State(IntEnum):
    """A task's state; the finished ones are what a store keeps results for."""

    QUEUED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def finished(self) -> bool:
        return self >= State.SUCCEEDED


@dataclass(frozen=True, slots=True)
class StoredTask:
    """An unfinished task as the store gives it back after a restart."""

    id: int
    type: str
    payload: bytes
    submitted_at: float
    priority: int
    key: str | None
    timeout: float | None
    max_attempts: int
    retry_on_error: bool
    attempts: int
    losses: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished task's state and value (result, or the reason it failed)."""

    state: State
    value: bytes
    finished_at: float


class ITaskStore(Interface):
    """Durable task and result storage, written in groups."""

    def next_id() -> int:
        """The smallest task id never used in this store."""

    def add(task: Any) -> None:
        """
        Record a new task (durable at the next commit).  ``task`` has the
        attributes id, type, payload, submitted_at, options (a
        ``wire.TaskOptions``), attempts and losses: the core's own task
        object, so that adding costs no copy.
        """

    def record_attempts(task_id: int, attempts: int, losses: int) -> None:
        """Record how often a task failed or lost its worker (for limits across restarts)."""

    def finish(task_id: int, state: State, value: bytes, finished_at: float) -> None:
        """Record a task's outcome (durable at the next commit)."""

    def commit() -> None:
        """Make every write since the last commit durable, at once."""

    def unfinished() -> Iterator[StoredTask]:
        """Every task without an outcome, oldest first."""

    def outcome(task_id: int) -> Outcome | None:
        """A finished task's outcome, or None (unfinished, unknown or pruned)."""

    def task_for_key(key: str) -> int | None:
        """The id of the task submitted with this deduplication key, if any."""

    def prune(finished_before: float) -> int:
        """Forget outcomes finished before this time; return how many."""

    def close() -> None:
        """Commit and release the storage."""


def time_based_first_id() -> int:
    """
    A first task id for a store that forgets everything on restart: the
    microseconds since the epoch, so a restarted scheduler does not hand out
    the ids of the tasks it forgot (unless it ran more than a million tasks a
    second, for longer than it was down).
    """
    return time.time_ns() // 1000


@implementer(ITaskStore)
class MemoryStore:
    """Everything in this process: fast, and gone when the process is."""

    def __init__(self, first_id: int = 1) -> None:
        self._next_id = first_id
        self._outcomes: dict[int, Outcome] = {}
        self._keys: dict[str, int] = {}
        self._key_of: dict[int, str] = {}

    def next_id(self) -> int:
        return self._next_id

    def add(self, task: Any) -> None:
        # Unfinished tasks live in the core; a memory store only has to
        # remember keys and outcomes beyond them.
        if task.id >= self._next_id:
            self._next_id = task.id + 1
        key = task.options.key
        if key is not None:
            self._keys[key] = task.id
            self._key_of[task.id] = key

    def record_attempts(self, task_id: int, attempts: int, losses: int) -> None:
        """Nothing to do: the core holds the counts, and a restart forgets all."""

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        self._outcomes[task_id] = Outcome(state, value, finished_at)

    def commit(self) -> None:
        """Nothing to do: every write is already as durable as it will be."""

    def unfinished(self) -> Iterator[StoredTask]:
        """Always empty: nothing outlives the process that held it."""
        return iter(())

    def outcome(self, task_id: int) -> Outcome | None:
        return self._outcomes.get(task_id)

    def task_for_key(self, key: str) -> int | None:
        return self._keys.get(key)

    def prune(self, finished_before: float) -> int:
        old = [task_id for task_id, o in self._outcomes.items() if o.finished_at < finished_before]
        for task_id in old:
            del self._outcomes[task_id]
            key = self._key_of.pop(task_id, None)
            if key is not None:
                self._keys.pop(key, None)
        return len(old)

    def close(self) -> None:
        """Nothing to release."""

