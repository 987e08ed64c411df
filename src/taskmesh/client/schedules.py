"""
Schedule commands as the three clients (and the CLI) build them.

``add_schedule(name, task, *args, cron=..., every=..., tz=..., ...)`` takes
the task each tick submits in ``submit``'s shape: a task function and its
arguments, or a payload with ``task_type=``.  The scheduler checks the cron
expression and the zone and answers with the schedule as a dict.
"""

from __future__ import annotations

import datetime
from typing import Any

from taskmesh import wire
from taskmesh.functions import as_task, task_options
from taskmesh.handlers import DEFAULT_TASK_TYPE

#: add_schedule's own keyword arguments; every other keyword goes to the task function.
SCHEDULE_KEYWORDS = frozenset(
    {"cron", "every", "tz", "skip_missed", "task_type"}
    | {"priority", "timeout", "max_attempts", "retry_on_error"}
)


def add_command(name: str, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> wire.ScheduleCommand:
    """What ``add_schedule(name, task, *args, **kwargs)`` sends; ValueError if it cannot be."""
    own = {key: kwargs.pop(key) for key in list(kwargs) if key in SCHEDULE_KEYWORDS}
    cron = own.get("cron")
    every = own.get("every")
    if isinstance(every, datetime.timedelta):
        every = every.total_seconds()
    if (cron is None) == (every is None):
        raise ValueError("a schedule needs cron= or every=, exactly one")
    options = task_options(
        own.get("priority", 0),
        own.get("timeout"),
        own.get("max_attempts", 0),
        None,
        bool(own.get("retry_on_error", False)),
    )
    if isinstance(task, str | bytes):
        if args or kwargs:
            raise TypeError("a payload's schedule takes no further arguments (task_type= names its type)")
        task_type = wire.check_task_type(own.get("task_type") or DEFAULT_TASK_TYPE)
        payload = task.encode("utf-8") if isinstance(task, str) else task
    else:
        function = as_task(task)
        task_type = function.name
        payload = function.call_payload(args, kwargs)
        if options is wire.DEFAULT_OPTIONS:
            base = function.submit_options
            options = wire.TaskOptions(
                base.priority, base.timeout, base.max_attempts, None, base.retry_on_error
            )
    return wire.ScheduleCommand(
        wire.SCHEDULE_ADD,
        name,
        cron,
        None if every is None else float(every),
        own.get("tz") or "UTC",
        task_type,
        payload,
        options,
        not own.get("skip_missed", False),
    )


def name_command(op: int, name: str) -> wire.ScheduleCommand:
    """remove, pause or resume ``name``; list with op SCHEDULE_LIST and no name."""
    return wire.ScheduleCommand(op, name)
