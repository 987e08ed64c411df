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

A store whose commits go over a network (PostgreSQL) also provides
``IBackgroundCommit``: the core then starts each group commit with
``begin_commit`` and carries on serving while the store's own thread
commits; what the core had promised before it began is answered when that
commit lands, and what came since goes in the next one.  Stores without it
(memory, SQLite) are committed by ``commit()`` on the reactor thread, as
before.

``taskmesh.store.memory.MemoryStore`` keeps everything in this process
(nothing survives a restart); ``taskmesh.store.sqlite.SqliteStore`` is the
embedded default; ``taskmesh.store.postgres.PostgresStore`` is a
PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
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
    #: Waiting for its due time (a delayed task, or a schedule's tick made
    #: early).  Numbered after the finished states, which stores keep.
    SCHEDULED = 5

    @property
    def finished(self) -> bool:
        return 2 <= self <= 4


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
    #: When it may run (seconds since the epoch), or None: at once.
    due_at: float | None = None
    #: QUEUED for an unfinished task, else its outcome's state.
    state: State = State.QUEUED


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """
    A periodic schedule as a store keeps it: what each tick submits, when
    the next one is due, and what the last one was.  Exactly one of
    ``cron`` and ``every`` is set.  A tick's task and the record saying it
    happened are written in the same commit, and the tick's deduplication
    key (``tick_key``) names the schedule and the due time, so a tick is
    enqueued once however often the scheduler restarts.
    """

    name: str
    cron: str | None  # a cron expression, in the time zone ``tz``
    every: float | None  # seconds between ticks
    tz: str  # an IANA time zone name (zoneinfo); "UTC" by default
    task_type: str
    payload: bytes
    priority: int
    timeout: float | None
    max_attempts: int
    retry_on_error: bool
    #: Ticks missed while no scheduler ran: True runs one of them at start
    #: (the latest), False skips them all.
    catch_up: bool
    paused: bool
    #: When the next tick is due (seconds since the epoch).
    next_due: float
    last_due: float | None
    last_task: int | None
    #: Where it was declared: "api" (added by a client) or "config" (the scheduler's file).
    source: str = "api"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished task's state and value (result, or the reason it failed)."""

    state: State
    value: bytes
    finished_at: float


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """
    One row of the task list (a store's view: an unfinished task is QUEUED
    here; the core's ``listed_state`` says what it is now).
    """

    id: int
    type: str | None  # None: a store that does not keep types (memory)
    state: State
    submitted_at: float | None
    finished_at: float | None
    attempts: int
    losses: int
    key: str | None
    #: When a delayed task is due (seconds since the epoch); None for one queued at once.
    due_at: float | None = None


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
        """
        Every task without an outcome and without a due time, oldest first.
        Tasks with a due time are read with ``due_tasks`` instead, a window
        at a time, so that a million tasks due tomorrow cost the scheduler
        nothing today.
        """

    def due_tasks(before: float, after: tuple[float, int], limit: int) -> list[StoredTask]:
        """
        Committed tasks without an outcome whose due time is before
        ``before``, and whose (due time, id) comes after ``after``, in
        (due time, id) order; at most ``limit`` of them.  The scheduler
        pages through a horizon window with it.  SQL: ``WHERE finished_at IS
        NULL AND due_at < ? AND (due_at, id) > (?, ?) ORDER BY due_at, id
        LIMIT ?``.  Reads may raise ``StoreUnavailable``.
        """

    def scheduled_task(task_id: int) -> StoredTask | None:
        """
        The committed task with this id if it has a due time and no outcome
        (so a status query or a cancel reaches a task the scheduler has not
        loaded yet), else None.  Reads may raise ``StoreUnavailable``.
        """

    def count_scheduled(after: float) -> int:
        """
        How many committed tasks without an outcome are due after this time
        (what status shows as scheduled).  Reads may raise ``StoreUnavailable``.
        """

    def save_schedule(schedule: ScheduleRecord) -> None:
        """
        Create or replace the schedule of that name (durable at the next
        commit, in the same transaction as the tasks added before it: a
        tick's task and its record are durable together or not at all).
        """

    def remove_schedule(name: str) -> None:
        """Forget the schedule of that name, if any (durable at the next commit)."""

    def schedules() -> list[ScheduleRecord]:
        """Every committed schedule, by name.  Reads may raise ``StoreUnavailable``."""

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


class IBackgroundCommit(Interface):
    """
    A store that commits in a thread of its own, so that a commit's round
    trips and fsync never hold the reactor.  ``commit()`` still works (it
    waits: for closing, and for whoever needs durability now).
    """

    def begin_commit(landed: Callable[[str | None], None]) -> bool:
        """
        Start making every write so far durable, in the store's thread, and
        return True; or return False when there is nothing to write (every
        write is durable already) and ``landed`` is never called.  At most
        one commit is in flight: the caller begins the next one after this
        one has landed.  ``landed`` is called once, on the reactor thread,
        with None when the commit is durable, or with the reason it is not
        (``StoreUnavailable``'s): then its writes are kept, in order, before
        any written since, for the next commit.  A ``commit()`` or
        ``close()`` while one is in flight waits for it and takes it over:
        its ``landed`` is not called then.
        """

    def pending() -> int:
        """Buffered writes not yet handed to a commit (after a landing: whether to begin another)."""
