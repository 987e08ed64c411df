"""
What an operator asks a scheduler beyond tasks' results: list tasks, run
failed ones again, purge a queue.  The three clients share these request
builders (a request number in, a wire message out) and their checks, so the
call shape is the same everywhere: ``tasks(state=..., task_type=...,
limit=..., before_id=...)``, ``retry(*ids, failed=..., task_type=...)`` and
``purge(task_type)``.
"""

from __future__ import annotations

from collections.abc import Callable

from taskmesh import wire

#: The states ``tasks(state=...)`` filters on (None: every state).
TASK_STATES = wire.LIST_STATES[1:]

Request = Callable[[int], wire.Message]


def list_request(
    state: str | None = None, task_type: str | None = None, limit: int = 100, before_id: int | None = None
) -> Request:
    """A ListTasks; ValueError for a state or limit the scheduler would refuse."""
    if state is not None and state not in TASK_STATES:
        raise ValueError(f"state must be one of {', '.join(TASK_STATES)}, not {state!r}")
    if not 1 <= limit <= wire.MAX_LIST_LIMIT:
        raise ValueError(f"limit must be 1 to {wire.MAX_LIST_LIMIT}, not {limit}")
    if task_type is not None:
        wire.check_task_type(task_type)
    code = 0 if state is None else wire.LIST_STATES.index(state)
    return lambda request: wire.ListTasks(request, code, limit, before_id or 0, task_type)


def retry_request(task_ids: tuple[int, ...], failed: bool = False, task_type: str | None = None) -> Request:
    """A RetryTasks; ValueError when it would name nothing, or too much."""
    if not task_ids and not failed:
        raise ValueError("name the tasks to retry, or ask for every failed one")
    if len(task_ids) > wire.MAX_RETRY_IDS:
        raise ValueError(f"at most {wire.MAX_RETRY_IDS} tasks in one retry")
    if task_type is not None:
        wire.check_task_type(task_type)
    ids = [int(task_id) for task_id in task_ids]
    return lambda request: wire.RetryTasks(request, ids, failed, task_type)


def purge_request(task_type: str) -> Request:
    """A PurgeTasks; ValueError for a type the wire cannot carry."""
    wire.check_task_type(task_type)
    return lambda request: wire.PurgeTasks(request, task_type)
