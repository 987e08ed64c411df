"""
taskmesh: a distributed task scheduler on Twisted.

A scheduler queues tasks from clients and hands them to workers over TCP;
``taskmesh.Client`` is the Python API for submitting them.
"""

from taskmesh._version import __version__
from taskmesh.client import (
    Client,
    SchedulerGone,
    TaskCancelled,
    TaskFailed,
    TaskPending,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.handlers import ITaskHandler

__all__ = [
    "Client",
    "ITaskHandler",
    "SchedulerGone",
    "TaskCancelled",
    "TaskFailed",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
    "__version__",
]
