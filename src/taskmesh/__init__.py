"""
taskmesh: a distributed task scheduler on Twisted.

A scheduler queues tasks from clients and hands them to workers over TCP;
``taskmesh.Client`` is the Python API for submitting them, and
``@taskmesh.task`` makes a Python function a task type:

    @taskmesh.task
    def add(x, y):
        return x + y

    total = await client.submit(add, 2, 3)   # 5, computed on a worker

``taskmesh.connect(address)`` is the blocking client (scripts, Flask,
Django, Jupyter); ``taskmesh.aio.connect(address)`` the asyncio one.
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
from taskmesh.client.blocking import connect
from taskmesh.context import TaskContext, current_task, report_progress
from taskmesh.errors import Retry, ScheduleRefused, TaskProgress
from taskmesh.functions import TaskFunction, remote, task
from taskmesh.handlers import ITaskHandler

__all__ = [
    "Client",
    "ITaskHandler",
    "Retry",
    "ScheduleRefused",
    "SchedulerGone",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskFunction",
    "TaskPending",
    "TaskProgress",
    "TaskRejected",
    "TaskUnknown",
    "__version__",
    "connect",
    "current_task",
    "remote",
    "report_progress",
    "task",
]
