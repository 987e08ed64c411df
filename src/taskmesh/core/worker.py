"""
The worker core: a sans-I/O state machine for one connection to a scheduler.

It takes assignments (single tasks, groups of queued tasks, and chunks of a
job's items), runs at most ``slots`` of them at a time through the task
handlers, and reports each outcome through callables the protocol gives it.
Quick handlers run inline (no thread hop, no Deferred when they return a
plain value); blocking ones go to ``run_blocking``, which the worker service
backs with a thread pool, or a process pool for handlers that declare
themselves CPU-bound, so the reactor never waits on them.  A chunk holds one
slot and runs its items one after another; each item succeeds or fails on
its own.

Around every handler call the core sets the task's context (a
``ContextSpec``, from which ``taskmesh.current_task()`` makes its
``TaskContext``), and it sends what tasks report with
``report_progress``: the latest report of each running task, at most every
``PROGRESS_INTERVAL`` seconds.

Whatever a handler raises becomes its task's outcome: ``taskmesh.Retry``
asks the scheduler for another attempt (STATUS_RETRY); anything else (any
BaseException) fails the task, with a plain reason for a bytes handler and a
structured failure (type, message, traceback) for a task function, and is
logged with its traceback.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh.codec import (
    describe_error,
    encode_failure,
    failure_summary,
    format_task_traceback,
    format_traceback,
    type_name,
)
from taskmesh.context import CURRENT, PROGRESS_INTERVAL, ContextSpec, ThreadReporter, enter, leave
from taskmesh.core.timings import WorkerStats
from taskmesh.errors import Retry
from taskmesh.handlers import HandlerRegistry, ITaskHandler
from taskmesh.wire import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_RETRY,
    GroupRecord,
    ProgressRecord,
    TaskRecord,
    retry_value,
)

#: report(task id, status, value): value is the result or a UTF-8 reason.
Report = Callable[[int, int, bytes], None]
#: report_chunk(chunk id, [(status, value) per item, in order])
ReportChunk = Callable[[int, list[tuple[int, bytes]]], None]
#: report_progress([(task id, done, total, note), ...])
ReportProgress = Callable[[list[ProgressRecord]], None]
#: hand_back([lease id, ...]): work held and never started, returned while draining.
HandBack = Callable[[list[int]], None]
#: run_blocking(cpu_bound, function, argument) -> Deferred firing with function(argument).
RunBlocking = Callable[[bool, Callable[[Any], Any], Any], Deferred[Any]]


class OverCapacity(ValueError):
    """The scheduler assigned more than slots plus prefetch."""


class TaskWork(NamedTuple):
    """One task to run."""

    id: int
    type: str
    payload: bytes
    attempt: int = 1
    #: 0: not told (an Assign rather than an AssignTasks).
    max_attempts: int = 0
    #: When the attempt times out, in the clock's seconds; None: no timeout.
    deadline: float | None = None


class ChunkWork(NamedTuple):
    """
    Items to run one after another in one slot, answered together: a job's
    chunk (``members`` None: its items are not tasks) or a group of tasks
    (``members``: (task id, attempt, max attempts) of each item).
    """

    id: int
    type: str
    payloads: list[bytes]
    members: list[tuple[int, int, int]] | None = None


#: Outcomes of a chunk's items, in order: (status, value).
Outcomes = list[tuple[int, bytes]]
#: What running one item gives: (status, value, the traceback to log for a
#: failure, or None).
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


def failed(error: BaseException | None, handler: object = None, max_result: int = 1 << 20) -> Done:
    """
    What a handler raised (any BaseException) as its outcome, with the
    traceback to log: a retry for ``taskmesh.Retry``, else a failure.  A task
    function's failure is structured (type, message, traceback); a bytes
    handler's is its ``Type: message``.  Both fit in ``max_result`` bytes.
    """
    if error is None:
        return STATUS_FAILED, describe_error(error).encode("utf-8"), None
    structured = bool(getattr(handler, "structured_failures", False))
    if isinstance(error, Retry):
        # The reason a retry gives, should its attempts be spent: the error
        # it was raised from, if any, else the retry's own.
        cause = error.__cause__ if error.__cause__ is not None else error
        reason, _ = _failure_value(cause, structured, max_result - 4)
        return STATUS_RETRY, retry_value(error.delay, reason), None
    value, trace = _failure_value(error, structured, max_result)
    return STATUS_FAILED, value, trace


def _failure_value(error: BaseException, structured: bool, limit: int) -> tuple[bytes, str]:
    if structured:
        trace = format_task_traceback(error)
        return encode_failure(error, limit, trace), trace
    reason = describe_error(error).encode("utf-8")
    if len(reason) > limit:
        reason = reason[:limit].decode("utf-8", "ignore").encode("utf-8")
    return reason, format_traceback(error)


def run_one(handler: ITaskHandler, max_result: int, context: ContextSpec, payload: bytes) -> Done:
    """
    One item of a blocking handler, in a pool thread or process, as the
    current task ``context``: whatever the handler raises (SystemExit and
    KeyboardInterrupt too: in a pool they would kill the thread or process
    and the task would never be answered) becomes its outcome.
    Module-level, so a process pool can pickle it.
    """
    token = enter(context)
    try:
        status, value = outcome_of(handler.run(payload), max_result)
    except BaseException as e:
        return failed(e, handler, max_result)
    finally:
        leave(token)
    return status, value, None


def run_items(
    handler: ITaskHandler, max_result: int, contexts: list[ContextSpec], payloads: list[bytes]
) -> list[Done]:
    """A chunk of a blocking handler's items in one call: one hop for the whole chunk."""
    return [run_one(handler, max_result, context, payload) for context, payload in zip(contexts, payloads)]


def _direct(function: Callable[[], None]) -> None:
    function()


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
        report_progress: ReportProgress = lambda records: None,
        clock: IReactorTime | None = None,
        call_from_thread: Callable[[Callable[[], None]], None] = _direct,
        capacity: int | None = None,
        stats: WorkerStats | None = None,
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
        self._report_progress = report_progress
        self._run_blocking = run_blocking
        self._max_result = max_result
        self._clock: IReactorTime = clock if clock is not None else Clock()
        self._waiting: deque[TaskWork | ChunkWork] = deque()
        self._running = 0
        # Running work that returned a Deferred (or runs in a pool), so a
        # cancel can reach it; a cancelled one's outcome is not reported.
        self._pending: dict[int, Deferred[Any]] = {}
        self._cancelled: set[int] = set()
        self._stopped = False
        #: Draining (a warm shutdown): where held work goes back, and who
        #: hears when nothing runs any more; None while not draining.
        self._hand_back: HandBack | None = None
        self._on_idle: Callable[[], None] | None = None
        # progress: tasks whose reports are heard (running ones), the latest
        # report of each waiting to be sent, and the send that is due.
        #: Running groups' tasks (by group id), whose progress is heard
        #: besides that of the single tasks in ``_pending``.
        self._groups: dict[int, list[tuple[int, int, int]]] = {}
        self._group_members: set[int] | None = None
        #: The single task whose handler is being called inline, if any.
        self._starting: int | None = None
        self._progress: dict[int, ProgressRecord] = {}
        self._progress_call: IDelayedCall | None = None
        self._progress_sent = float("-inf")
        #: Where tasks in pool threads report (a process pool's get their process's own).
        self._thread_reporter = ThreadReporter(call_from_thread, self.post_progress)
        #: Counters for the worker's /metrics (its own unless the caller keeps them).
        self.stats = stats if stats is not None else WorkerStats(slots)
        #: When each running task, group or chunk took its slot (by id).
        self._started: dict[int, float] = {}

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Work running whose outcome will be reported (cancelled work that runs on is not counted)."""
        return self._running - len(self._cancelled)

    def drain(self, hand_back: HandBack, on_idle: Callable[[], None]) -> list[int]:
        """
        Start a warm shutdown: nothing new starts; returns the ids of the
        work held and not started (to hand back to the scheduler), and from
        now on hands back whatever else arrives through ``hand_back``.  What
        runs finishes and is reported as usual; ``on_idle`` is called once
        nothing reportable runs any more (at once, by the caller's check of
        ``busy``, if nothing does now).
        """
        self._hand_back = hand_back
        self._on_idle = on_idle
        held = [work.id for work in self._waiting]
        self._waiting.clear()
        return held

    def _maybe_idle(self) -> None:
        if self._on_idle is not None and self.busy <= 0:
            on_idle, self._on_idle = self._on_idle, None
            on_idle()

    def assign(self, records: list[tuple[int, str, bytes]]) -> None:
        """Tasks from the scheduler (Assign): start what fits in the slots, queue the rest."""
        if self._hand_back is not None:  # draining: straight back, unstarted
            self._hand_back([record[0] for record in records])
            return
        self._check_capacity(len(records))
        self._waiting.extend([TaskWork(*record) for record in records])
        self._start_waiting()

    def assign_tasks(self, records: list[TaskRecord]) -> None:
        """Tasks with their attempt, attempts and timeout (AssignTasks)."""
        if self._hand_back is not None:  # draining: straight back, unstarted
            self._hand_back([record[0] for record in records])
            return
        self._check_capacity(len(records))
        now = self._clock.seconds()
        self._waiting.extend(
            [
                TaskWork(
                    task_id,
                    task_type,
                    payload,
                    attempt,
                    max_attempts,
                    now + timeout_ms / 1000 if timeout_ms else None,
                )
                for task_id, task_type, payload, attempt, max_attempts, timeout_ms in records
            ]
        )
        self._start_waiting()

    def assign_chunks(self, records: list[tuple[int, str, list[bytes]]]) -> None:
        """Chunks of jobs from the scheduler: each takes one slot for all its items."""
        if self._hand_back is not None:  # draining: straight back, unstarted
            self._hand_back([record[0] for record in records])
            return
        self._check_capacity(len(records))
        self._waiting.extend([ChunkWork(*record) for record in records])
        self._start_waiting()

    def assign_groups(self, records: list[GroupRecord]) -> None:
        """Groups of tasks: each takes one slot and is answered as a chunk."""
        if self._hand_back is not None:  # draining: straight back, unstarted
            self._hand_back([record[0] for record in records])
            return
        self._check_capacity(len(records))
        self._waiting.extend(
            [
                ChunkWork(
                    group_id,
                    task_type,
                    [payload for _, _, _, payload in members],
                    [(task_id, attempt, max_attempts) for task_id, attempt, max_attempts, _ in members],
                )
                for group_id, task_type, members in records
            ]
        )
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
        if self._on_idle is not None:
            self._maybe_idle()  # what is cancelled is not waited for

    def stop(self) -> None:
        """
        The connection is gone: the scheduler has requeued everything this
        session held, so drop what has not started and discard the outcomes
        (and progress) of what is still running.
        """
        self._stopped = True
        self._waiting.clear()
        self._progress.clear()
        if self._progress_call is not None and self._progress_call.active():
            self._progress_call.cancel()
        self._progress_call = None

    # -- progress ------------------------------------------------------------

    def post_progress(self, task_id: int, done: float, total: float, note: str) -> None:
        """
        A running task's progress (from ``report_progress``, in the reactor's
        thread): kept as its task's latest, and sent with the others at most
        every PROGRESS_INTERVAL seconds.  A task that is not running here
        (finished, cancelled, another connection's) is not heard.
        """
        if self._stopped or not self._is_running(task_id):
            return
        self._progress[task_id] = (task_id, done, total, note)
        if self._progress_call is None:
            wait = max(0.0, self._progress_sent + PROGRESS_INTERVAL - self._clock.seconds())
            self._progress_call = self._clock.callLater(wait, self._send_progress)

    def _send_progress(self) -> None:
        self._progress_call = None
        self._progress_sent = self._clock.seconds()
        if self._progress:
            records = list(self._progress.values())
            self._progress.clear()
            self._report_progress(records)

    def _is_running(self, task_id: int) -> bool:
        """
        Whether a task is running here: a single task that has not finished
        in the turn it started (only those can report progress that gets
        sent), or a task of a running group.
        """
        if task_id in self._pending or task_id == self._starting:
            return True
        if not self._groups:
            return False
        members = self._group_members
        if members is None:
            members = self._group_members = {
                member for group in self._groups.values() for member, _, _ in group
            }
        return task_id in members

    def _forget(self, task_id: int) -> None:
        """A task is done here: its progress is no longer sent."""
        self._started.pop(task_id, None)
        if self._progress:
            self._progress.pop(task_id, None)

    def _context(self, work: TaskWork, pooled: bool) -> ContextSpec:
        return (
            work.id,
            work.type,
            work.attempt,
            work.max_attempts or None,
            work.deadline,
            self._thread_reporter if pooled else self.post_progress,
        )

    def _item_contexts(self, work: ChunkWork, pooled: bool) -> list[ContextSpec]:
        task_type = work.type
        if work.members is None:  # a job's items: no ids, no attempts
            return [(None, task_type, 1, None, None, None)] * len(work.payloads)
        reporter = self._thread_reporter if pooled else self.post_progress
        return [
            (task_id, task_type, attempt, max_attempts or None, None, reporter)
            for task_id, attempt, max_attempts in work.members
        ]

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
        token = None
        self._started[work.id] = self._clock.seconds()
        try:
            if handler.blocking:
                function = partial(run_one, handler, self._max_result, self._context(work, pooled=True))
                self._hold(
                    work, self._run_blocking(_cpu_bound(handler), function, work.payload), handler, True
                )
                return
            token = enter(self._context(work, pooled=False))
            self._starting = work.id
            result = handler.run(work.payload)
            if isinstance(result, Deferred):
                self._hold(work, result, handler, False)
                return
        except BaseException as e:
            self._done(work, failed(e, handler, self._max_result))
            return
        finally:
            if token is not None:
                leave(token)
                self._starting = None
        self._done(work, (*outcome_of(result, self._max_result), None))

    def _hold(self, work: TaskWork, running: Deferred[Any], handler: ITaskHandler, pooled: bool) -> None:
        """
        A task that finishes later holds its slot until then.  ``pooled``: the
        Deferred fires with ``run_one``'s outcome, else with the handler's result.
        """
        self._running += 1
        self._pending[work.id] = running
        running.addBoth(self._finished, work, handler, pooled)

    def _finished(self, outcome: object, work: TaskWork, handler: ITaskHandler, pooled: bool) -> None:
        self._running -= 1
        self._pending.pop(work.id, None)
        if self._stopped:
            return
        if work.id in self._cancelled:
            self._cancelled.discard(work.id)
            self._forget(work.id)
        elif isinstance(outcome, Failure):
            self._done(work, failed(outcome.value, handler, self._max_result))
        elif pooled:
            self._done(work, cast(Done, outcome))
        else:
            self._done(work, (*outcome_of(outcome, self._max_result), None))
        self._start_waiting()
        if self._on_idle is not None:
            self._maybe_idle()

    def _done(self, work: TaskWork, done: Done) -> None:
        if self._progress:
            self._progress.pop(work.id, None)
        counters = self.stats.counters(work.type)
        started = self._started.pop(work.id, None)
        if started is not None:
            counters.run.observe(self._clock.seconds() - started)
        status = done[0]
        if status == STATUS_OK:
            counters.succeeded += 1
        else:
            if status == STATUS_RETRY:
                counters.retried += 1
            else:
                counters.failed += 1
            self._log_outcome(work.type, f"task {work.id}", done)
        self._report(work.id, status, done[1])

    def _log_outcome(self, task_type: str, what: str, done: Done) -> None:
        status, value, trace = done
        if status == STATUS_OK:
            return
        if status == STATUS_RETRY:
            self.log.info("{what} ({task_type}) asked for a retry", what=what, task_type=task_type)
        elif trace is not None:
            self.log.error(
                "{what} ({task_type}) failed: {reason}\n{traceback}",
                what=what,
                task_type=task_type,
                reason=failure_summary(value),
                traceback=trace,
            )

    # -- chunks --------------------------------------------------------------

    def _run_chunk(self, work: ChunkWork, handler: ITaskHandler) -> None:
        self._running += 1
        self._started[work.id] = self._clock.seconds()
        if work.members is not None:
            self._groups[work.id] = work.members
            self._group_members = None
        try:
            if handler.blocking:
                function = partial(
                    run_items, handler, self._max_result, self._item_contexts(work, pooled=True)
                )
                running = self._run_blocking(_cpu_bound(handler), function, work.payloads)
            else:
                running = None
        except BaseException as e:
            done = failed(e, handler, self._max_result)
            self._chunk_finished([done] * len(work.payloads), work, resumed=False)
            return
        if running is None:
            self._continue_chunk(work, handler, self._item_contexts(work, pooled=False), 0, [], False)
            return
        self._pending[work.id] = running
        running.addBoth(self._chunk_finished, work, handler)

    def _continue_chunk(
        self,
        work: ChunkWork,
        handler: ITaskHandler,
        contexts: list[ContextSpec],
        position: int,
        outcomes: list[Done],
        resumed: bool,
    ) -> None:
        """Run items inline until one returns a Deferred (then resume when it fires) or all are done."""
        max_result = self._max_result
        payloads = work.payloads
        run = handler.run
        # The hot loop of quick tasks (a group of sha256 digests, say): the
        # context variable's own methods, and bytes results taken as they are.
        set_context = CURRENT.set
        reset_context = CURRENT.reset
        while position < len(payloads):
            if self._stopped or work.id in self._cancelled:
                break
            token = set_context(contexts[position])
            try:
                result = run(payloads[position])
            except BaseException as e:
                outcomes.append(failed(e, handler, max_result))
                position += 1
                continue
            finally:
                reset_context(token)
            if type(result) is bytes and len(result) <= max_result:
                outcomes.append((STATUS_OK, result, None))
            elif isinstance(result, Deferred):
                self._pending[work.id] = result
                result.addBoth(self._chunk_item_done, work, handler, contexts, position, outcomes)
                return
            else:
                outcomes.append((*outcome_of(result, max_result), None))
            position += 1
        self._chunk_finished(outcomes, work, handler, resumed)

    def _chunk_item_done(
        self,
        result: object,
        work: ChunkWork,
        handler: ITaskHandler,
        contexts: list[ContextSpec],
        position: int,
        outcomes: list[Done],
    ) -> None:
        self._pending.pop(work.id, None)
        if isinstance(result, Failure):
            outcomes.append(failed(result.value, handler, self._max_result))
        else:
            outcomes.append((*outcome_of(result, self._max_result), None))
        self._continue_chunk(work, handler, contexts, position + 1, outcomes, resumed=True)

    def _chunk_finished(
        self, outcomes: object, work: ChunkWork, handler: object = None, resumed: bool = True
    ) -> None:
        self._running -= 1
        self._pending.pop(work.id, None)
        if work.members is not None:
            self._groups.pop(work.id, None)
            self._group_members = None
            if self._progress:
                for task_id, _, _ in work.members:
                    self._progress.pop(task_id, None)
        if self._stopped:
            return
        if work.id in self._cancelled:
            self._cancelled.discard(work.id)
            self._started.pop(work.id, None)
        else:
            if isinstance(outcomes, Failure):  # the pool itself failed
                done = failed(outcomes.value, handler, self._max_result)
                outcomes = [done] * len(work.payloads)
            answers: Outcomes = []
            members = work.members
            counters = self.stats.counters(work.type)
            started = self._started.pop(work.id, None)
            if started is not None:
                counters.run.observe(self._clock.seconds() - started)
            succeeded = 0
            for index, done in enumerate(cast(list[Done], outcomes)):
                status = done[0]
                if status == STATUS_OK:
                    succeeded += 1
                else:
                    if status == STATUS_RETRY:
                        counters.retried += 1
                    else:
                        counters.failed += 1
                    what = f"task {members[index][0]}" if members else f"item {index} of job chunk {work.id}"
                    self._log_outcome(work.type, what, done)
                answers.append((status, done[1]))
            counters.succeeded += succeeded
            self._report_chunk(work.id, answers)
        if resumed:
            self._start_waiting()
        if self._on_idle is not None:
            self._maybe_idle()


def _cpu_bound(handler: ITaskHandler) -> bool:
    return bool(getattr(handler, "cpu_bound", False))
