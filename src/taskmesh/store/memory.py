"""
The memory store: everything in this process, fast, and gone with it.

Unfinished tasks live in the scheduler core anyway; this store only has to
remember outcomes and deduplication keys beyond them, for retrieval by id,
and what the core keeps out of its memory: tasks with a due time (the core
loads them a window at a time) and schedules.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Collection, Iterator
from typing import Any

from zope.interface import implementer

from taskmesh.store.interface import (
    LIST_SCAN_ROWS,
    ITaskStore,
    Outcome,
    ScheduleRecord,
    State,
    StoredTask,
    TaskSummary,
)


def due_time(task: Any) -> float | None:
    """A core task's due time: its ``at``, or its submission plus its ``delay``; None: at once."""
    options = task.options
    at: float | None = options.at
    if at is not None:
        return at
    delay: float | None = options.delay
    if delay is not None:
        return float(task.submitted_at + delay)
    return None


def stored_task(task: Any, due_at: float | None) -> StoredTask:
    """A core task as a store gives it back."""
    options = task.options
    return StoredTask(
        id=task.id,
        type=task.type,
        payload=task.payload,
        submitted_at=task.submitted_at,
        priority=options.priority,
        key=options.key,
        timeout=options.timeout,
        max_attempts=options.max_attempts,
        retry_on_error=options.retry_on_error,
        attempts=task.attempts,
        losses=task.losses,
        due_at=due_at,
    )


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
        #: Tasks with a due time and no outcome, and their (due time, id)
        #: in order (entries of finished tasks are skipped, and dropped as
        #: the window passes them).
        self._delayed: dict[int, StoredTask] = {}
        self._due_order: list[tuple[float, int]] = []
        self._schedules: dict[str, ScheduleRecord] = {}

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
        if task.options.delay is not None or task.options.at is not None:
            due = due_time(task)
            assert due is not None
            self._delayed[task.id] = stored_task(task, due)
            bisect.insort(self._due_order, (due, task.id))

    def record_attempts(self, task_id: int, attempts: int, losses: int) -> None:
        """Nothing to do: the core holds the counts, and a restart forgets all."""

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        self._outcomes[task_id] = Outcome(state, value, finished_at)
        if self._delayed:
            self._delayed.pop(task_id, None)

    def commit(self) -> bool:
        """Nothing to do: every write is already as durable as it will be (so it never fails)."""
        return True

    def discard(self, task_ids: Collection[int]) -> None:
        """Forget these tasks' keys and outcomes (never needed: commits never fail here)."""
        for task_id in task_ids:
            self._outcomes.pop(task_id, None)
            self._delayed.pop(task_id, None)
            key = self._key_of.pop(task_id, None)
            if key is not None and self._keys.get(key) == task_id:
                del self._keys[key]

    def unfinished(self) -> Iterator[StoredTask]:
        """Always empty: nothing outlives the process that held it."""
        return iter(())

    def due_tasks(self, before: float, after: tuple[float, int], limit: int) -> list[StoredTask]:
        order = self._due_order
        # Entries of finished tasks before the window are of no more use.
        stale = 0
        while stale < len(order) and order[stale][0] < before and order[stale][1] not in self._delayed:
            stale += 1
        if stale:
            del order[:stale]
        found: list[StoredTask] = []
        for index in range(bisect.bisect_right(order, after), len(order)):
            due, task_id = order[index]
            if due >= before or len(found) >= limit:
                break
            task = self._delayed.get(task_id)
            if task is not None:
                found.append(task)
        return found

    def scheduled_task(self, task_id: int) -> StoredTask | None:
        return self._delayed.get(task_id)

    def count_scheduled(self, after: float) -> int:
        return sum(1 for task in self._delayed.values() if task.due_at is not None and task.due_at > after)

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        self._schedules[schedule.name] = schedule

    def remove_schedule(self, name: str) -> None:
        self._schedules.pop(name, None)

    def schedules(self) -> list[ScheduleRecord]:
        return [self._schedules[name] for name in sorted(self._schedules)]

    def outcome(self, task_id: int) -> Outcome | None:
        return self._outcomes.get(task_id)

    def task_for_key(self, key: str) -> int | None:
        return self._keys.get(key)

    def prune(self, finished_before: float, limit: int) -> int:
        old = []
        for task_id, outcome in self._outcomes.items():
            if outcome.finished_at < finished_before:
                old.append(task_id)
                if len(old) >= limit:
                    break
        for task_id in old:
            del self._outcomes[task_id]
            key = self._key_of.pop(task_id, None)
            if key is not None:
                self._keys.pop(key, None)
        return len(old)

    def list_tasks(
        self, finished: State | None, task_type: str | None, limit: int, before_id: int | None
    ) -> tuple[list[TaskSummary], int | None]:
        """
        Finished tasks only, without types (unfinished ones live in the
        core), latest finished first; ``before_id`` pages by id, and every
        row looked at (skipped or not) counts towards ``LIST_SCAN_ROWS``.
        """
        if finished is State.QUEUED or task_type is not None:
            return [], None
        found: list[TaskSummary] = []
        scanned = 0
        last: int | None = None
        for task_id in reversed(self._outcomes):  # in finishing order: no sort of every outcome
            scanned += 1
            if scanned > LIST_SCAN_ROWS:
                return found, last
            if before_id is not None and task_id >= before_id:
                continue
            last = task_id
            outcome = self._outcomes[task_id]
            if finished is None or outcome.state is finished:
                found.append(
                    TaskSummary(
                        task_id,
                        None,
                        outcome.state,
                        None,
                        outcome.finished_at,
                        0,
                        0,
                        self._key_of.get(task_id),
                    )
                )
                if len(found) == limit:
                    return found, task_id
        return found, None

    def stored_task(self, task_id: int) -> StoredTask | None:
        """Always None: a memory store keeps no payloads (finished tasks cannot be retried)."""
        return None

    def reopen(self, task_id: int) -> None:
        """Forget the outcome (never called: ``stored_task`` gives nothing to reopen)."""
        self._outcomes.pop(task_id, None)

    def close(self) -> None:
        """Nothing to release."""
