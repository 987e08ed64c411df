"""
``taskmesh tasks``, ``taskmesh retry`` and ``taskmesh purge``: what an
operator does to the queue and the store, each one request to the
scheduler (docs/protocol.md §16), which decides and answers once its writes
are durable.

``retry`` runs a failed or cancelled task again **under its own id** (as
RQ's ``requeue`` does; a Celery retry keeps its id too): whoever kept the
id (a log line, a database row, ``taskmesh result --wait ID``) finds the
new run; its attempts start from 0 and its old outcome is gone.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.python import usage

from taskmesh.cli.commands import (
    EXIT_TASK_FAILED,
    EXIT_UNREACHABLE,
    CommandFailed,
    ConnectionOptions,
    connect,
    out,
    positive_int,
    task_id_argument,
)
from taskmesh.client.operations import TASK_STATES
from taskmesh.errors import OperationFailed, SchedulerGone
from taskmesh.wire import MAX_LIST_LIMIT, MAX_RETRY_IDS, check_task_type


def _task_type(text: str) -> str:
    try:
        return check_task_type(text)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


class TasksOptions(ConnectionOptions):
    synopsis = "[options]"
    longdesc = (
        "List the tasks in the scheduler's store, newest first: id, type, state, attempts, "
        "losses, when submitted or finished, and a failed or cancelled task's reason. "
        "Unfinished tasks show their live state (queued or running)."
    )
    optParameters = [
        ["state", "s", None, f"Only tasks in this state: {', '.join(TASK_STATES)}."],
        ["type", "t", None, "Only tasks of this type."],
        ["limit", "n", 50, f"Tasks listed at the most (1 to {MAX_LIST_LIMIT}).", positive_int],
        ["before", None, None, "Only tasks with smaller ids (the next page after the last id listed)."],
    ]
    optFlags = [["json", None, "Print the rows as JSON, one object a line."]]

    def postOptions(self) -> None:
        super().postOptions()
        if self["state"] is not None and self["state"] not in TASK_STATES:
            raise usage.UsageError(f"--state must be one of {', '.join(TASK_STATES)}")
        if self["limit"] > MAX_LIST_LIMIT:
            raise usage.UsageError(f"--limit must be at most {MAX_LIST_LIMIT}")
        if self["type"] is not None:
            _task_type(self["type"])
        if self["before"] is not None:
            self["before"] = task_id_argument(self["before"])


class RetryOptions(ConnectionOptions):
    synopsis = "[options] [TASK_ID ...]"
    longdesc = (
        "Run failed or cancelled tasks again, under their own ids, with fresh attempts "
        "(as submitted: type, payload, priority, key, timeout). --failed retries every "
        "failed task (of --type). Prints each retried id; a task that cannot be retried "
        "(queued, running, succeeded, pruned) is named on stderr with the reason, and the "
        "exit status is 1."
    )
    optFlags = [["failed", None, "Retry every failed task (with --type: of that type)."]]
    optParameters = [["type", "t", None, "With --failed: only tasks of this type."]]

    def parseArgs(self, *task_ids: str) -> None:
        self["task_ids"] = tuple(task_id_argument(text) for text in task_ids)

    def postOptions(self) -> None:
        super().postOptions()
        if not self["task_ids"] and not self["failed"]:
            raise usage.UsageError("name the tasks to retry (TASK_ID ...), or --failed")
        if self["type"] is not None and not self["failed"]:
            raise usage.UsageError("--type goes with --failed")
        if len(self["task_ids"]) > MAX_RETRY_IDS:
            raise usage.UsageError(f"at most {MAX_RETRY_IDS} task ids at once")
        if self["type"] is not None:
            _task_type(self["type"])


class PurgeOptions(ConnectionOptions):
    synopsis = "--type TYPE [--yes]"
    longdesc = (
        "Cancel every queued task of a type (waiting for a worker, or to retry); running "
        "tasks are left alone. Whoever waits for a purged task is told it was cancelled "
        "(purged by ...), and 'taskmesh retry' brings it back. Asks first when standard "
        "input is a terminal."
    )
    optParameters = [["type", "t", None, "The task type to purge (required)."]]
    optFlags = [["yes", "y", "Do not ask for confirmation."]]

    def postOptions(self) -> None:
        super().postOptions()
        if self["type"] is None:
            raise usage.UsageError("purge needs --type TYPE")
        _task_type(self["type"])


def _ago(moment: float | None) -> str:
    if moment is None:
        return "-"
    seconds = max(0.0, time.time() - moment)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def describe_tasks(rows: list[dict[str, Any]]) -> str:
    """The rows as a table a person reads (the reason last, as it may be long)."""
    header = ("ID", "TYPE", "STATE", "ATTEMPTS", "LOSSES", "SUBMITTED", "FINISHED", "REASON")
    table = [header] + [
        (
            str(row["id"]),
            str(row["type"] if row["type"] is not None else "-"),
            str(row["state"]),
            str(row["attempts"]),
            str(row["losses"]),
            _ago(row["submitted_at"]),
            _ago(row["finished_at"]),
            str(row["reason"] or ""),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1] for line in table
    ).rstrip()


async def _operate(options: ConnectionOptions, reactor: Any, call: Any) -> dict[str, Any]:
    client = await connect(options, reactor)
    try:
        answer: dict[str, Any] = await call(client)
        return answer
    except OperationFailed as e:
        raise CommandFailed(f"the scheduler could not do it: {e}", EXIT_TASK_FAILED) from None
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
    finally:
        await client.close()


async def tasks(options: TasksOptions, reactor: Any) -> None:
    page = await _operate(
        options,
        reactor,
        lambda client: client.tasks(options["state"], options["type"], options["limit"], options["before"]),
    )
    rows = page["tasks"]
    if options["json"]:
        import json

        for row in rows:
            out(json.dumps(row))
    elif rows:
        out(describe_tasks(rows))
    if page.get("next_before") is not None:
        sys.stderr.write(f"taskmesh: more tasks: --before {page['next_before']}\n")


async def retry(options: RetryOptions, reactor: Any) -> None:
    answer = await _operate(
        options,
        reactor,
        lambda client: client.retry(
            *options["task_ids"], failed=options["failed"], task_type=options["type"]
        ),
    )
    for task_id in answer["retried"]:
        out(str(task_id))
    if answer.get("more"):
        sys.stderr.write("taskmesh: more failed tasks remain: run the command again\n")
    refused = answer["refused"]
    if options["failed"] and not options["task_ids"] and not answer["retried"] and not refused:
        sys.stderr.write("taskmesh: no failed tasks to retry\n")
    if refused:
        lines = [f"task {task_id} not retried: {reason}" for task_id, reason in refused[:20]]
        if len(refused) > 20:
            lines.append(f"... and {len(refused) - 20} more")
        raise CommandFailed("\n".join(lines), EXIT_TASK_FAILED)


async def purge(options: PurgeOptions, reactor: Any) -> None:
    task_type = options["type"]
    if not options["yes"] and sys.stdin.isatty():
        sys.stderr.write(f"Cancel every queued {task_type!r} task at {options['connect']}? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandFailed("nothing purged", EXIT_TASK_FAILED)
    answer = await _operate(options, reactor, lambda client: client.purge(task_type))
    out(f"purged {answer['purged']} queued {task_type} tasks")


SUBCOMMANDS: list[list[Any]] = [
    ["tasks", None, TasksOptions, "List tasks (by state, type), failed ones with their reason."],
    ["retry", None, RetryOptions, "Run failed or cancelled tasks again, under their ids."],
    ["purge", None, PurgeOptions, "Cancel every queued task of a type."],
]
COMMANDS = {"tasks": tasks, "retry": retry, "purge": purge}
