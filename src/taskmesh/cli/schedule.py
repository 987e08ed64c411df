"""
``taskmesh schedule``: periodic schedules from the command line.

Kept apart from ``commands.py`` (which hooks it in) so that the schedule
commands can change without touching the other commands.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.python import usage

from taskmesh.cli.commands import (
    EXIT_TASK_FAILED,
    EXIT_UNREACHABLE,
    CommandFailed,
    CommandOptions,
    ConnectionOptions,
    connect,
    out,
)
from taskmesh.cli.times import parse_duration
from taskmesh.client.twisted_client import Client
from taskmesh.codec import check_arguments
from taskmesh.errors import ScheduleRefused, SchedulerGone, format_due
from taskmesh.handlers import DEFAULT_TASK_TYPE


class _Named(ConnectionOptions):
    synopsis = "[options] NAME"

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class AddOptions(_Named):
    synopsis = "[options] NAME [TEXT]"
    longdesc = (
        "Create (or replace) a periodic schedule: each tick submits one task of --type with TEXT "
        "as its payload (or, with --json, a task function's arguments). Ticks fire in the scheduler "
        "and are enqueued exactly once each, across restarts."
    )
    optParameters = [
        ["cron", None, None, 'A cron expression, five fields: "*/5 * * * *" (in --tz).'],
        ["tz", None, "UTC", "The cron expression's time zone (an IANA name: Europe/Paris)."],
        ["every", None, None, "Or an interval: 10s, 5m, 1h."],
        ["type", "t", DEFAULT_TASK_TYPE, "Task type."],
        ["priority", "p", 0, "Higher runs first.", int],
        ["timeout", None, None, "Seconds an attempt may run before it fails.", float],
        ["max-attempts", None, 0, "Attempts that may fail before the task fails (0: the scheduler's).", int],
    ]
    optFlags = [
        ["retry-on-error", None, "Retry when the handler raises, instead of failing at once."],
        [
            "skip-missed",
            None,
            "Skip ticks missed while the scheduler was down (default: run the latest once).",
        ],
        ["json", None, "TEXT is a task function's arguments as JSON (an array or {args, kwargs})."],
    ]

    def parseArgs(self, name: str, text: str = "") -> None:  # type: ignore[override]
        self["name"] = name
        self["text"] = text

    def postOptions(self) -> None:
        super().postOptions()
        if (self["cron"] is None) == (self["every"] is None):
            raise usage.UsageError("give --cron or --every, exactly one")
        if self["every"] is not None:
            try:
                self["every"] = parse_duration(self["every"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


class ListOptions(ConnectionOptions):
    synopsis = "[options]"
    optFlags = [["json", None, "Print JSON, for scripts."]]


class RemoveOptions(_Named):
    pass


class PauseOptions(_Named):
    pass


class ResumeOptions(_Named):
    pass


class ScheduleOptions(usage.Options):
    synopsis = "COMMAND [options]"
    longdesc = "Periodic schedules: they live in the scheduler's store and fire in the scheduler."
    subCommands = [
        ["add", None, AddOptions, "Create or replace a schedule."],
        ["list", None, ListOptions, "Show every schedule: next run, last run and its task id."],
        ["remove", None, RemoveOptions, "Remove a schedule (its tasks stay)."],
        ["pause", None, PauseOptions, "Stop a schedule's ticks."],
        ["resume", None, ResumeOptions, "Start a paused schedule's ticks again, from now on."],
    ]

    opt_version = CommandOptions.opt_version  # taskmesh's version, not Twisted's
    opt_h = usage.Options.opt_help

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("schedule needs a command: add, list, remove, pause or resume")


def _when(value: float | None) -> str:
    return "-" if value is None else format_due(value)


def describe_schedules(schedules: list[dict[str, Any]]) -> list[str]:
    """A table of schedules, for ``schedule list`` and ``status``."""
    if not schedules:
        return ["no schedules"]
    lines = [f"  {'name':<24} {'when':<28} {'next run':<21} {'last run':<21} last task"]
    for s in schedules:
        when = f"cron {s['cron']} {s['tz']}" if s.get("cron") else f"every {s['every']:g} s"
        state = "paused" if s.get("paused") else _when(s.get("next_due"))
        last_task = "-" if s.get("last_task") is None else str(s["last_task"])
        lines.append(f"  {s['name']:<24} {when:<28} {state:<21} {_when(s.get('last_due')):<21} {last_task}")
    return lines


async def schedule(options: ScheduleOptions, reactor: Any) -> None:
    """Run one schedule command against the scheduler."""
    command = options.subCommand
    sub = options.subOptions
    client: Client = await connect(sub, reactor)
    try:
        if command == "add":
            text = sub["text"]
            payload: Any = text
            kwargs: dict[str, Any] = dict(
                cron=sub["cron"],
                every=sub["every"],
                tz=sub["tz"],
                skip_missed=bool(sub["skip-missed"]),
                task_type=sub["type"],
                priority=sub["priority"],
                timeout=sub["timeout"],
                max_attempts=sub["max-attempts"],
                retry_on_error=bool(sub["retry-on-error"]),
            )
            if sub["json"]:
                payload = text.encode("utf-8")
                check_arguments(payload)
            added = await client.add_schedule(sub["name"], payload, **kwargs)
            out(f"schedule {added['name']}: next run {_when(added['next_due'])}")
        elif command == "list":
            found = await client.schedules()
            out(json.dumps(found, indent=2) if sub["json"] else "\n".join(describe_schedules(found)))
        elif command == "remove":
            await client.remove_schedule(sub["name"])
            out(f"schedule {sub['name']} removed")
        else:
            changed = await (
                client.pause_schedule(sub["name"])
                if command == "pause"
                else client.resume_schedule(sub["name"])
            )
            out(
                f"schedule {changed['name']}: "
                + ("paused" if changed["paused"] else f"next run {_when(changed['next_due'])}")
            )
    except ScheduleRefused as e:
        raise CommandFailed(f"schedule refused: {e}", EXIT_TASK_FAILED) from None
    except ValueError as e:
        raise CommandFailed(f"schedule refused: {e}", EXIT_TASK_FAILED) from None
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
    finally:
        await client.close()
