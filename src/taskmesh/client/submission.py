"""
What one ``submit`` or ``enqueue`` call sends, from the call shape that
every taskmesh client shares (Twisted, blocking and asyncio alike):

- a task function (``@taskmesh.task``, or ``add.options(...)``) followed by
  *its* arguments, all of them, which travel as JSON; its options come from
  its decorator;
- or a payload (str, sent as UTF-8, or bytes) followed by a task type name
  and keyword options (``priority``, ``timeout``, ``max_attempts``, ``key``,
  ``retry_on_error``, ``delay``, ``at``).

Kept apart from the clients so that the shape is parsed once, the same way,
whichever client is called; it imports no event loop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from taskmesh import wire
from taskmesh.codec import decode_result
from taskmesh.functions import as_task, task_options
from taskmesh.handlers import DEFAULT_TASK_TYPE

__all__ = ["Submission", "as_bytes", "submission"]

#: One submission as sent (and sent again after a reconnect): (task type, payload, options, decode).
#: ``decode`` turns the result's bytes into what the caller gets (None: the bytes themselves).
Submission = tuple[str, bytes, wire.TaskOptions, Any]

Payload = str | bytes


def submission(
    task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, enqueue: bool = False
) -> Submission:
    """
    What ``submit(task, *args, **kwargs)`` sends (``enqueue``: what
    ``enqueue`` sends, whose answer is the task's id, not its result).
    Raises TypeError for arguments the task function or the options refuse.
    """
    if isinstance(task, (str, bytes)):  # noqa: UP038  (a tuple is quicker here)
        if not kwargs and len(args) < 2 and not enqueue:  # the usual case, without a second call
            task_type = wire.check_task_type(args[0]) if args else DEFAULT_TASK_TYPE
            return (
                task_type,
                task.encode("utf-8") if isinstance(task, str) else task,
                wire.DEFAULT_OPTIONS,
                None,
            )
        return _payload_submission(task, *args, no_result=enqueue, **kwargs)
    function = as_task(task)
    options = function.enqueue_options if enqueue else function.submit_options
    return (function.name, function.call_payload(args, kwargs), options, None if enqueue else decode_result)


def _payload_submission(
    payload: Payload,
    task_type: str = DEFAULT_TASK_TYPE,
    *,
    no_result: bool,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 0,
    key: str | None = None,
    retry_on_error: bool = False,
    delay: float | timedelta | None = None,
    at: float | datetime | None = None,
) -> Submission:
    options = task_options(priority, timeout, max_attempts, key, retry_on_error, no_result, delay, at)
    return (wire.check_task_type(task_type), as_bytes(payload), options, None)


def as_bytes(payload: Payload) -> bytes:
    """A payload as sent: str as UTF-8."""
    return payload.encode("utf-8") if isinstance(payload, str) else payload
