"""
What must survive a scheduler restart, behind one interface.

The scheduler core decides the order of writes and when they must be
durable: a task is durable before its submission is acknowledged, a result
is durable before it is reported.  A store only buffers writes until
``commit()``, which the core calls once per reactor turn that wrote
anything: group commit, so durability costs one commit per turn rather than
one per task.  Which tasks are running is deliberately not stored: after a
restart every unfinished task is queued again (at-least-once).

When the store cannot write (disk full, locked by another process, file
made read-only), ``commit()`` raises ``taskmesh.errors.StoreUnavailable``
and **keeps every buffered write**: the next ``commit()`` tries them all
again, in their order, together with whatever was written since.  The core
then holds back the acknowledgements and results of those writes and
retries; if it gives up on some submissions it refuses them and takes
their writes back with ``discard()``.  No store call may wait on a lock:
the core runs on the reactor thread and retries on a timer instead.

``taskmesh.store.memory.MemoryStore`` keeps everything in this process
(nothing survives a restart); ``taskmesh.store.sqlite.SqliteStore`` is the
embedded default.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from zope.interface import Interface


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
    """
    A task as the store has it: an unfinished one as it is given back after
    a restart, or any one for ``stored_task`` (then ``state`` says which).
    """

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
    #: QUEUED for an unfinished task, else its outcome's state.
    state: State = State.QUEUED


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished task's state and value (result, or the reason it failed)."""

    state: State
    value: bytes
    finished_at: float


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """One row of the dashboard's task list (a store's view: an unfinished task is QUEUED here)."""

    id: int
    type: str | None  # None: a store that does not keep types (memory)
    state: State
    submitted_at: float | None
    finished_at: float | None
    attempts: int
    losses: int
    key: str | None


#: Rows a task list page looks at, at the most, to find its matches: a
#: bounded read however rare the filter, continued from where it stopped.
LIST_SCAN_ROWS = 20000


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

    def commit() -> bool:
        """
        Make every write since the last successful commit durable, at once,
        and return True; or, for a backlog too large to write without holding
        the reactor, make its oldest part durable and return False (call
        again: nothing may be acknowledged until it returns True); or raise
        ``StoreUnavailable`` (at once, never waiting on a lock) and keep every
        write not yet durable, in order, for the next commit.
        """

    def discard(task_ids: Collection[int]) -> None:
        """
        Take back the uncommitted writes of these tasks (their submissions
        were refused, so they must never become durable).  Ids stay used.
        """

    def unfinished() -> Iterator[StoredTask]:
        """Every task without an outcome, oldest first."""

    def outcome(task_id: int) -> Outcome | None:
        """
        A finished task's durable outcome, or None (unfinished, unknown or
        pruned).  Reads may raise ``StoreUnavailable``.
        """

    def task_for_key(key: str) -> int | None:
        """The id of the task submitted with this deduplication key, if any."""

    def prune(finished_before: float, limit: int) -> int:
        """
        Forget at most ``limit`` outcomes finished before this time; return
        how many (the core calls again, next turn, while it gets ``limit``,
        so a large backlog never holds the reactor).  May raise
        ``StoreUnavailable``; buffered writes are not affected.
        """

    def list_tasks(
        finished: State | None, task_type: str | None, limit: int, before_id: int | None
    ) -> tuple[list[TaskSummary], int | None]:
        """
        Committed tasks, newest first, with ids below ``before_id`` (None: all),
        filtered by outcome (``QUEUED``: the unfinished) and type; at most
        ``limit`` of them, looking at no more than ``LIST_SCAN_ROWS`` rows.
        Returns the rows and the ``before_id`` of the next page (None: no more).
        For the dashboard; read-only.  Reads may raise ``StoreUnavailable``.
        """

    def stored_task(task_id: int) -> StoredTask | None:
        """
        A committed task as submitted (finished or not), with its state; None
        if the store does not have it (or keeps no payloads: memory).  For
        ``taskmesh retry``; one read by id.  Reads may raise ``StoreUnavailable``.
        """

    def reopen(task_id: int) -> None:
        """
        Make a finished task unfinished again, with no outcome and 0 attempts
        and losses (durable at the next commit, in order with the other
        writes), so that it runs again under its id: ``taskmesh retry``.
        """

    def close() -> None:
        """Commit what can be committed, and release the storage (and its lock)."""
