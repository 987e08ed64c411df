"""
The memory store: everything in this process, fast, and gone with it.

Unfinished tasks live in the scheduler core anyway; this store only has to
remember outcomes and deduplication keys beyond them, for retrieval by id.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from typing import Any

from zope.interface import implementer

from taskmesh.store.interface import LIST_SCAN_ROWS, ITaskStore, Outcome, State, StoredTask, TaskSummary


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

    def commit(self) -> bool:
        """Nothing to do: every write is already as durable as it will be (so it never fails)."""
        return True

    def discard(self, task_ids: Collection[int]) -> None:
        """Forget these tasks' keys and outcomes (never needed: commits never fail here)."""
        for task_id in task_ids:
            self._outcomes.pop(task_id, None)
            key = self._key_of.pop(task_id, None)
            if key is not None and self._keys.get(key) == task_id:
                del self._keys[key]

    def unfinished(self) -> Iterator[StoredTask]:
        """Always empty: nothing outlives the process that held it."""
        return iter(())

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
