"""
Running one command to its exit status: signals, a closed stdout, one line.

``task.react`` lets Twisted's own SIGINT/SIGTERM handlers stop the reactor:
the command then sees its connection drop (and took it for the scheduler
going away), and the process exited 0.  Here the signals are ours: SIGINT or
SIGTERM *cancels* the command's Deferred, so the command stops at once where
it waits, runs its cleanup (a map says how far it got and keeps a partial
output file apart), and the process exits 128 + the signal's number (130,
143), as a shell reports a process killed by it.  A second signal exits at
once.

A closed stdout (``taskmesh map ... | head``) is the other early end: the
command stops the same way, says nothing, and exits 141 (128 + SIGPIPE), the
status a shell shows for ``git``/coreutils that die by SIGPIPE there.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred

#: 128 + SIGPIPE: stdout was closed by its reader.
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE


class CommandFailed(Exception):
    """One line for stderr, and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StoppedEarly(Exception):
    """A command cancelled by ``Stopper`` says how far it got (one clause, or empty)."""

    def __init__(self, progress: str = "") -> None:
        super().__init__(progress)
        self.progress = progress


class InterruptedRead(Exception):
    """A signal came while the command was blocked reading its input (a pipe with nothing in it yet)."""


class Stopper:
    """Why the running command is being stopped early, and the means to stop it."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.running: Deferred[None] | None = None
        #: The signal that stopped it, if one did.
        self.signum: int | None = None
        #: True when stdout was closed by its reader.
        self.output_closed = False
        #: True while the command is blocked in a read of its input: the reactor
        #: cannot run then, so a signal interrupts the read itself.
        self.reading = False

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.output_closed

    def interrupt(self, signum: int) -> None:
        if self.stopping:
            return
        self.signum = signum
        self._cancel()

    def close_output(self) -> None:
        """stdout's reader has gone (EPIPE): stop quietly."""
        if self.stopping:
            return
        self.output_closed = True
        quiet_stdout()
        # Not from inside the write: that may run deep in a protocol's callback.
        self._reactor.callLater(0, self._cancel)

    def _cancel(self) -> None:
        if self.running is not None and not self.running.called:
            self.running.cancel()

    def status(self) -> int:
        if self.output_closed:
            return EXIT_OUTPUT_CLOSED
        assert self.signum is not None
        return 128 + self.signum

    def message(self, progress: str) -> str | None:
        """The one line for stderr, or None (a closed stdout ends quietly)."""
        if self.output_closed:
            return None
        assert self.signum is not None
        what = "interrupted" if self.signum == signal.SIGINT else "terminated"
        line = f"{what} ({signal.Signals(self.signum).name})"
        return f"{line}: {progress}" if progress else line


def quiet_stdout() -> None:
    """
    Point stdout at /dev/null: what is still buffered for a reader that has
    gone cannot raise again (Python would print "Exception ignored ...
    BrokenPipeError" at exit).
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def error_line(message: str) -> None:
    try:
        sys.stderr.write(f"taskmesh: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


def run(
    reactor: Any,
    command: Callable[[Stopper], Awaitable[None]],
    describe_unexpected: Callable[[BaseException], CommandFailed | None] = lambda error: None,
) -> int:
    """Run ``command`` on the reactor until it is done; return the exit status."""
    stopper = Stopper(reactor)
    outcome: list[int] = []

    async def main() -> None:
        try:
            await command(stopper)
        except (CancelledError, StoppedEarly, InterruptedRead) as e:
            if not stopper.stopping:
                raise
            message = stopper.message(e.progress if isinstance(e, StoppedEarly) else "")
            if message is not None:
                error_line(message)
            outcome.append(stopper.status())
            return
        except CommandFailed as e:
            if stopper.output_closed:
                outcome.append(stopper.status())
                return
            error_line(str(e))
            outcome.append(e.status)
            return
        except BrokenPipeError:
            stopper.output_closed = True
            quiet_stdout()
            outcome.append(stopper.status())
            return
        except Exception as e:
            failed = describe_unexpected(e)
            if failed is None:
                raise
            error_line(str(failed))
            outcome.append(failed.status)
            return
        if stopper.stopping:  # stopped as it was finishing anyway
            outcome.append(stopper.status())
        else:
            outcome.append(0)

    def start() -> None:
        stopper.running = Deferred.fromCoroutine(main())
        stopper.running.addErrback(unexpected).addBoth(lambda _: reactor.stop())

    def unexpected(failure: Any) -> None:
        # A bug: its traceback is worth more than one line here.
        failure.printTraceback(file=sys.stderr)
        outcome.append(70)  # EX_SOFTWARE

    def on_signal(signum: int, frame: Any) -> None:
        if stopper.signum is not None:  # a second one: go now
            os._exit(128 + signum)
        if stopper.reading:
            stopper.signum = signum
            raise InterruptedRead()
        reactor.callFromThread(stopper.interrupt, signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        reactor.callWhenRunning(start)
        reactor.run(installSignalHandlers=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_OUTPUT_CLOSED
    return outcome[0] if outcome else 70
