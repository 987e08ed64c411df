"""
The errors a person meets, in one place: every layer raises these, so a
failure reads the same whether it came from the core, a connection or a
client.
"""

from __future__ import annotations


class TaskFailed(Exception):
    """A task ended without a result; the message says why, for a person."""


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


class SchedulerGone(Exception):
    """The connection to the scheduler ended before the answer came."""


class TaskUnknown(LookupError):
    """No task has this id (never submitted, or its result was pruned)."""


class TaskPending(Exception):
    """The task has no outcome yet; the message is its state (queued or running)."""

    def __init__(self, task_id: int, state: str) -> None:
        super().__init__(f"task {task_id} is {state}")
        self.task_id = task_id
        self.state = state
