"""
What a task knows about itself while it runs: ``taskmesh.current_task()``
and ``taskmesh.report_progress()``.

The worker core sets a ``TaskContext`` in a context variable around every
handler call: in the reactor (plain functions, and ``async def`` ones, whose
coroutine keeps the context it was started in), in a pool thread, or in a
pool process.  Progress travels from wherever the task runs to the worker's
connection, coalesced so that a task reporting in a tight loop costs a few
messages a second, not one per call:

- in the reactor, straight to the worker core, which sends the latest
  progress of each task at most every ``PROGRESS_INTERVAL`` seconds;
- from a pool thread, through ``reactor.callFromThread``, with at most one
  hop in flight per task (the hop carries the latest value when it lands);
- from a pool process, into a queue the worker service drains, sent by a
  small thread in the process at most every ``PROGRESS_INTERVAL`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from taskmesh.codec import bounded, safe_text
from taskmesh.errors import TaskProgress, check_progress

#: Seconds between two progress messages of one task, at the least.
PROGRESS_INTERVAL = 0.2
#: A progress note longer than this (in characters) is cut.
MAX_PROGRESS_NOTE = 200

#: reporter(task id, done, total (0: unknown), note): hands progress on.
Reporter = Callable[[int, float, float, str], None]


class TaskContext:
    """
    The task that is running: what ``taskmesh.current_task()`` returns inside
    one.  (A plain class with slots rather than a frozen dataclass: one is
    made for every task a worker runs, and this costs a fifth as much.)
    """

    __slots__ = ("_reporter", "attempt", "deadline", "id", "max_attempts", "type")

    def __init__(
        self,
        id: int | None,
        type: str,
        attempt: int = 1,
        max_attempts: int | None = None,
        deadline: float | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        #: The task's id; None for an item of a map (items have indexes, not ids).
        self.id = id
        #: The task type: a task function's name, or a handler's.
        self.type = type
        #: This attempt's number, from 1: attempts that failed (raised Retry,
        #: timed out, or raised with retry_on_error) before this one, plus one.
        self.attempt = attempt
        #: Attempts the task may make in all; None when the worker was not told.
        self.max_attempts = max_attempts
        #: When this attempt times out, in ``time.time()`` seconds; None: no timeout.
        self.deadline = deadline
        self._reporter = reporter

    def __repr__(self) -> str:
        return (
            f"TaskContext(id={self.id!r}, type={self.type!r}, attempt={self.attempt}, "
            f"max_attempts={self.max_attempts!r}, deadline={self.deadline!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            TaskContext,
            (self.id, self.type, self.attempt, self.max_attempts, self.deadline, self._reporter),
        )

    @property
    def last_attempt(self) -> bool:
        """Whether a failure now fails the task (no attempt is left after this one)."""
        return self.max_attempts is not None and self.attempt >= self.max_attempts

    def time_left(self) -> float | None:
        """Seconds until this attempt times out (negative once past), or None without a timeout."""
        return None if self.deadline is None else self.deadline - time.time()

    def report_progress(self, done: float, total: float | None = None, note: str = "") -> None:
        """
        Tell the scheduler how far the task has come: ``taskmesh result`` and
        ``taskmesh status`` show the latest report while the task runs (a
        total of 0 reads as unknown).  Cheap to call often: reports are
        coalesced, a few a second at the most.  Within a map, a no-op.
        """
        progress = check_progress(done, total, note)
        if self.id is None or self._reporter is None:
            return
        self._reporter(
            self.id,
            progress.done,
            progress.total or 0.0,
            bounded(safe_text(progress.note), MAX_PROGRESS_NOTE),
        )


#: What the worker core sets for each task: the TaskContext's arguments, as
#: a tuple.  A worker runs tens of thousands of tasks a second, most of which
#: never ask who they are: the TaskContext is made only when one does.
ContextSpec = tuple[int | None, str, int, int | None, float | None, Reporter | None]

_current: ContextVar[ContextSpec | None] = ContextVar("taskmesh_current_task", default=None)
#: The context variable itself, for the worker core's hot loop.
CURRENT = _current


def current_task() -> TaskContext | None:
    """The task running in this context (thread, coroutine, process), or None outside any task."""
    spec = _current.get()
    return None if spec is None else TaskContext(*spec)


def report_progress(done: float, total: float | None = None, note: str = "") -> None:
    """``current_task().report_progress(...)``; outside a task (a function called directly), a no-op."""
    spec = _current.get()
    if spec is None:
        check_progress(done, total, note)
        return
    TaskContext(*spec).report_progress(done, total, note)


def enter(spec: ContextSpec) -> Any:
    """Make ``spec``'s task the current one; returns the token that ``leave`` takes."""
    return _current.set(spec)


def leave(token: Any) -> None:
    _current.reset(token)


class ThreadReporter:
    """
    Progress from pool threads to the reactor: the latest report of each task
    waits in here, and at most one ``call_from_thread`` hop is in flight for
    them all, so tasks that report in a loop cannot flood the reactor.
    Pickled into a pool process, it becomes that process's reporter
    (``child_reporter``).
    """

    def __init__(self, call_from_thread: Callable[[Callable[[], None]], None], post: Reporter) -> None:
        self._call_from_thread = call_from_thread
        self._post = post
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[int, float, float, str]] = {}
        self._scheduled = False

    def __call__(self, task_id: int, done: float, total: float, note: str) -> None:
        with self._lock:
            self._latest[task_id] = (task_id, done, total, note)
            if self._scheduled:
                return
            self._scheduled = True
        self._call_from_thread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            latest = list(self._latest.values())
            self._latest.clear()
            self._scheduled = False
        for record in latest:
            self._post(*record)

    def __reduce__(self) -> tuple[Any, ...]:
        return (child_reporter, ())


# -- in a pool process ----------------------------------------------------------


class ChildOutbox:
    """
    A pool process's progress, batched: the latest report of each task,
    put into the worker's queue by a daemon thread at most every
    PROGRESS_INTERVAL seconds (started at the first report).
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[int, float, float, str]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, task_id: int, done: float, total: float, note: str) -> None:
        with self._lock:
            self._latest[task_id] = (task_id, done, total, note)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskmesh-progress", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                records = list(self._latest.values())
                self._latest.clear()
            if records:
                self._queue.put(records)
            time.sleep(PROGRESS_INTERVAL)


_child_outbox: ChildOutbox | None = None


def install_child_outbox(queue: Any) -> None:
    """The process pool's initializer: this process's progress goes into ``queue``."""
    global _child_outbox
    _child_outbox = ChildOutbox(queue)


def _no_reporter(task_id: int, done: float, total: float, note: str) -> None:
    """Progress in a process that has nowhere to send it."""


def child_reporter() -> Reporter:
    """The reporter of this process: its outbox in a pool process, a no-op elsewhere."""
    return _child_outbox if _child_outbox is not None else _no_reporter


__all__ = [
    "PROGRESS_INTERVAL",
    "TaskContext",
    "TaskProgress",
    "current_task",
    "report_progress",
]
