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


class SchedulerGone(Exception):
    """The connection to the scheduler ended before the answer came."""


class AuthenticationFailed(Exception):
    """The handshake failed: no secret, the wrong one, or not the scheduler meant; the message says which."""


class TaskUnknown(LookupError):
    """No task has this id (never submitted, or its result was pruned)."""


class TaskPending(Exception):
    """The task has no outcome yet; the message is its state (queued or running)."""

    def __init__(self, task_id: int, state: str) -> None:
        super().__init__(f"task {task_id} is {state}")
        self.task_id = task_id
        self.state = state
