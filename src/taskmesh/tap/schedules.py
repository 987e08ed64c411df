"""
``--schedules FILE``: periodic schedules declared in the scheduler's
configuration, a TOML file read with tomllib::

    [schedule.tidy]
    cron = "*/5 * * * *"          # or: every = "10s" (or a number of seconds)
    tz = "Europe/Paris"           # the cron's zone (default UTC)
    type = "sha256"               # the task type (default sha256)
    payload = "hello"             # the payload as text, or:
    # args = [2, 3]               # a task function's arguments (JSON), kwargs = {...}
    priority = 0
    timeout = 30
    max_attempts = 3
    retry_on_error = false
    missed = "run-once"           # or "skip": ticks missed while the scheduler was down

A small module of its own, so that a general configuration file can fold
it in as one table.  Each schedule declared here replaces the stored one of
its name at start (keeping when it last ran); one the file no longer
declares is removed.
"""

from __future__ import annotations

import tomllib
from typing import Any

from taskmesh.cli.times import parse_duration
from taskmesh.codec import encode_arguments
from taskmesh.core.schedules import ScheduleError, check_name, check_spec, first_due
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.store.interface import ScheduleRecord
from taskmesh.wire import DEFAULT_MAX_PAYLOAD, check_task_type

_KEYS = frozenset(
    {"cron", "every", "tz", "type", "payload", "args", "kwargs", "priority", "timeout"}
    | {"max_attempts", "retry_on_error", "missed"}
)


def read_schedules(path: str, now: float) -> list[ScheduleRecord]:
    """Every schedule of the file, checked; ValueError naming the file, schedule and field."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    unknown = set(document) - {"schedule"}
    if unknown:
        raise ValueError(
            f"{path}: unknown tables {', '.join(sorted(unknown))} (schedules go in [schedule.NAME])"
        )
    tables = document.get("schedule", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{path}: [schedule.NAME] tables, one per schedule")
    found = []
    for name, table in tables.items():
        try:
            found.append(_record(name, table, now))
        except (ScheduleError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: schedule {name!r}: {e}") from None
    return found


def _record(name: str, table: Any, now: float) -> ScheduleRecord:
    check_name(name)
    if not isinstance(table, dict):
        raise ValueError("a schedule is a table of fields")
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"unknown fields {', '.join(sorted(unknown))}")
    cron = table.get("cron")
    every = table.get("every")
    if isinstance(every, str):
        every = parse_duration(every)
    tz = table.get("tz", "UTC")
    check_spec(cron, every, tz)
    if "payload" in table and ("args" in table or "kwargs" in table):
        raise ValueError("payload, or args and kwargs, not both")
    if "args" in table or "kwargs" in table:
        payload = encode_arguments(list(table.get("args", [])), dict(table.get("kwargs", {})))
    else:
        text = table.get("payload", "")
        if not isinstance(text, str):
            raise ValueError("payload is text")
        payload = text.encode("utf-8")
    if len(payload) > DEFAULT_MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes (at most {DEFAULT_MAX_PAYLOAD})")
    missed = table.get("missed", "run-once")
    if missed not in ("run-once", "skip"):
        raise ValueError('missed is "run-once" or "skip"')
    timeout = table.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError("timeout is a positive number of seconds")
    max_attempts = table.get("max_attempts", 0)
    priority = table.get("priority", 0)
    if not isinstance(max_attempts, int) or not 0 <= max_attempts <= 0xFFFF:
        raise ValueError("max_attempts is 0 to 65535")
    if not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        raise ValueError("priority is a whole number that fits in 32 bits")
    return ScheduleRecord(
        name=name,
        cron=cron,
        every=None if every is None else float(every),
        tz=tz,
        task_type=check_task_type(table.get("type", DEFAULT_TASK_TYPE)),
        payload=payload,
        priority=priority,
        timeout=None if timeout is None else float(timeout),
        max_attempts=max_attempts,
        retry_on_error=bool(table.get("retry_on_error", False)),
        catch_up=missed == "run-once",
        paused=False,
        next_due=first_due(cron, every, tz, now),
        last_due=None,
        last_task=None,
        source="config",
    )
