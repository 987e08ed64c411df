"""
The errors a person meets, in one place: every layer raises these, so a
failure reads the same whether it came from the core, a connection or a
client.  ``Retry`` is the one a task raises itself.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, NamedTuple


class TaskFailed(Exception):
    """
    A task ended without a result; the message says why, for a person.

    When a task function raised, ``type``, ``message`` and ``traceback`` are
    the remote exception's (``type`` as Python prints it, e.g.
    ``ZeroDivisionError`` or ``myapp.errors.Declined``), and the remote
    traceback is added to this exception's notes, so an uncaught TaskFailed
    shows where the task failed, not only where it was awaited.  For other
    failures (a bytes handler's reason, a timeout, a lost worker) ``type``
    and ``traceback`` are None and ``message`` is the reason.
    """

    def __init__(
        self,
        reason: str,
        *,
        type: str | None = None,
        message: str | None = None,
        traceback: str | None = None,
        note: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type = type
        self.message = reason if message is None else message
        self.traceback = traceback
        #: What the scheduler added to the remote failure (e.g. the attempts spent).
        self.note = note
        if traceback:
            self.add_note(f"Remote traceback (on the worker):\n{traceback.rstrip()}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.reason, self.type, self.message, self.traceback, self.note),
        )


def _rebuild(
    cls: type[TaskFailed],
    reason: str,
    kind: str | None,
    message: str | None,
    traceback: str | None,
    note: str | None,
) -> TaskFailed:
    return cls(reason, type=kind, message=message, traceback=traceback, note=note)


class TaskCancelled(TaskFailed):
    """A task was cancelled before it finished."""


class TaskRejected(Exception):
    """The scheduler refused a submission (too large, malformed); nothing ran."""


class StoreUnavailable(Exception):
    """
    The scheduler's store cannot write (or read) now: the disk is full,
    another process holds its lock, the file is read-only.  The message says
    so in the words a person can act on ("store unavailable: database or
    disk is full"); ``reason`` is the cause alone.  A submission refused for
    this may be sent again once the store is back: nothing was stored.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"store unavailable: {reason}")
        self.reason = reason


class OperationFailed(Exception):
    """The scheduler could not serve an operator's request (list, retry, purge); the message says why."""


class SchedulerGone(Exception):
    """The connection to the scheduler ended before the answer came."""


class NotTaskmesh(SchedulerGone):
    """The address answered, but not in taskmesh's protocol (a web server, say): what it said."""


class NotLeader(SchedulerGone):
    """
    The scheduler reached is a hot standby: ``leader`` is where it says the
    leader is (``host:port``), or None while it knows no leader.
    """

    def __init__(self, message: str, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader


class AuthenticationFailed(Exception):
    """The handshake failed: no secret, the wrong one, or not the scheduler meant; the message says which."""


class TaskUnknown(LookupError):
    """No task has this id (never submitted, or its result was pruned)."""


class TaskProgress(NamedTuple):
    """What a running task last reported with ``report_progress``."""

    done: float
    #: None when the task did not say.
    total: float | None = None
    note: str = ""

    def __str__(self) -> str:
        amount = f"{self.done:g}" if self.total is None else f"{self.done:g}/{self.total:g}"
        return f"{amount} {self.note}" if self.note else amount


class TaskPending(Exception):
    """
    The task has no outcome yet; the message is its state (queued or
    running), and ``progress`` what it last reported, if it did.
    """

    def __init__(
        self, task_id: int, state: str, progress: TaskProgress | None = None, due: float | None = None
    ) -> None:
        detail = f" ({progress})" if progress else (f" (due {format_due(due)})" if due is not None else "")
        super().__init__(f"task {task_id} is {state}{detail}")
        self.task_id = task_id
        self.state = state
        self.progress = progress
        #: A scheduled task's due time (seconds since the epoch), else None.
        self.due = due


def format_due(due: float) -> str:
    """A due time as people and the CLI read it: ISO 8601 in UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(due, datetime.UTC)
    return moment.isoformat(timespec="milliseconds" if due % 1 else "seconds").replace("+00:00", "Z")


class ScheduleRefused(Exception):
    """The scheduler refused a schedule command (a bad cron expression, no such schedule): the reason."""


#: The longest delay a retry may ask for: the wire carries it as u32 milliseconds.
MAX_RETRY_DELAY = 0xFFFFFFFE / 1000


class Retry(Exception):
    """
    Raised inside a task to ask for another attempt, ``delay`` seconds from
    now (None: the scheduler's backoff, doubling from ``--retry-delay``).
    The attempt counts against the task's ``max_attempts``: once they are
    spent, the task fails with this retry's reason, or with the exception it
    was raised from (``raise Retry(delay=5) from error``), and its
    traceback.  In a map, an item that raises Retry fails: maps do not retry.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and not (0 <= delay <= MAX_RETRY_DELAY):
            # Also NaN: it fails every comparison.
            raise ValueError(f"a retry's delay must be 0 to {MAX_RETRY_DELAY:g} seconds, not {delay!r}")
        super().__init__(reason or "the task asked to be retried")
        self.delay = None if delay is None else float(delay)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (Retry, (self.delay, self.reason))


def check_progress(done: object, total: object, note: object) -> TaskProgress:
    """The arguments of ``report_progress``, checked: TypeError or ValueError otherwise."""
    if isinstance(done, bool) or not isinstance(done, int | float):
        raise TypeError(f"progress must be a number, not {type(done).__name__}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int | float)):
        raise TypeError(f"a progress total must be a number or None, not {type(total).__name__}")
    if not isinstance(note, str):
        raise TypeError(f"a progress note must be text, not {type(note).__name__}")
    for name, value in (("progress", done), ("a progress total", total)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number of 0 or more, not {value!r}")
    return TaskProgress(float(done), None if total is None else float(total), note)
