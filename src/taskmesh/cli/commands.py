"""
The ``taskmesh`` command: a thin layer over ``taskmesh.Client``.

Results go to stdout; anything else a person should read goes to stderr as
one line, and the exit status says what happened (``EXIT_STATUS`` below,
printed by every ``--help``).  Signals and a closed stdout are handled in
``taskmesh.cli.runner``; a map's output formats in ``taskmesh.cli.mapoutput``.

Commands are rows of ``COMMANDS`` (name, options class, coroutine, one-line
summary): a new command is one more row, or ``register(...)`` from another
module of this package.
"""

from __future__ import annotations

import getopt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet import task
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python import usage

from taskmesh import __version__
from taskmesh.cli.mapoutput import FORMATS, OutputFile, ResultSink
from taskmesh.cli.progress import ProgressBar
from taskmesh.cli.runner import CommandFailed, InterruptedRead, StoppedEarly, Stopper
from taskmesh.cli.runner import run as run_command
from taskmesh.cli.times import TIME_PARAMETERS, time_options
from taskmesh.client.mapping import DEFAULT_WINDOW, ItemRefused, run_map
from taskmesh.client.twisted_client import DEFAULT_CONNECT_TIMEOUT, Client, task_options
from taskmesh.codec import ArgumentsError, check_arguments
from taskmesh.config import Configurable, config_help
from taskmesh.errors import (
    AuthenticationFailed,
    NotTaskmesh,
    SchedulerGone,
    TaskFailed,
    TaskPending,
    TaskRejected,
    TaskUnknown,
    format_due,
)
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, parse_addresses
from taskmesh.tap import (
    PEER_SECURITY_FLAGS,
    PEER_SECURITY_PARAMETERS,
    peer_security,
    positive_float,
    positive_int,
)
from taskmesh.wire import check_task_type

__all__ = ["COMMANDS", "CommandFailed", "Command", "main", "register"]

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FINISHED = 4
EXIT_AUTHENTICATION = 5
EXIT_OUTPUT_CLOSED = 141
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

EXIT_STATUS = """
Exit status:
  0    done
  1    the task failed, was cancelled or refused, or no such task; for map:
       at least one line failed (every line was answered)
  2    the command line was wrong, or a file could not be read or written
  3    the scheduler could not be reached, is not a taskmesh scheduler, or
       went away and did not come back within --connect-timeout
  4    result: the task has not finished yet
  5    the scheduler refused our secret (or could not prove it knows it)
  130  interrupted (SIGINT, Ctrl-C); 143: terminated (SIGTERM)
  141  stdout was closed by its reader (as for a tool killed by SIGPIPE)
  70   a bug in taskmesh (its traceback is printed): please report it
Anything but 0 after map means the output is not complete, except 1.
"""


class CommandOptions(usage.Options):
    """
    A command's options: -h, --version of taskmesh (not Twisted's), the exit
    statuses in --help, and options accepted after the arguments too
    (``taskmesh submit hi --no-wait``); ``--`` ends the options.
    """

    def opt_version(self) -> None:
        """Print taskmesh's version and exit."""
        print(f"taskmesh {__version__}")
        sys.exit(0)

    opt_h = usage.Options.opt_help

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width).rstrip("\n") + "\n" + EXIT_STATUS

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        try:
            found, arguments = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for name, value in found:
            if name.startswith("--"):
                ordered.append(f"{name}={value}" if name[2:] + "=" in self.longOpt else name)
            else:
                ordered.append(name)
                if name[1] + ":" in self.shortOpt:
                    ordered.append(value)
        super().parseOptions([*ordered, "--", *arguments])


#: The settings of the [client] section (see ConnectionOptions.settings).
CLIENT_SETTINGS = frozenset(
    {"connect", "connect-timeout", "secret-file", "tls", "tls-ca", "tls-cert", "tls-key"}
)


class ConnectionOptions(Configurable, CommandOptions):
    config_section = "client"
    optParameters = [
        [
            "connect",
            "c",
            DEFAULT_ADDRESS,
            "Scheduler address: host:port, [ipv6]:port or an endpoint string; several separated by "
            "commas (a hot standby and its leader) are tried in turn.",
        ],
        [
            "connect-timeout",
            None,
            DEFAULT_CONNECT_TIMEOUT,
            "Seconds to keep trying to reach the scheduler.",
            positive_float,
        ],
        *PEER_SECURITY_PARAMETERS,
    ]
    optFlags = [*PEER_SECURITY_FLAGS]

    def settings(self) -> list[str]:
        """
        What the [client] section and TASKMESH_* set for every command: how to
        reach the scheduler.  A command's own options (--type, --priority,
        --yes, ...) are flags only: a default task type in a file would
        silently change what 'purge' or 'tasks' act on.
        """
        return [name for name in super().settings() if name in CLIENT_SETTINGS]

    def postOptions(self) -> None:
        self.apply_config()
        try:
            parse_addresses(self["connect"])
        except ValueError as e:
            raise usage.UsageError(f"--connect: {e}") from None
        self["secret"], self["tls-options"] = peer_security(self)


def task_id_argument(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**64:
        raise usage.UsageError(f"{text!r} is not a task id (a positive whole number)")
    return int(text)


class SubmitOptions(ConnectionOptions):
    synopsis = "[options] (TEXT | - | --file PATH)"
    longdesc = (
        "Run one task and print its result (for sha256, the hex digest of the payload). "
        "The payload is TEXT, or standard input with -, or a file's bytes with --file: "
        "any size up to the scheduler's limit, binary included. "
        "If the connection drops while waiting, it reconnects and waits on by id."
    )
    optParameters = [
        ["type", "t", DEFAULT_TASK_TYPE, "Task type."],
        ["file", "f", None, "Send this file's bytes as the payload (instead of TEXT)."],
        ["priority", "p", 0, "Higher runs first.", int],
        ["timeout", None, None, "Seconds an attempt may run before it fails.", positive_float],
        [
            "max-attempts",
            None,
            None,
            "Attempts that may fail (timeout, or error with --retry-on-error) "
            "before the task fails (default: the scheduler's, 3).",
            positive_int,
        ],
        ["key", "k", None, "Deduplication key: a second submission with the same key gets the first task."],
        *TIME_PARAMETERS,
    ]
    optFlags = [
        ["no-wait", None, "Print the task id once the task is stored, and exit."],
        ["retry-on-error", None, "Retry when the handler raises, instead of failing at once."],
        [
            "json",
            None,
            "The payload is a task function's arguments as JSON: an array, or an object "
            '{"args": [...], "kwargs": {...}}; checked before it is sent.',
        ],
    ]

    def parseArgs(self, text: str | None = None) -> None:
        self["text"] = text

    def payload(self) -> bytes:
        """TEXT's UTF-8, standard input's bytes (-), or --file's bytes."""
        if self["file"] is not None:
            try:
                with open(self["file"], "rb") as stream:
                    return stream.read()
            except OSError as e:
                raise usage.UsageError(f"--file: {e.filename}: {e.strerror}") from None
        if self["text"] == "-":
            return sys.stdin.buffer.read()
        assert self["text"] is not None
        return str(self["text"]).encode("utf-8", "surrogateescape")

    def postOptions(self) -> None:
        super().postOptions()
        if (self["text"] is None) == (self["file"] is None):
            raise usage.UsageError("give the payload as TEXT, - (standard input) or --file PATH: one of them")
        self["payload"] = self.payload()
        if self["json"]:
            try:
                check_arguments(self["payload"])
            except ArgumentsError as e:
                raise usage.UsageError(f"--json: {e}") from None
        try:
            self["options"] = dict(
                priority=self["priority"],
                timeout=self["timeout"],
                max_attempts=self["max-attempts"] or 0,
                key=self["key"],
                retry_on_error=bool(self["retry-on-error"]),
                **time_options(self),
            )
            task_options(**self["options"])
            check_task_type(self["type"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class ResultOptions(ConnectionOptions):
    synopsis = "[options] TASK_ID"
    longdesc = (
        "Print a task's result. An unfinished task's state (queued, running) "
        "is printed instead, with exit status 4, unless --wait is given: then "
        "it waits, reconnecting if the scheduler restarts."
    )
    optFlags = [["wait", "w", "Wait until the task is finished."]]

    def parseArgs(self, task_id: str) -> None:  # type: ignore[override]  # as above
        self["task_id"] = task_id_argument(task_id)


class CancelOptions(ConnectionOptions):
    synopsis = "[options] TASK_ID"
    longdesc = (
        "Cancel a queued task, or ask its worker to stop a running one, and "
        "print the task's state afterwards."
    )

    def parseArgs(self, task_id: str) -> None:  # type: ignore[override]  # as above
        self["task_id"] = task_id_argument(task_id)


class StatusOptions(ConnectionOptions):
    synopsis = "[options]"
    longdesc = (
        "Print the scheduler's workers and its tasks counted by state (map items too), "
        "rates, uptime, version and the store's health. --watch refreshes in place."
    )
    optFlags = [
        ["json", None, "Print JSON, for scripts."],
        ["watch", "w", "Refresh every --interval seconds until interrupted."],
    ]
    optParameters = [["interval", None, 2.0, "Seconds between refreshes with --watch.", float]]

    def postOptions(self) -> None:
        super().postOptions()
        if self["interval"] <= 0:
            raise usage.UsageError("--interval must be positive")


class MapOptions(ConnectionOptions):
    synopsis = "[options] [FILE | -]"
    longdesc = (
        "Run every line of FILE (or standard input) as one task's payload, and "
        "write one line per input line, in input order, as soon as each prefix "
        "is complete. --format text (the default): the result, with a backslash, "
        "newline and carriage return written \\\\, \\n and \\r, so that one line is "
        "always one result; a failed line is written \\! (an empty result is an "
        "empty line). --format jsonl: one JSON object per line, "
        '{"index": 0, "ok": true, "result": "..."} or {"index": 0, "ok": false, "reason": "..."} '
        "(index counts from 0; a result that is not UTF-8 comes as result_base64). "
        "The failures are listed on stderr at the end (the first 20; all of them "
        "with --failures FILE) and the exit status is 1. With --output FILE the "
        "results go to FILE.partial, renamed to FILE once every line is answered: "
        "a map that stops early (interrupted, scheduler gone) leaves FILE.partial "
        "and says on stderr how far it got. On stdout, a map that stops early "
        "exits with a status other than 0 and 1 and says so on stderr. "
        "A progress bar is drawn on stderr when it is a terminal. If the "
        "scheduler restarts, the map reconnects and goes on."
    )
    optParameters = [
        ["type", "t", DEFAULT_TASK_TYPE, "Task type."],
        [
            "chunk-size",
            None,
            0,
            "Items per chunk (one assignment to a worker); 0: sized by the scheduler to the job's speed.",
            int,
        ],
        ["priority", "p", 0, "Higher runs first.", int],
        ["output", "o", None, "Write the results to this file (via FILE.partial) instead of stdout."],
        ["format", None, "text", "Output format: text or jsonl."],
        ["failures", None, None, "Write every failure (line and reason) to this file."],
        [
            "window",
            None,
            DEFAULT_WINDOW,
            "Items in flight at the most (bounds the memory of every process).",
            positive_int,
        ],
    ]

    optFlags = [
        [
            "json",
            None,
            "Each line is a task function's arguments as JSON (an array, or an object "
            '{"args": [...], "kwargs": {...}}); a line that is not fails alone, unsent.',
        ],
    ]

    def parseArgs(self, source: str = "-") -> None:
        self["source"] = source

    def postOptions(self) -> None:
        super().postOptions()
        if self["format"] not in FORMATS:
            raise usage.UsageError(f"--format must be one of: {', '.join(FORMATS)}")
        if self["chunk-size"] < 0:
            raise usage.UsageError("--chunk-size must be 0 (automatic) or more")
        try:
            check_task_type(self["type"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, options, what runs it, and its line in ``taskmesh --help``."""

    name: str
    #: the options class (or a function that makes the options, for a command imported when used)
    options: Callable[[], usage.Options]
    run: Callable[..., Awaitable[None]]
    summary: str
    #: run(options, reactor, stopper=...): it wants to know why it is stopped
    #: early (a map keeps its partial output apart); else run(options, reactor).
    stoppable: bool = False


#: The subcommands, in the order ``--help`` lists them (filled in below, after the functions).
COMMANDS: dict[str, Command] = {}


def register(command: Command) -> None:
    COMMANDS[command.name] = command


class Options(usage.Options):
    synopsis = "taskmesh COMMAND [options]"
    longdesc = (
        "Talk to a taskmesh scheduler. Run 'taskmesh COMMAND --help' for a command's options. "
        + config_help("client")
    )

    @property
    def subCommands(self) -> list[tuple[str, None, Callable[[], usage.Options], str]]:
        return [(command.name, None, command.options, command.summary) for command in COMMANDS.values()]

    opt_version = CommandOptions.opt_version  # taskmesh's version, not Twisted's
    opt_h = usage.Options.opt_help

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width).rstrip("\n") + "\n" + EXIT_STATUS

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command: " + ", ".join(COMMANDS))


def warn(message: str) -> None:
    sys.stderr.write(f"taskmesh: warning: {message}\n")
    sys.stderr.flush()


def out(data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


async def connect(options: ConnectionOptions, reactor: Any, lost: str | None = None) -> Client:
    """
    A client; with ``lost`` (the line to say when the connection drops), one
    that rides out a scheduler restart through the Client's own reconnect,
    for at most --connect-timeout seconds after each drop (then every call
    fails with SchedulerGone: exit 3).  Change ``client.on_lost`` to say
    something else as the command goes on.
    """
    address = options["connect"]
    try:
        client = await Client.connect(
            address,
            reactor,
            timeout=options["connect-timeout"],
            on_no_worker=lambda task_type: warn(
                f"no connected worker runs task type {task_type!r} yet; the task waits for one"
            ),
            secret=options["secret"],
            tls=options["tls-options"],
            reconnect=lost is not None,
            reconnect_timeout=options["connect-timeout"],
            on_reconnected=lambda: warn(f"reconnected to the scheduler at {address}"),
        )
    except AuthenticationFailed as e:
        raise CommandFailed(str(e), EXIT_AUTHENTICATION) from None
    except NotTaskmesh as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
    except DNSLookupError:
        raise CommandFailed(
            f"cannot reach the scheduler at {options['connect']}: no such host", EXIT_UNREACHABLE
        ) from None
    except (ConnectError, SchedulerGone) as e:
        raise CommandFailed(
            f"cannot reach the scheduler at {options['connect']}: {e}", EXIT_UNREACHABLE
        ) from None
    except TimeoutError:
        raise CommandFailed(
            f"the scheduler at {options['connect']} did not answer within "
            f"{options['connect-timeout']:g} seconds (is it a taskmesh scheduler's address? "
            "a web server, for one, says nothing to a taskmesh hello)",
            EXIT_UNREACHABLE,
        ) from None
    if lost is not None:
        client.on_lost = lambda: warn(lost)
    return client


def gone(options: ConnectionOptions, error: SchedulerGone | AuthenticationFailed) -> CommandFailed:
    """The connection dropped and the client's reconnect gave up: exit 3 (5: our secret was refused)."""
    if isinstance(error, AuthenticationFailed):
        return CommandFailed(str(error), EXIT_AUTHENTICATION)
    return CommandFailed(f"the scheduler at {options['connect']}: {error}", EXIT_UNREACHABLE)


async def wait_for(options: ConnectionOptions, reactor: Any, client: Client, task_id: int) -> bytes:
    """A task's result; the client re-attaches by id whenever the connection drops."""
    client.on_lost = lambda: warn(f"lost the scheduler while waiting for task {task_id}; reconnecting")
    try:
        result: bytes = await client.result(task_id, wait=True)
        return result
    finally:
        await client.close()


def task_error(task_id: int, error: Exception) -> CommandFailed:
    if isinstance(error, TaskUnknown):
        return CommandFailed(str(error), EXIT_TASK_FAILED)
    if isinstance(error, TaskRejected):
        return CommandFailed(f"task refused: {error}", EXIT_TASK_FAILED)
    kind = "cancelled" if type(error).__name__ == "TaskCancelled" else "failed"
    message = f"task {task_id} {kind}: {error}"
    trace = getattr(error, "traceback", None)
    if trace:
        message += f"\nremote traceback (on the worker):\n{trace.rstrip()}"
    return CommandFailed(message, EXIT_TASK_FAILED)


async def submit(options: SubmitOptions, reactor: Any) -> None:
    twice = "" if options["options"].get("key") else " (without --key it may run twice)"
    client = await connect(
        options,
        reactor,
        lost=f"lost the scheduler before it acknowledged the task; reconnecting to submit it again{twice}",
    )
    try:
        task_id = await client.enqueue(options["payload"], options["type"], **options["options"])
    except TaskRejected as e:
        await client.close()
        raise task_error(0, e) from None
    except (SchedulerGone, AuthenticationFailed) as e:
        error = gone(options, e)
        raise CommandFailed(
            f"{error} (the task may or may not have been stored; submit again with --key to be sure)",
            error.status,
        ) from None
    if options["no-wait"] or "delay" in options["options"] or "at" in options["options"]:
        await client.close()
        out(str(task_id))
        return
    try:
        out(await wait_for(options, reactor, client, task_id))
    except (TaskFailed, TaskUnknown) as e:
        raise task_error(task_id, e) from None
    except (SchedulerGone, AuthenticationFailed) as e:
        raise gone(options, e) from None


async def result(options: ResultOptions, reactor: Any) -> None:
    task_id = options["task_id"]
    client = await connect(
        options, reactor, lost=f"lost the scheduler while waiting for task {task_id}; reconnecting"
    )
    try:
        if options["wait"]:
            out(await wait_for(options, reactor, client, task_id))
        else:
            try:
                out(await client.result(task_id, wait=False))
            finally:
                await client.close()
    except TaskPending as e:
        due = f" {format_due(e.due)}" if e.due is not None else ""
        out(f"{e.state} {e.progress}" if e.progress else e.state + due)
        raise CommandFailed(f"task {task_id} has not finished: {e}", EXIT_NOT_FINISHED) from None
    except (TaskFailed, TaskUnknown) as e:
        raise task_error(task_id, e) from None
    except (SchedulerGone, AuthenticationFailed) as e:
        raise gone(options, e) from None


async def cancel(options: CancelOptions, reactor: Any) -> None:
    client = await connect(options, reactor)
    task_id = options["task_id"]
    try:
        out(await client.cancel(task_id))
    except TaskUnknown as e:
        raise task_error(task_id, e) from None
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
    finally:
        await client.close()


def completed(report: dict[str, Any]) -> int:
    """Tasks and map items finished since the scheduler started."""
    tasks = report["tasks"]
    items = report.get("map_items", {})
    return int(
        tasks["succeeded"]
        + tasks["failed"]
        + tasks["cancelled"]
        + items.get("succeeded", 0)
        + items.get("failed", 0)
    )


def describe_status(report: dict[str, Any], rate: float | None = None) -> str:
    """``rate``: completions per second since the previous report (--watch), else the average since start."""
    tasks = report["tasks"]
    shown = {state: count for state, count in tasks.items() if state != "held"}  # held = running + prefetched
    lines = []
    if "version" in report:
        lines.append(
            f"scheduler {report['version']}, up {report['uptime_seconds']:.0f} s, "
            f"{report.get('submitted', 0):,} tasks submitted"
        )
    lines.append(
        "tasks: " + ", ".join(f"{count} {state.replace('_', ' ')}" for state, count in shown.items())
    )
    items = report.get("map_items")
    if items is not None:
        lines.append(f"map items: {items['succeeded']:,} succeeded, {items['failed']:,} failed")
    uptime = report.get("uptime_seconds")
    if rate is not None:
        lines.append(f"rate: {rate:,.1f} completed/s")
    elif uptime:
        lines.append(f"rate: {completed(report) / uptime:,.1f} completed/s on average since start")
    for running in report.get("progress", []):
        total = running["total"]
        amount = f"{running['done']:g}" + (f"/{total:g}" if total else "")
        lines.append(f"  task {running['id']} ({running['type']}) at {amount} {running['note']}".rstrip())
    for task_type, waiting in report.get("waiting_by_type", {}).items():
        why = " (no connected worker runs this type)" if waiting["no_worker_runs_it"] else ""
        lines.append(f"  {waiting['queued']} {task_type} queued{why}")
    workers = report.get("workers", [])
    lines.append(f"workers: {len(workers)}")
    if workers:
        lines.append(
            f"  {'name':<40} {'slots':>5} {'running':>7} {'held':>5} {'done':>8} {'failed':>6}  types"
        )
        for worker in workers:
            lines.append(
                f"  {worker['name']:<40} {worker['slots']:>5} {worker['running']:>7} "
                f"{worker.get('held', 0):>5} {worker.get('done', 0):>8} {worker.get('failed', 0):>6}  "
                + ",".join(worker["types"])
                + ("  (draining: finishing what it runs, taking no more)" if worker.get("draining") else "")
            )
    for job in report.get("jobs", []):
        lines.append(
            f"job {job['id']}: {job['items_outstanding']:,} {job['type']} items in flight, "
            f"priority {job['priority']}, chunks of {job['chunk_size']}"
        )
    schedules = report.get("schedules")
    if schedules:
        lines.append(f"schedules: {len(schedules)}")
        lines.extend(_schedule_module().describe_schedules(schedules))
    if report.get("paused_submitters"):
        lines.append("submitters are paused: the queue is at its bound")
    store = report.get("store")
    if store is not None:
        lines.append(describe_store(store))
    if report.get("truncated"):
        cut = ", ".join(
            f"{name} ({count} entries)" if count >= 0 else name for name, count in report["truncated"].items()
        )
        lines.append(f"(cut to fit the scheduler's frame limit: {cut})")
    return "\n".join(lines)


def describe_store(store: dict[str, Any]) -> str:
    """One line on the store's health: what a person needs to know to act."""
    if store["available"]:
        ago = store.get("last_error_seconds_ago")
        if ago is not None and ago < 600:
            return (
                f"store: available; the last failed commit was {ago:.1f} s ago ({store['last_error']}), "
                f"{store['failed_commits']} since the scheduler started"
            )
        return "store: available"
    held = f"{store['held_back_submissions']} submissions and {store['held_back_results']} results held back"
    refusing = "new submissions are refused" if store["refusing_submissions"] else "submissions wait"
    return (
        f"store: UNAVAILABLE for {store['unavailable_seconds']:.1f} s ({store['error']}); "
        f"{refusing}, {held}; retrying"
    )


async def status(options: StatusOptions, reactor: Any) -> None:
    client = await connect(options, reactor, lost="lost the scheduler; reconnecting")
    previous: tuple[float, int] | None = None
    try:
        while True:
            report = await client.status()
            now = reactor.seconds()
            rate = None
            if previous is not None and now > previous[0]:
                rate = (completed(report) - previous[1]) / (now - previous[0])
            previous = (now, completed(report))
            text = json.dumps(report, indent=2) if options["json"] else describe_status(report, rate)
            if not options["watch"]:
                out(text)
                return
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # refresh in place: home, clear
            out(text)
            await task.deferLater(reactor, options["interval"], lambda: None)
    except (SchedulerGone, AuthenticationFailed) as e:
        raise gone(options, e) from None
    finally:
        await client.close()


def count_lines(path: str) -> int:
    """Lines in a file (a last line without a newline counts), read in blocks."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_lines(stream: BinaryIO, stopper: Stopper | None = None) -> Iterator[bytes]:
    """
    The lines of ``stream``, without their line ends.  While a read blocks
    (standard input with nothing in it yet), ``stopper.reading`` is set, so
    that a signal interrupts the read instead of waiting for the reactor.
    """
    while True:
        if stopper is not None:
            stopper.reading = True
        try:
            line = stream.readline()
        finally:
            if stopper is not None:
                stopper.reading = False
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield line


def json_arguments(lines: Iterator[bytes | ItemRefused]) -> Iterator[bytes | ItemRefused]:
    """``--json``: each line must be a task function's arguments, or it fails alone, unsent."""
    for line in lines:
        if isinstance(line, bytes):
            try:
                check_arguments(line)
            except ArgumentsError as e:
                yield ItemRefused(str(e))
                continue
        yield line


#: Failures listed one by one at the end of a map; the rest are counted.
FAILURES_SHOWN = 20


async def map_lines(options: MapOptions, reactor: Any, stopper: Stopper | None = None) -> None:
    source = options["source"]
    output_file: OutputFile | None = None
    failures: BinaryIO | None = None
    try:
        if source == "-":
            stream: BinaryIO = sys.stdin.buffer
            size_hint = 0
        else:
            size_hint = count_lines(source)
            stream = open(source, "rb")
        if options["output"]:
            output_file = OutputFile(options["output"])
        if options["failures"]:
            failures = open(options["failures"], "wb")
    except OSError as e:
        raise CommandFailed(f"{e.filename}: {e.strerror}", EXIT_USAGE) from None
    output = output_file.stream if output_file is not None else sys.stdout.buffer
    clients: list[Client] = []

    async def connect_protocol() -> Any:
        """The map's connection: the Client reconnects under it, and the map re-opens its job there."""
        if not clients:
            clients.append(
                await connect(
                    options,
                    reactor,
                    lost="lost the scheduler during the map; "
                    "reconnecting and sending the unanswered lines again",
                )
            )
        return await clients[0].connection()

    bar = ProgressBar(size_hint)
    # Results and the bar on one terminal: the bar steps aside for each batch.
    sharing = bar.enabled and output_file is None and sys.stdout.isatty()
    before, after = bar.around_output() if sharing else (None, None)
    output_error: list[OSError] = []

    def output_failed(error: OSError) -> None:
        output_error.append(error)
        if stopper is not None:
            stopper.close_output()  # stops the map; the error is reported below

    sink = ResultSink(
        output,
        options["format"],
        failures,
        on_closed=stopper.close_output if stopper is not None else None,
        on_error=output_failed,
        before=before,
        after=after,
    )

    def progress(done: int, failed: int) -> None:
        sink.flush()
        bar.update(done, failed)

    items: Iterator[bytes | ItemRefused] = read_lines(stream, stopper)
    if options["json"]:
        items = json_arguments(items)
    complete = False
    failed_lines = 0
    failure_list: list[tuple[int, str]] = []

    def how_far() -> str:
        of = f" of {size_hint:,}" if size_hint else ""
        where = (
            f"the answers of the first {sink.written:,} lines are in {output_file.partial}; "
            f"{output_file.path} was not written"
            if output_file is not None
            else "the output is incomplete"
        )
        return f"{sink.written:,}{of} lines answered; {where}"

    try:
        summary = await run_map(
            connect_protocol,
            items,
            sink.write,
            options["type"],
            priority=options["priority"],
            chunk_size=options["chunk-size"],
            window=options["window"],
            size_hint=size_hint,
            progress=progress,
            on_no_worker=lambda task_type: warn(
                f"no connected worker runs task type {task_type!r} yet; the map waits for one"
            ),
            reconnect=True,
        )
        sink.flush()
        failed_lines = summary.failed
        failure_list = summary.failures
        complete = not sink.closed
    except (CancelledError, InterruptedRead):
        bar.erase()
        raise StoppedEarly(how_far()) from None
    except CommandFailed as e:
        bar.erase()
        raise CommandFailed(f"{e}; {how_far()}", e.status) from None
    except (SchedulerGone, AuthenticationFailed) as e:
        bar.erase()
        failed = gone(options, e)
        raise CommandFailed(f"{failed}; {how_far()}", failed.status) from None
    finally:
        for client in clients:
            client.close()
        if stream is not sys.stdin.buffer:
            stream.close()
        if failures is not None:
            failures.close()
        if output_file is not None:
            if complete:
                output_file.complete()
            else:
                output_file.abandon()
    if output_error:
        bar.erase()
        error = output_error[0]
        raise CommandFailed(f"cannot write the output: {error.strerror or error}; {how_far()}", EXIT_USAGE)
    if sink.closed:
        bar.erase()
        return  # stdout's reader has gone: the runner ends quietly
    bar.finish(summary.done, summary.failed)
    if failed_lines:
        lines = [f"{failed_lines:,} of {summary.done:,} tasks failed:"]
        for index, reason in failure_list[:FAILURES_SHOWN]:
            lines.append(f"  line {index + 1}: {reason}")
        if failed_lines > FAILURES_SHOWN:
            more = f"  ... and {failed_lines - FAILURES_SHOWN:,} more"
            if options["failures"]:
                more += f" (all of them are in {options['failures']})"
            else:
                more += " (--failures FILE writes every one)"
            lines.append(more)
        raise CommandFailed("\n".join(lines), EXIT_TASK_FAILED)


def _schedule_module() -> Any:
    """cli/schedule.py builds on this module, so it is imported when used."""
    from taskmesh.cli import schedule

    return schedule


async def schedule_command(options: Any, reactor: Any) -> None:
    await _schedule_module().schedule(options, reactor)


for _command in (
    Command("submit", SubmitOptions, submit, "Run one task and print its result."),
    Command("map", MapOptions, map_lines, "Run every line as a task; results in order.", stoppable=True),
    Command("result", ResultOptions, result, "Print a task's result (or state) by id."),
    Command("cancel", CancelOptions, cancel, "Cancel a task by id."),
    Command("status", StatusOptions, status, "Show workers and task counts."),
    Command(
        "schedule",
        lambda: _schedule_module().ScheduleOptions(),
        schedule_command,
        "Periodic schedules: add, list, remove, pause, resume.",
    ),
):
    register(_command)


def _add_commands() -> None:
    """The operators' commands (tasks, retry, purge, config) live in modules of their own."""
    from taskmesh.cli import config, operations

    for module in (operations, config):
        for name, _, options, summary in module.SUBCOMMANDS:
            register(Command(name, options, module.COMMANDS[name], summary))


_add_commands()


def unexpected(error: BaseException) -> CommandFailed | None:
    """Errors a person can act on, as one line; None: a bug (its traceback is printed)."""
    if isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
        return CommandFailed(str(error), EXIT_USAGE)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``taskmesh`` console command."""
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C while `submit -` reads its payload
        sys.stderr.write("taskmesh: interrupted (SIGINT)\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `taskmesh --help | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise SystemExit(EXIT_OUTPUT_CLOSED) from None
    except usage.UsageError as e:
        sys.stderr.write(f"taskmesh: error: {e}\n")
        sys.stderr.write("Run 'taskmesh --help' (or 'taskmesh COMMAND --help') for the options.\n")
        raise SystemExit(EXIT_USAGE) from None
    from twisted.internet import reactor

    command = COMMANDS[options.subCommand or ""]

    async def body(stopper: Stopper) -> None:
        if command.stoppable:
            await command.run(options.subOptions, reactor, stopper=stopper)
        else:
            await command.run(options.subOptions, reactor)

    raise SystemExit(run_command(reactor, body, unexpected))
