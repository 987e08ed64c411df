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

from taskmesh.codec import describe_error, format_traceback, type_name
from taskmesh.handlers import HandlerRegistry, ITaskHandler
from taskmesh.wire import STATUS_FAILED, STATUS_OK

#: report(task id, status, value): value is the result or a UTF-8 reason.
Report = Callable[[int, int, bytes], None]
#: report_chunk(chunk id, [(status, value) per item, in order])
ReportChunk = Callable[[int, list[tuple[int, bytes]]], None]
#: run_blocking(cpu_bound, function, argument) -> Deferred firing with function(argument).
RunBlocking = Callable[[bool, Callable[[Any], Any], Any], Deferred[Any]]


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
#: What running one item gives: (status, value, the traceback to log for a failure, or None).
Done = tuple[int, bytes, str | None]


def outcome_of(result: object, max_result: int) -> tuple[int, bytes]:
    """A handler's return value as (status, value); never raises."""
    if isinstance(result, str):
        try:
            result = result.encode("utf-8")
        except UnicodeEncodeError as e:
            reason = f"handler returned text that UTF-8 cannot encode ({describe_error(e)})"
            return STATUS_FAILED, reason.encode("utf-8")
    if not isinstance(result, bytes):
        reason = f"handler returned {type_name(result)}, not bytes or str"
        return STATUS_FAILED, reason.encode("utf-8")
    if len(result) > max_result:
        reason = f"result of {len(result)} bytes exceeds the {max_result}-byte limit"
        return STATUS_FAILED, reason.encode("utf-8")
    return STATUS_OK, result


def failed(error: BaseException | None) -> Done:
    """A handler's exception (any BaseException) as a failed outcome, with its traceback to log."""
    if error is None:
        return STATUS_FAILED, describe_error(error).encode("utf-8"), None
    return STATUS_FAILED, describe_error(error).encode("utf-8"), format_traceback(error)


def run_one(handler: ITaskHandler, max_result: int, payload: bytes) -> Done:
    """
    One item of a blocking handler, in a pool thread or process: whatever the
    handler raises (SystemExit and KeyboardInterrupt too: in a pool they
    would kill the thread or process and the task would never be answered)
    becomes its failure.  Module-level, so a process pool can pickle it.
    """
    try:
        status, value = outcome_of(handler.run(payload), max_result)
    except BaseException as e:
        return failed(e)
    return status, value, None


def run_items(handler: ITaskHandler, max_result: int, payloads: list[bytes]) -> list[Done]:
    """A chunk of a blocking handler's items in one call: one hop for the whole chunk."""
    return [run_one(handler, max_result, payload) for payload in payloads]


class Worker:
    """
    Runs the tasks and chunks one scheduler connection assigns.

    Whatever a handler does (raise any BaseException, return something that
    is not a result, raise from its exception's ``__str__``), its task fails
    with a readable reason and the connection stays up: the core never lets
    a handler's misbehaviour escape into the protocol, where it would drop
    the connection and every task this worker holds.
    """

    log = Logger()

    def __init__(
        self,
        handlers: HandlerRegistry,
        slots: int,
        report: Report,
        run_blocking: RunBlocking,
        max_result: int,
        report_chunk: ReportChunk = lambda chunk_id, outcomes: None,
    ) -> None:
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        self._handlers = handlers
        self._slots = slots
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
        self._waiting.extend([TaskWork(*record) for record in records])
        self._start_waiting()

    def assign_chunks(self, records: list[tuple[int, str, list[bytes]]]) -> None:
        """Chunks from the scheduler: each takes one slot for all its items."""
        self._waiting.extend([ChunkWork(*record) for record in records])
        self._start_waiting()

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
                self._run_chunk(work, handler)
            else:
                self._run(work, handler)

    def _run(self, work: TaskWork, handler: ITaskHandler) -> None:
        try:
            if handler.blocking:
                running = self._run_blocking(
                    _cpu_bound(handler), partial(run_one, handler, self._max_result), work.payload
                )
                self._hold(work, running, pooled=True)
                return
            result = handler.run(work.payload)
            if isinstance(result, Deferred):
                self._hold(work, result, pooled=False)
                return
        except BaseException as e:
            self._done(work, failed(e))
            return
        self._done(work, (*outcome_of(result, self._max_result), None))

    def _hold(self, work: TaskWork, running: Deferred[Any], pooled: bool) -> None:
        """
        A task that finishes later holds its slot until then.  ``pooled``: the
        Deferred fires with ``run_one``'s outcome, else with the handler's result.
        """
        self._running += 1
        self._pending[work.id] = running
        running.addBoth(self._finished, work, pooled)

    def _finished(self, outcome: object, work: TaskWork, pooled: bool) -> None:
        self._running -= 1
        self._pending.pop(work.id, None)
        if self._stopped:
            return
        if work.id in self._cancelled:
            self._cancelled.discard(work.id)
        elif isinstance(outcome, Failure):
            self._done(work, failed(outcome.value))
        elif pooled:
            self._done(work, cast(Done, outcome))
        else:
            self._done(work, (*outcome_of(outcome, self._max_result), None))
        self._start_waiting()

    def _done(self, work: TaskWork, done: Done) -> None:
        status, value, trace = done
        if trace is not None:
            self._log_failure(work.type, f"task {work.id}", value, trace)
        self._report(work.id, status, value)

    def _log_failure(self, task_type: str, what: str, reason: bytes, trace: str) -> None:
        self.log.error(
            "{what} ({task_type}) failed: {reason}\n{traceback}",
            what=what,
            task_type=task_type,
            reason=reason.decode("utf-8", "replace"),
            traceback=trace,
        )

    # -- chunks --------------------------------------------------------------

    def _run_chunk(self, work: ChunkWork, handler: ITaskHandler) -> None:
        self._running += 1
        try:
            if handler.blocking:
                function = partial(run_items, handler, self._max_result)
                running = self._run_blocking(_cpu_bound(handler), function, work.payloads)
            else:
                running = None
        except BaseException as e:
            self._chunk_finished([failed(e)] * len(work.payloads), work, resumed=False)
            return
        if running is None:
            self._continue_chunk(work, handler, 0, [], resumed=False)
            return
        self._pending[work.id] = running
        running.addBoth(self._chunk_finished, work)

    def _continue_chunk(
        self, work: ChunkWork, handler: ITaskHandler, position: int, outcomes: list[Done], resumed: bool
    ) -> None:
        """Run items inline until one returns a Deferred (then resume when it fires) or all are done."""
        max_result = self._max_result
        payloads = work.payloads
        while position < len(payloads):
            if self._stopped or work.id in self._cancelled:
                break
            try:
                result = handler.run(payloads[position])
            except BaseException as e:
                outcomes.append(failed(e))
                position += 1
                continue
            if isinstance(result, Deferred):
                self._pending[work.id] = result
                result.addBoth(self._chunk_item_done, work, handler, position, outcomes)
                return
            outcomes.append((*outcome_of(result, max_result), None))
            position += 1
        self._chunk_finished(outcomes, work, resumed)

    def _chunk_item_done(
        self, result: object, work: ChunkWork, handler: ITaskHandler, position: int, outcomes: list[Done]
    ) -> None:
        self._pending.pop(work.id, None)
        if isinstance(result, Failure):
            outcomes.append(failed(result.value))
        else:
            outcomes.append((*outcome_of(result, self._max_result), None))
        self._continue_chunk(work, handler, position + 1, outcomes, resumed=True)

    def _chunk_finished(self, outcomes: object, work: ChunkWork, resumed: bool = True) -> None:
        self._running -= 1
        self._pending.pop(work.id, None)
        if self._stopped:
            return
        if work.id in self._cancelled:
            self._cancelled.discard(work.id)
        else:
            if isinstance(outcomes, Failure):  # the pool itself failed
                done = failed(outcomes.value)
                outcomes = [done] * len(work.payloads)
            answers: Outcomes = []
            for index, (status, value, trace) in enumerate(cast(list[Done], outcomes)):
                if trace is not None:
                    self._log_failure(work.type, f"item {index} of chunk {work.id}", value, trace)
                answers.append((status, value))
            self._report_chunk(work.id, answers)
        if resumed:
            self._start_waiting()


def _cpu_bound(handler: ITaskHandler) -> bool:
    return bool(getattr(handler, "cpu_bound", False))
