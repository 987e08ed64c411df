"""
The worker core: a sans-I/O state machine for one connection to a scheduler.

It takes assignments (single tasks, and chunks of a job's items), runs at
most ``slots`` of them at a time through the task handlers, and reports each
outcome through callables the protocol gives it.  Quick handlers run inline
(no thread hop, no Deferred when they return a plain value); blocking ones go
to ``run_blocking``, which the worker service backs with a thread pool, or a
process pool for handlers that declare themselves CPU-bound, so the reactor
never waits on them.  A chunk holds one slot and runs its items one after
another; each item succeeds or fails on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh.handlers import HandlerRegistry, ITaskHandler
from taskmesh.wire import STATUS_FAILED, STATUS_OK

#: report(task id, status, value): value is the result or a UTF-8 reason.
Report = Callable[[int, int, bytes], None]
#: report_chunk(chunk id, [(status, value) per item, in order])
ReportChunk = Callable[[int, list[tuple[int, bytes]]], None]
#: run_blocking(cpu_bound, function, argument) -> Deferred firing with function(argument).
RunBlocking = Callable[[bool, Callable[[Any], Any], Any], Deferred[Any]]


class OverCapacity(ValueError):
    """The scheduler assigned more than slots plus prefetch."""


class TaskWork(NamedTuple):
    """One task to run."""

    id: int
    type: str
    payload: bytes


class ChunkWork(NamedTuple):
    """Items to run one after another in one slot, answered together (a chunk or a group)."""

    id: int
    type: str
    payloads: list[bytes]


#: Outcomes of a chunk's items, in order: (status, value).
Outcomes = list[tuple[int, bytes]]

#: A failure reason longer than this is cut: it is for a person to read, and
#: must never make a frame too large.
MAX_REASON = 4096


def describe_error(error: BaseException | None) -> str:
    """The reason a submitter reads: the exception's type and message."""
    if error is None:
        return "failed without an exception"
    text = str(error)
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def outcome_of(result: object, max_result: int) -> tuple[int, bytes]:
    """A handler's return value as (status, value)."""
    if isinstance(result, str):
        result = result.encode("utf-8")
    if not isinstance(result, bytes):
        reason = f"handler returned {type(result).__name__}, not bytes or str"
        return STATUS_FAILED, reason.encode("utf-8")
    if len(result) > max_result:
        reason = f"result of {len(result)} bytes exceeds the {max_result}-byte limit"
        return STATUS_FAILED, reason.encode("utf-8")
    return STATUS_OK, result


def run_items(handler: ITaskHandler, max_result: int, payloads: list[bytes]) -> list[tuple[int, bytes]]:
    """
    A chunk of a blocking handler's items, in a pool thread or process: one
    call, one hop, for the whole chunk.  Module-level, so a process pool can
    pickle it.
    """
    outcomes = []
    for payload in payloads:
        try:
            outcomes.append(outcome_of(handler.run(payload), max_result))
        except Exception as e:
            outcomes.append((STATUS_FAILED, describe_error(e).encode("utf-8")))
    return outcomes


class Worker:
    """Runs the tasks and chunks one scheduler connection assigns."""

    log = Logger()

    def __init__(
        self,
        handlers: HandlerRegistry,
        slots: int,
        report: Report,
        run_blocking: RunBlocking,
        max_result: int,
        report_chunk: ReportChunk = lambda chunk_id, outcomes: None,
        capacity: int | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        self._handlers = handlers
        self._slots = slots
        #: The most work the scheduler may give at once (slots + its prefetch);
        #: a scheduler that sends more is refused (it could exhaust us).
        self._capacity = capacity
        self._report = report
        self._report_chunk = report_chunk
        self._run_blocking = run_blocking
        self._max_result = max_result
        self._waiting: deque[TaskWork | ChunkWork] = deque()
        self._running = 0
        # Running work that returned a Deferred (or runs in a pool), so a
        # cancel can reach it; a cancelled one's outcome is not reported.
        self._pending: dict[int, Deferred[Any]] = {}
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
        self._check_capacity(len(records))
        self._waiting.extend([TaskWork(*record) for record in records])
        self._start_waiting()

    def assign_chunks(self, records: list[tuple[int, str, list[bytes]]]) -> None:
        """Chunks from the scheduler: each takes one slot for all its items."""
        self._check_capacity(len(records))
        self._waiting.extend([ChunkWork(*record) for record in records])
        self._start_waiting()

    def _check_capacity(self, more: int) -> None:
        """Cancelled work that still runs (a thread cannot be stopped) holds no lease: not counted."""
        if self._capacity is None:
            return
        held = len(self._waiting) + self._running - len(self._cancelled) + more
        if held > self._capacity:
            raise OverCapacity(
                f"the scheduler sent more work than this worker's {self._capacity} slots and prefetch"
            )

    def cancel(self, task_ids: list[int]) -> None:
        """
        The scheduler took these tasks (or chunks) back: cancelled, timed out,
        or their job's submitter left.  A waiting one is dropped and a running
        one's Deferred is cancelled.  A thread cannot be made to abandon its
        work: a blocking task runs on, its outcome discarded, while the pool
        (as large as the slots) keeps the next blocking task waiting for it.
        """
        doomed = set(task_ids)
        if self._waiting:
            self._waiting = deque(work for work in self._waiting if work.id not in doomed)
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

    # -- running -------------------------------------------------------------

    def _start_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self._running < self._slots and not self._stopped:
            work = waiting.popleft()
            handler = self._handlers.get(work.type)
            if handler is None:
                reason = f"this worker does not run task type {work.type!r}".encode()
                if isinstance(work, ChunkWork):
                    self._report_chunk(work.id, [(STATUS_FAILED, reason)] * len(work.payloads))
                else:
                    self._report(work.id, STATUS_FAILED, reason)
            elif isinstance(work, ChunkWork):
                self._run_chunk(work.id, handler, work.payloads)
            else:
                self._run(work.id, handler, work.payload)

    def _run(self, task_id: int, handler: ITaskHandler, payload: bytes) -> None:
        if handler.blocking:
            self._hold(task_id, self._run_blocking(_cpu_bound(handler), handler.run, payload))
            return
        try:
            result = handler.run(payload)
        except Exception as e:
            self._report(task_id, STATUS_FAILED, describe_error(e).encode("utf-8"))
            return
        if isinstance(result, Deferred):
            self._hold(task_id, result)
        else:
            self._report(task_id, *outcome_of(result, self._max_result))

    def _hold(self, task_id: int, running: Deferred[Any]) -> None:
        """A task that finishes later holds its slot until then."""
        self._running += 1
        self._pending[task_id] = running
        running.addBoth(self._finished, task_id)

    def _finished(self, outcome: object, task_id: int) -> None:
        self._running -= 1
        self._pending.pop(task_id, None)
        if self._stopped:
            return
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
        elif isinstance(outcome, Failure):
            self._report(task_id, STATUS_FAILED, describe_error(outcome.value).encode("utf-8"))
        else:
            self._report(task_id, *outcome_of(outcome, self._max_result))
        self._start_waiting()

    # -- chunks --------------------------------------------------------------

    def _run_chunk(self, chunk_id: int, handler: ITaskHandler, payloads: list[bytes]) -> None:
        if handler.blocking:
            function = partial(run_items, handler, self._max_result)
            running = self._run_blocking(_cpu_bound(handler), function, payloads)
            self._running += 1
            self._pending[chunk_id] = running
            running.addBoth(self._chunk_finished, chunk_id, len(payloads))
            return
        self._running += 1
        self._continue_chunk(chunk_id, handler, payloads, 0, [], resumed=False)

    def _continue_chunk(
        self,
        chunk_id: int,
        handler: ITaskHandler,
        payloads: list[bytes],
        position: int,
        outcomes: list[tuple[int, bytes]],
        resumed: bool,
    ) -> None:
        """Run items inline until one returns a Deferred (then resume when it fires) or all are done."""
        max_result = self._max_result
        while position < len(payloads):
            if self._stopped or chunk_id in self._cancelled:
                break
            try:
                result = handler.run(payloads[position])
            except Exception as e:
                outcomes.append((STATUS_FAILED, describe_error(e).encode("utf-8")))
                position += 1
                continue
            if isinstance(result, Deferred):
                self._pending[chunk_id] = result
                result.addBoth(self._chunk_item_done, chunk_id, handler, payloads, position, outcomes)
                return
            outcomes.append(outcome_of(result, max_result))
            position += 1
        self._chunk_finished(outcomes, chunk_id, len(payloads), resumed)

    def _chunk_item_done(
        self,
        result: object,
        chunk_id: int,
        handler: ITaskHandler,
        payloads: list[bytes],
        position: int,
        outcomes: list[tuple[int, bytes]],
    ) -> None:
        self._pending.pop(chunk_id, None)
        if isinstance(result, Failure):
            outcomes.append((STATUS_FAILED, describe_error(result.value).encode("utf-8")))
        else:
            outcomes.append(outcome_of(result, self._max_result))
        self._continue_chunk(chunk_id, handler, payloads, position + 1, outcomes, resumed=True)

    def _chunk_finished(self, outcomes: object, chunk_id: int, items: int, resumed: bool = True) -> None:
        self._running -= 1
        self._pending.pop(chunk_id, None)
        if self._stopped:
            return
        if chunk_id in self._cancelled:
            self._cancelled.discard(chunk_id)
        elif isinstance(outcomes, Failure):  # the pool itself failed
            reason = describe_error(outcomes.value).encode("utf-8")
            self._report_chunk(chunk_id, [(STATUS_FAILED, reason)] * items)
        else:
            self._report_chunk(chunk_id, cast(Outcomes, outcomes))
        if resumed:
            self._start_waiting()


def _cpu_bound(handler: ITaskHandler) -> bool:
    return bool(getattr(handler, "cpu_bound", False))
