"""
The ``taskmesh`` command: a thin layer over ``taskmesh.Client``.

Results go to stdout; anything else a person should read goes to stderr as
one line, and the exit status says what happened: 0 done, 1 the task failed
or was refused, 2 the command line was wrong, 3 the scheduler could not be
reached or went away.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError
from twisted.python import usage

from taskmesh import __version__
from taskmesh.address import DEFAULT_ADDRESS, parse_address
from taskmesh.client import DEFAULT_CONNECT_TIMEOUT, Client
from taskmesh.client_protocol import SchedulerGone, TaskRejected
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.scheduler import TaskFailed
from taskmesh.tap import positive_float

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class ConnectionOptions(usage.Options):
    optParameters = [
        ["connect", "c", DEFAULT_ADDRESS,
         "Scheduler address: host:port, [ipv6]:port or an endpoint string."],
        ["connect-timeout", None, DEFAULT_CONNECT_TIMEOUT,
         "Seconds to wait for the scheduler to answer.", positive_float],
    ]

    def postOptions(self) -> None:
        try:
            parse_address(self["connect"])
        except ValueError as e:
            raise usage.UsageError(f"--connect: {e}") from None


class SubmitOptions(ConnectionOptions):
    synopsis = "[options] TEXT"
    longdesc = "Run one task and print its result (for sha256, the hex digest of TEXT)."
    optParameters = [
        ["type", "t", DEFAULT_TASK_TYPE, "Task type."],
    ]

    def parseArgs(self, text: str) -> None:
        self["text"] = text


class Options(usage.Options):
    synopsis = "taskmesh COMMAND [options]"
    longdesc = "Talk to a taskmesh scheduler. Run 'taskmesh COMMAND --help' for a command's options."
    subCommands = [
        ["submit", None, SubmitOptions, "Run one task and print its result."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"taskmesh {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command (submit)")


class CommandFailed(Exception):
    """One line for stderr, and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def warn(message: str) -> None:
    sys.stderr.write(f"taskmesh: warning: {message}\n")
    sys.stderr.flush()


async def connect(options: ConnectionOptions, reactor: Any) -> Client:
    try:
        return await Client.connect(
            options["connect"],
            reactor,
            timeout=options["connect-timeout"],
            on_no_worker=lambda task_type: warn(
                f"no connected worker runs task type {task_type!r} yet; the task waits for one"
            ),
        )
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


async def submit(options: SubmitOptions, reactor: Any) -> None:
    client = await connect(options, reactor)
    try:
        result = await client.submit(options["text"], options["type"])
    except TaskFailed as e:
        raise CommandFailed(f"task failed: {e}", EXIT_TASK_FAILED) from None
    except TaskRejected as e:
        raise CommandFailed(f"task refused: {e}", EXIT_TASK_FAILED) from None
    except SchedulerGone as e:
        raise CommandFailed(str(e), EXIT_UNREACHABLE) from None
    finally:
        await client.close()
    sys.stdout.buffer.write(result + b"\n")
    sys.stdout.flush()


COMMANDS = {"submit": submit}


def run(reactor: Any, options: Options) -> "Deferred[None]":
    async def main() -> None:
        try:
            await COMMANDS[options.subCommand](options.subOptions, reactor)
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
        sys.stderr.write(f"taskmesh: error: {e}\n{options.getSynopsis()}\n")
        sys.stderr.write("Run 'taskmesh --help' for the commands and their options.\n")
        raise SystemExit(EXIT_USAGE) from None
    task.react(run, (options,))
