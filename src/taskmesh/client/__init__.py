"""
The clients, one connection core (``taskmesh.net.connection``) under three
faces: ``Client`` is the Twisted API (every call a Deferred; ``submit`` a
``TaskHandle``), ``blocking`` the one for plain threads (``taskmesh.connect``),
``asyncio_client`` the native asyncio one (``taskmesh.aio``).  Maps stream
items through a bounded window.
"""

from taskmesh.client.twisted_client import Client, MapSummary, TaskHandle
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
    "TaskHandle",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
]
