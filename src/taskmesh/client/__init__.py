"""
The clients: ``Client`` is the Twisted API (every call a Deferred or a
coroutine); maps stream items through a bounded window.
"""

from taskmesh.client.twisted_client import Client, MapSummary
from taskmesh.errors import (
    SchedulerGone,
    TaskCancelled,
    TaskFailed,
    TaskPending,
    TaskRejected,
    TaskUnknown,
)

__all__ = [
    "Client",
    "MapSummary",
    "SchedulerGone",
    "TaskCancelled",
    "TaskFailed",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
]
