"""
The SQL stores' shared row layout: the columns the SQLite and PostgreSQL
stores read and write, in one order, and the conversions between their rows
and the store's records.

The two stores' tables are the same column for column (store/schema.py),
so what a row means is written once, here; what differs between the two
dialects stays in each store: placeholders (``?`` and ``%s``), how a flag is
written (an integer for SQLite, a boolean for PostgreSQL), BLOB and BYTEA,
and each one's way of creating or replacing a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from taskmesh.store.interface import LIST_SCAN_ROWS, ScheduleRecord, State, StoredTask, TaskSummary
from taskmesh.store.memory import due_time

#: A task as ``stored`` reads it and ``task_row`` writes it.
TASK_COLUMNS = (
    "id, type, payload, submitted_at, priority, key, timeout, max_attempts,"
    " retry_on_error, attempts, losses, due_at"
)
#: A schedule as ``schedule`` reads it and ``schedule_row`` writes it.
SCHEDULE_COLUMNS = (
    "name, cron, every, tz, type, payload, priority, timeout, max_attempts,"
    " retry_on_error, catch_up, paused, next_due, last_due, last_task, source"
)
#: A task for the dashboard's list, as ``summary`` reads it.
SUMMARY_COLUMNS = "id, type, state, submitted_at, finished_at, attempts, losses, key, due_at"


def task_row(task: Any) -> tuple[Any, ...]:
    """A core task as the values of ``TASK_COLUMNS``, for its insert."""
    options = task.options
    return (
        task.id,
        task.type,
        task.payload,
        task.submitted_at,
        options.priority,
        options.key,
        options.timeout,
        options.max_attempts,
        options.retry_on_error,
        task.attempts,
        task.losses,
        None if options.delay is None and options.at is None else due_time(task),
    )


def stored(row: Sequence[Any]) -> StoredTask:
    """A row of ``TASK_COLUMNS`` as a StoredTask."""
    return StoredTask(
        id=row[0],
        type=row[1],
        payload=bytes(row[2]),
        submitted_at=row[3],
        priority=row[4],
        key=row[5],
        timeout=row[6],
        max_attempts=row[7],
        retry_on_error=bool(row[8]),
        attempts=row[9],
        losses=row[10],
        due_at=row[11],
    )


def stored_with_state(row: Sequence[Any]) -> StoredTask:
    """
    A row of ``TASK_COLUMNS`` followed by ``state, finished_at`` as a
    StoredTask with its state: QUEUED while it has no outcome (a reopened
    task's old state column is not its state).
    """
    found = stored(row)
    if row[13] is None:
        return found
    return replace(found, state=State(row[12]))


def schedule_row(record: ScheduleRecord, flag: Callable[[bool], Any]) -> tuple[Any, ...]:
    """
    A ScheduleRecord as the values of ``SCHEDULE_COLUMNS``; ``flag`` writes
    a boolean the way the store's dialect takes it (``int`` for SQLite,
    ``bool`` for PostgreSQL's boolean columns).
    """
    return (
        record.name,
        record.cron,
        record.every,
        record.tz,
        record.task_type,
        record.payload,
        record.priority,
        record.timeout,
        record.max_attempts,
        flag(record.retry_on_error),
        flag(record.catch_up),
        flag(record.paused),
        record.next_due,
        record.last_due,
        record.last_task,
        record.source,
    )


def schedule(row: Sequence[Any]) -> ScheduleRecord:
    """A row of ``SCHEDULE_COLUMNS`` as a ScheduleRecord."""
    return ScheduleRecord(
        name=row[0],
        cron=row[1],
        every=row[2],
        tz=row[3],
        task_type=row[4],
        payload=bytes(row[5]),
        priority=row[6],
        timeout=row[7],
        max_attempts=row[8],
        retry_on_error=bool(row[9]),
        catch_up=bool(row[10]),
        paused=bool(row[11]),
        next_due=row[12],
        last_due=row[13],
        last_task=row[14],
        source=row[15],
    )


#: A query and its arguments.
Query = tuple[str, list[object]]


def list_queries(
    mark: str, finished: State | None, task_type: str | None, limit: int, before_id: int | None
) -> tuple[Query, Query]:
    """
    The two reads of one page of the task list, with ``mark`` the dialect's
    placeholder (``?``, ``%s``): how many rows the window below
    ``before_id`` holds and its lowest id, and the page's rows
    (``SUMMARY_COLUMNS``, for ``list_page``).  The inner query reads at most
    LIST_SCAN_ROWS rows by primary key, so a rare filter costs a bounded
    read, not a table scan.
    """
    conditions = []
    arguments: list[object] = [before_id if before_id is not None else 2**63 - 1, LIST_SCAN_ROWS]
    if finished is State.QUEUED:
        conditions.append("finished_at IS NULL")
    elif finished is not None:
        conditions.append(f"finished_at IS NOT NULL AND state = {mark}")
        arguments.append(int(finished))
    if task_type is not None:
        conditions.append(f"type = {mark}")
        arguments.append(task_type)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    window = f"SELECT {{}} FROM tasks WHERE id < {mark} ORDER BY id DESC LIMIT {mark}"
    scan = f"SELECT count(*), min(id) FROM ({window.format('id')}) w"
    rows = f"SELECT {SUMMARY_COLUMNS} FROM ({window.format('*')}) w{where} ORDER BY id DESC LIMIT {mark}"
    return (scan, arguments[:2]), (rows, [*arguments, limit])


def list_page(
    rows: Sequence[Sequence[Any]], scanned: Sequence[Any], limit: int
) -> tuple[list[TaskSummary], int | None]:
    """
    The page of ``list_queries``' reads, and the id to go on below (None:
    nothing more).  Fewer rows than asked: the window is exhausted; go on
    below it, if anything is there.
    """
    found = [summary(row) for row in rows]
    if len(found) == limit:
        return found, found[-1].id
    more = scanned[0] == LIST_SCAN_ROWS
    return found, (int(scanned[1]) if more else None)


def summary(row: Sequence[Any]) -> TaskSummary:
    """A row of ``SUMMARY_COLUMNS`` as a TaskSummary: QUEUED while it has no outcome."""
    return TaskSummary(
        id=row[0],
        type=row[1],
        state=State(row[2]) if row[4] is not None else State.QUEUED,
        submitted_at=row[3],
        finished_at=row[4],
        attempts=row[5],
        losses=row[6],
        key=row[7],
        due_at=row[8],
    )
