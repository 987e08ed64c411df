"""
``taskmesh config``: the settings the scheduler, a worker and the
``taskmesh`` commands would run with here (flags aside), and where each
comes from: the environment, the config file, or the default.  See
``taskmesh.config`` for the rules.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.python import usage

from taskmesh.cli.commands import CommandOptions, out
from taskmesh.config import SECTIONS, Configurable, config_help


class ConfigOptions(CommandOptions):
    synopsis = "[--config PATH] [--section scheduler|worker|client] [--json]"
    longdesc = (
        "Print the effective settings of the scheduler, the worker and the taskmesh commands "
        "as they would start here (before their flags), each with where it comes from. " + config_help("...")
    )
    optParameters = [
        ["config", None, None, "The TOML config file to read (default: as every process finds it)."],
        ["section", None, None, f"Only this section: {', '.join(SECTIONS)}."],
    ]
    optFlags = [["json", None, "Print JSON: {section: {option: {value, source}}}."]]

    def postOptions(self) -> None:
        if self["section"] is not None and self["section"] not in SECTIONS:
            raise usage.UsageError(f"--section must be one of {', '.join(SECTIONS)}")


def section_options(section: str) -> list[Configurable]:
    """Fresh options of every process of a section (the client's: one per command)."""
    if section == "scheduler":
        from taskmesh.tap.scheduler import Options as SchedulerOptions

        return [SchedulerOptions()]
    if section == "worker":
        from taskmesh.tap.worker import Options as WorkerOptions

        return [WorkerOptions()]
    from taskmesh.cli.commands import COMMANDS

    made = [command.options() for command in COMMANDS.values()]
    return [options for options in made if isinstance(options, Configurable)]


def effective(section: str, path: str | None) -> dict[str, dict[str, Any]]:
    """option -> {"value", "source"} for a section, as its processes would see them."""
    found: dict[str, dict[str, Any]] = {}
    for options in section_options(section):
        if path is not None:
            options["config"] = path
        options.apply_config(os.environ)
        for name, value, source in options.effective():
            found.setdefault(name, {"value": value, "source": source})
    return dict(sorted(found.items()))


async def show(options: ConfigOptions, reactor: Any) -> None:
    from taskmesh.cli.commands import EXIT_USAGE, CommandFailed

    sections = [options["section"]] if options["section"] else list(SECTIONS)
    try:
        report = {section: effective(section, options["config"]) for section in sections}
    except usage.UsageError as e:
        raise CommandFailed(str(e), EXIT_USAGE) from None
    if options["json"]:
        out(json.dumps(report, indent=2, default=str))
        return
    lines = []
    for section, settings in report.items():
        lines.append(f"[{section}]")
        width = max((len(name) for name in settings), default=0)
        for name, setting in settings.items():
            value = setting["value"]
            shown = "(not set)" if value is None else json.dumps(value, default=str)
            lines.append(f"{name.ljust(width)} = {shown}  # {setting['source']}")
        lines.append("")
    out("\n".join(lines).rstrip())


SUBCOMMANDS: list[list[Any]] = [
    ["config", None, ConfigOptions, "Show the effective settings and where each comes from."],
]
COMMANDS = {"config": show}
