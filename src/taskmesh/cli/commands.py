"""
The ``taskmesh`` command: a thin layer over ``taskmesh.Client``.

Results go to stdout; anything else a person should read goes to stderr as
one line, and the exit status says what happened: 0 done, 1 the task failed,
was cancelled or refused (or no such task), 2 the command line was wrong, 3
the scheduler could not be reached, 4 the task has not finished yet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, BinaryIO

from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError
from twisted.python import usage

from taskmesh import __version__
from taskmesh.cli.progress import ProgressBar
from taskmesh.client.mapping import DEFAULT_WINDOW, ItemRefused, run_map
from taskmesh.client.twisted_client import DEFAULT_CONNECT_TIMEOUT, Client, task_options
from taskmesh.codec import ArgumentsError, check_arguments
from taskmesh.config import Configurable, config_help
from taskmesh.errors import (
    AuthenticationFailed,
    SchedulerGone,
    TaskFailed,
    TaskPending,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, parse_address
from taskmesh.tap import (
    PEER_SECURITY_FLAGS,
    PEER_SECURITY_PARAMETERS,
    peer_security,
    positive_float,
    positive_int,
)
from taskmesh.wire import check_task_type

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FINISHED = 4
EXIT_AUTHENTICATION = 5

#: Pause between attempts to reach a scheduler again while waiting for a result.
RECONNECT_DELAY = 0.5


#: The settings of the [client] section (see ConnectionOptions.settings).
CLIENT_SETTINGS = frozenset(
    {"connect", "connect-timeout", "secret-file", "tls", "tls-ca", "tls-cert", "tls-key"}
)


class ConnectionOptions(Configurable):
    config_section = "client"
    optParameters = [
        ["connect", "c", DEFAULT_ADDRESS, "Scheduler address: host:port, [ipv6]:port or an endpoint string."],
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
            parse_address(self["connect"])
        except ValueError as e:
            raise usage.UsageError(f"--connect: {e}") from None
        self["secret"], self["tls-options"] = peer_security(self)


def task_id_argument(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**64:
        raise usage.UsageError(f"{text!r} is not a task id (a positive whole number)")
    return int(text)


class SubmitOptions(ConnectionOptions):
    synopsis = "[options] TEXT"
    longdesc = (
        "Run one task and print its result (for sha256, the hex digest of TEXT). "
        "If the connection drops while waiting, it reconnects and waits on by id."
    )
    optParameters = [
        ["type", "t", DEFAULT_TASK_TYPE, "Task type."],
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
    ]
    optFlags = [
        ["no-wait", None, "Print the task id once the task is stored, and exit."],
        ["retry-on-error", None, "Retry when the handler raises, instead of failing at once."],
        [
            "json",
            None,
            "TEXT is a task function's arguments as JSON: an array, or an object "
            '{"args": [...], "kwargs": {...}}; checked before it is sent.',
        ],
    ]

    def parseArgs(self, text: str) -> None:  # type: ignore[override]  # Options passes the arguments; its stub takes none
        self["text"] = text

    def postOptions(self) -> None:
        super().postOptions()
        if self["json"]:
            try:
                check_arguments(self["text"].encode("utf-8"))
            except ArgumentsError as e:
                raise usage.UsageError(f"--json: {e}") from None
        try:
            self["options"] = dict(
                priority=self["priority"],
                timeout=self["timeout"],
                max_attempts=self["max-attempts"] or 0,
                key=self["key"],
                retry_on_error=bool(self["retry-on-error"]),
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
        "write the results one per line, in input order, as soon as each prefix "
        "is complete. A failed line's result line is left empty; the failures are "
        "listed on stderr at the end (line number and reason) and the exit status "
        "is 1. A progress bar is drawn on stderr when it is a terminal. If the "
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
        ["output", "o", None, "Write the results to this file instead of stdout."],
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
        if self["chunk-size"] < 0:
            raise usage.UsageError("--chunk-size must be 0 (automatic) or more")
        try:
            check_task_type(self["type"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class Options(usage.Options):
    synopsis = "taskmesh COMMAND [options]"
    longdesc = (
        "Talk to a taskmesh scheduler. Run 'taskmesh COMMAND --help' for a command's options. "
        + config_help("client")
    )
    subCommands = [
        ["submit", None, SubmitOptions, "Run one task and print its result."],
        ["map", None, MapOptions, "Run every line of a file as a task; print results in order."],
        ["result", None, ResultOptions, "Print a task's result (or state) by id."],
        ["cancel", None, CancelOptions, "Cancel a task by id."],
        ["status", None, StatusOptions, "Show workers and task counts."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"taskmesh {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            commands: list[Any] = list(self.subCommands)
            names = ", ".join(str(command[0]) for command in commands)
            raise usage.UsageError(f"name a command: {names}")


class CommandFailed(Exception):
    """One line for stderr, and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def warn(message: str) -> None:
    sys.stderr.write(f"taskmesh: warning: {message}\n")
    sys.stderr.flush()


def out(data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


async def connect(options: ConnectionOptions, reactor: Any) -> Client:
    try:
        return await Client.connect(
            options["connect"],
            reactor,
            timeout=options["connect-timeout"],
            on_no_worker=lambda task_type: warn(
                f"no connected worker runs task type {task_type!r} yet; the task waits for one"
            ),
            secret=options["secret"],
            tls=options["tls-options"],
        )
    except AuthenticationFailed as e:
        raise CommandFailed(str(e), EXIT_AUTHENTICATION) from None
    except (ConnectError, SchedulerGone) as e:
        raise CommandFailed(
            f"cannot reach the scheduler at {options['connect']}: {e}", EXIT_UNREACHABLE
        ) from None
    except TimeoutError:
        raise CommandFailed(
            f"the scheduler at {options['connect']} did not answer within "
            f"{options['connect-timeout']:g} seconds",
            EXIT_UNREACHABLE,
        ) from None


async def reconnect(options: ConnectionOptions, reactor: Any) -> Client:
    """Keep trying to reach a scheduler that went away, for --connect-timeout seconds."""
    deadline = reactor.seconds() + options["connect-timeout"]
    while True:
        try:
            return await connect(options, reactor)
        except CommandFailed as e:
            if e.status == EXIT_AUTHENTICATION or reactor.seconds() >= deadline:
                raise
        await task.deferLater(reactor, RECONNECT_DELAY, lambda: None)


async def wait_for(options: ConnectionOptions, reactor: Any, client: Client, task_id: int) -> bytes:
    """A task's result, attaching again by id whenever the connection drops."""
    try:
        while True:
            try:
                return await client.result(task_id, wait=True)
            except SchedulerGone:
                warn(f"lost the scheduler while waiting for task {task_id}; reconnecting")
                client = await reconnect(options, reactor)
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
    client = await connect(options, reactor)
    try:
        task_id = await client.enqueue(options["text"], options["type"], **options["options"])
    except TaskRejected as e:
        raise task_error(0, e) from None
    except SchedulerGone as e:
        raise CommandFailed(
            f"{e} (the task may or may not have been stored; submit again with --key to be sure)",
            EXIT_UNREACHABLE,
        ) from None
    if options["no-wait"]:
        await client.close()
        out(str(task_id))
        return
    try:
        out(await wait_for(options, reactor, client, task_id))
    except (TaskFailed, TaskUnknown) as e:
        raise task_error(task_id, e) from None


async def result(options: ResultOptions, reactor: Any) -> None:
    client = await connect(options, reactor)
    task_id = options["task_id"]
    try:
        if options["wait"]:
            out(await wait_for(options, reactor, client, task_id))
        else:
            try:
                out(await client.result(task_id, wait=False))
            finally:
                await client.close()
    except TaskPending as e:
        out(f"{e.state} {e.progress}" if e.progress else e.state)
        raise CommandFailed(f"task {task_id} has not finished: {e}", EXIT_NOT_FINISHED) from None
    except (TaskFailed, TaskUnknown) as e:
        raise task_error(task_id, e) from None
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None


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
            )
    for job in report.get("jobs", []):
        lines.append(
            f"job {job['id']}: {job['items_outstanding']:,} {job['type']} items in flight, "
            f"priority {job['priority']}, chunks of {job['chunk_size']}"
        )
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
    client = await connect(options, reactor)
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
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
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


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    for line in stream:
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


async def map_lines(options: MapOptions, reactor: Any) -> None:
    source = options["source"]
    try:
        if source == "-":
            stream: BinaryIO = sys.stdin.buffer
            size_hint = 0
        else:
            size_hint = count_lines(source)
            stream = open(source, "rb")
        output: BinaryIO = open(options["output"], "wb") if options["output"] else sys.stdout.buffer
    except OSError as e:
        raise CommandFailed(f"{e.filename}: {e.strerror}", EXIT_USAGE) from None
    first = [True]

    async def connect_protocol() -> Any:
        if first[0]:
            first[0] = False
            client = await connect(options, reactor)
        else:
            warn("lost the scheduler during the map; reconnecting and sending the unanswered lines again")
            client = await reconnect(options, reactor)
        return client.protocol

    def write(index: int, ok: bool, value: bytes) -> None:
        output.write(value + b"\n" if ok else b"\n")

    bar = ProgressBar(size_hint)
    items: Iterator[bytes | ItemRefused] = read_lines(stream)
    if options["json"]:
        items = json_arguments(items)
    try:
        summary = await run_map(
            connect_protocol,
            items,
            write,
            options["type"],
            priority=options["priority"],
            chunk_size=options["chunk-size"],
            window=options["window"],
            size_hint=size_hint,
            progress=bar.update,
            on_no_worker=lambda task_type: warn(
                f"no connected worker runs task type {task_type!r} yet; the map waits for one"
            ),
            reconnect=True,
        )
    finally:
        output.flush()
        if stream is not sys.stdin.buffer:
            stream.close()
        if output is not sys.stdout.buffer:
            output.close()
    bar.finish(summary.done, summary.failed)
    if summary.failed:
        lines = [f"{summary.failed:,} of {summary.done:,} tasks failed:"]
        for index, reason in summary.failures[:FAILURES_SHOWN]:
            lines.append(f"  line {index + 1}: {reason}")
        if summary.failed > FAILURES_SHOWN:
            lines.append(f"  ... and {summary.failed - FAILURES_SHOWN:,} more")
        raise CommandFailed("\n".join(lines), EXIT_TASK_FAILED)


COMMANDS: dict[str, Callable[[Any, Any], Awaitable[None]]] = {
    "submit": submit,
    "map": map_lines,
    "result": result,
    "cancel": cancel,
    "status": status,
}


def _add_commands() -> None:
    """The operators' commands (tasks, retry, purge, config) live in modules of their own."""
    from taskmesh.cli import config, operations

    for module in (operations, config):
        Options.subCommands.extend(module.SUBCOMMANDS)
        COMMANDS.update(module.COMMANDS)


_add_commands()


def run(reactor: Any, options: Options) -> Deferred[None]:
    async def main() -> None:
        try:
            command = COMMANDS[options.subCommand or ""]
            await command(options.subOptions, reactor)
        except CommandFailed as e:
            sys.stderr.write(f"taskmesh: {e}\n")
            raise SystemExit(e.status) from None

    return Deferred.fromCoroutine(main())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``taskmesh`` console command."""
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"taskmesh: error: {e}\n")
        sys.stderr.write("Run 'taskmesh --help' (or 'taskmesh COMMAND --help') for the options.\n")
        raise SystemExit(EXIT_USAGE) from None
    task.react(run, (options,))
