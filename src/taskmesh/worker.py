"""
The worker core: a sans-I/O state machine for one connection to a scheduler.

It takes assignments, runs at most ``slots`` of them at a time through the
task handlers, and reports each outcome through a callable the protocol gives
it.  Quick handlers run inline (no thread hop, no Deferred when they return a
plain value); blocking ones go to ``run_blocking``, which the worker service
backs with a thread pool so the reactor never waits on them.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh.handlers import HandlerRegistry, ITaskHandler
from taskmesh.wire import STATUS_FAILED, STATUS_OK

#: report(task id, status, value): value is the result or a UTF-8 reason.
Report = Callable[[int, int, bytes], None]
#: run_blocking(function, payload) -> Deferred firing with function(payload).
RunBlocking = Callable[[Callable[[bytes], object], bytes], Deferred]


#: A failure reason longer than this is cut: it is for a person to read, and
#: must never make a frame too large.
MAX_REASON = 4096


def describe_error(error: BaseException) -> str:
    """The reason a submitter reads: the exception's type and message."""
    text = str(error)
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


class Worker:
    """Runs the tasks one scheduler connection assigns."""

    log = Logger()

    def __init__(
        self,
        handlers: HandlerRegistry,
        slots: int,
        report: Report,
        run_blocking: RunBlocking,
        max_result: int,
    ) -> None:
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        self._handlers = handlers
        self._slots = slots
        self._report = report
        self._run_blocking = run_blocking
        self._max_result = max_result
        self._waiting: deque[tuple[int, str, bytes]] = deque()
        self._running = 0
        # Running tasks that returned a Deferred (or run in a thread), so a
        # cancel can reach them; a cancelled one's outcome is not reported.
        self._pending: dict[int, Deferred] = {}
        self._cancelled: set[int] = set()
        self._stopped = False

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def assign(self, records: list[tuple[int, str, bytes]]) -> None:
        """Tasks from the scheduler: start what fits in the slots, queue the rest."""
        self._waiting.extend(records)
        self._start_waiting()

    def cancel(self, task_ids: list[int]) -> None:
        """
        The scheduler took these tasks back (cancelled or timed out).  A
        waiting one is dropped and a running one's Deferred is cancelled.  A
        thread cannot be made to abandon its work: a blocking task runs on,
        its outcome discarded, while the thread pool (as large as the slots)
        keeps the next blocking task waiting for its thread.
        """
        doomed = set(task_ids)
        if self._waiting:
            self._waiting = deque(entry for entry in self._waiting if entry[0] not in doomed)
        for task_id in doomed:
            pending = self._pending.get(task_id)
            if pending is not None:
                self._cancelled.add(task_id)
                pending.cancel()

    def stop(self) -> None:
        """
        The connection is gone: the scheduler has requeued everything this
        session held, so drop what has not started and discard the outcomes
        of what is still running.
        """
        self._stopped = True
        self._waiting.clear()

    def _start_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self._running < self._slots and not self._stopped:
            task_id, task_type, payload = waiting.popleft()
            handler = self._handlers.get(task_type)
            if handler is None:
                self._report(
                    task_id,
                    STATUS_FAILED,
                    f"this worker does not run task type {task_type!r}".encode("utf-8"),
                )
                continue
            self._run(task_id, handler, payload)

    def _run(self, task_id: int, handler: ITaskHandler, payload: bytes) -> None:
        if handler.blocking:
            self._running += 1
            running = self._pending[task_id] = self._run_blocking(handler.run, payload)
            running.addBoth(self._finished, task_id)
            return
        try:
            result = handler.run(payload)
        except Exception as e:
            self._report(task_id, STATUS_FAILED, describe_error(e).encode("utf-8"))
            return
        if isinstance(result, Deferred):
            self._running += 1
            self._pending[task_id] = result
            result.addBoth(self._finished, task_id)
        else:
            self._send(task_id, result)

    def _finished(self, outcome: object, task_id: int) -> None:
        self._running -= 1
        self._pending.pop(task_id, None)
        if self._stopped:
            return
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            self._start_waiting()
            return
        if isinstance(outcome, Failure):
            self._report(
                task_id, STATUS_FAILED, describe_error(outcome.value).encode("utf-8")
            )
        else:
            self._send(task_id, outcome)
        self._start_waiting()

    def _send(self, task_id: int, result: object) -> None:
        if isinstance(result, str):
            result = result.encode("utf-8")
        if not isinstance(result, bytes):
            self._report(
                task_id,
                STATUS_FAILED,
                f"handler returned {type(result).__name__}, not bytes or str".encode("utf-8"),
            )
        elif len(result) > self._max_result:
            self._report(
                task_id,
                STATUS_FAILED,
                f"result of {len(result)} bytes exceeds the {self._max_result}-byte limit".encode(),
            )
        else:
            self._report(task_id, STATUS_OK, result)
