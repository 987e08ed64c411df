"""
The scheduler core: a sans-I/O state machine.

It owns the task table, the queue, the connected workers and their leases,
and one Deferred per task that fires exactly once.  Every scheduling decision
(assign, requeue, retry, time out, fail, cancel) is made here and nowhere
else.  It does no I/O of its own: it hands assignments to an
``IWorkerChannel`` that a protocol implements, writes through an
``ITaskStore``, and takes time from the ``IReactorTime`` it is given, never
the global reactor, so tests drive it with ``twisted.internet.task.Clock``.

Durability order: a new task is written to the store before its submission
is acknowledged (``after_commit``), and an outcome is written before the
task's Deferred fires (or ``on_outcome`` is told it, for a task marked with
``notify``: how the protocols wait, with no Deferred per task).  The store
is committed once per reactor turn that wrote anything (group commit).

When a commit fails (disk full, another process holding the lock, a file
made read-only), nothing is acknowledged or reported: the store keeps the
writes, the core keeps their waiters, and the commit is retried with
backoff until it succeeds.  That is the *degraded* mode, and it is visible
(``stats()["store"]``, one log line per episode and one when it ends).
Submissions whose commit has not succeeded within ``Policy.store_grace``
seconds of the first failure are refused with the reason ("store
unavailable: database or disk is full") and their tasks withdrawn, so that
no client hangs on a store that may stay full for hours; from then until
the store commits again, new submissions are refused at once.  Results
already promised are held back, never dropped: their clients keep waiting.

A store that commits in its own thread (``IBackgroundCommit``: PostgreSQL)
is given each group commit with ``begin_commit`` instead: the core keeps
serving while it is in flight, and answers what was promised before it
began when it lands; what came since waits for the next one, begun at that
landing.  A failed landing is a failed commit, as above.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from taskmesh._version import __version__
from taskmesh.codec import add_note, failure_summary
from taskmesh.core.chunking import MAX_CHUNK, ChunkSizer
from taskmesh.core.logsummary import RepeatedEvents
from taskmesh.core.schedules import (
    MAX_SCHEDULES,
    ScheduleError,
    check_name,
    check_spec,
    first_due,
    latest_missed,
    next_after,
)
from taskmesh.core.taskqueue import TaskQueue
from taskmesh.core.tasks import Chunk, Group, Job, JobReport, Lease, Queued, Task
from taskmesh.core.timings import BUCKETS, COMMIT_BUCKETS, Histogram, TypeCounters
from taskmesh.errors import StoreUnavailable, TaskCancelled, TaskFailed
from taskmesh.store.interface import (
    IBackgroundCommit,
    ITaskStore,
    Outcome,
    ScheduleRecord,
    State,
    StoredTask,
    TaskSummary,
)
from taskmesh.store.memory import MemoryStore, due_time
from taskmesh.wire import (
    CHUNK_ITEM_OVERHEAD,
    DEFAULT_OPTIONS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_RETRY,
    ProgressRecord,
    TaskOptions,
    chunk_record_overhead,
    split_retry,
)

#: Running tasks whose progress ``stats()`` lists, at the most.
PROGRESS_LISTED = 100
#: Tasks one ``retry(every_failed=True)`` reopens at the most, and store
#: pages (of LIST_SCAN_ROWS rows each) it reads to find them: a bounded
#: turn of the reactor; the answer says when more remain.
RETRY_BATCH = 10000
RETRY_PAGES = 10
#: The task list's state filter, by name (QUEUED: the store's unfinished).
_LISTED = {
    "unfinished": State.QUEUED,
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
}

__all__ = [
    "IWorkerChannel",
    "Job",
    "Policy",
    "Scheduler",
    "Task",
    "TaskCancelled",
    "TaskFailed",
    "WorkerState",
]


@dataclass(frozen=True)
class Policy:
    """Every rule's number, with its default; each is a scheduler option."""

    #: Tasks a worker may hold beyond its slots, so it never idles waiting
    #: for the next assignment to cross the network.  Small, so that slow
    #: tasks are not hoarded by one worker while another sits idle.
    prefetch: int = 2
    #: Times a task may lose its worker (connection dropped, heartbeats
    #: stopped) before it is failed as poison: it may be what kills them.
    max_losses: int = 3
    #: Attempts that may fail (time out, or raise when retries on error were
    #: asked for) before the task fails; a task may ask for another number.
    max_attempts: int = 3
    #: First pause before retrying a failed attempt; doubles each time.
    retry_delay: float = 1.0
    retry_max_delay: float = 60.0
    #: Workers and scheduler exchange heartbeats this often (seconds); a
    #: worker silent for ``heartbeat_tolerance`` intervals loses its leases.
    heartbeat_interval: float = 2.0
    heartbeat_tolerance: int = 3
    #: Outcomes are kept this long (seconds) for retrieval by id.
    result_ttl: float = 24 * 3600.0
    #: Queued tasks beyond which the connections that submit are paused until
    #: the queue is below 90 % of it (slowed, not dropped).
    max_queued: int = 1_000_000
    #: Payload bytes in one chunk of a job, at the most (it must fit a frame).
    max_chunk_bytes: int = 1024 * 1024
    #: Seconds a submission may wait for a store that cannot commit before
    #: it is refused ("store unavailable: ..."), counted from the first
    #: failed commit; a lock held for a moment costs nobody a refusal.
    store_grace: float = 1.0
    #: First pause before retrying a failed commit; doubles each time, up to
    #: the max, until the store commits again.
    store_retry_delay: float = 0.05
    store_retry_max_delay: float = 2.0
    #: Delayed tasks due within this many seconds are held in memory (with a
    #: timer each); later ones stay in the store until the window reaches
    #: them, so a million tasks due tomorrow cost the scheduler nothing today.
    horizon: float = 60.0

    def __post_init__(self) -> None:
        checks = {
            # The welcome carries it as a u16.
            "prefetch": 0 <= self.prefetch <= 0xFFFF,
            "max_losses": self.max_losses >= 1,
            "max_attempts": self.max_attempts >= 1,
            "retry_delay": self.retry_delay >= 0,
            "retry_max_delay": self.retry_max_delay >= self.retry_delay,
            # The welcome carries these as u32 milliseconds and a u16.
            "heartbeat_interval": 0.001 <= self.heartbeat_interval <= 0xFFFFFFFF / 1000,
            "heartbeat_tolerance": 1 <= self.heartbeat_tolerance <= 0xFFFF,
            "result_ttl": self.result_ttl > 0,
            "max_queued": self.max_queued >= 1,
            "max_chunk_bytes": self.max_chunk_bytes >= 1,
            "store_grace": self.store_grace >= 0,
            "store_retry_delay": self.store_retry_delay > 0,
            "store_retry_max_delay": self.store_retry_max_delay >= self.store_retry_delay,
            "horizon": 1.0 <= self.horizon <= 24 * 3600.0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"invalid scheduler policy: {', '.join(wrong)}")


class IWorkerChannel(Interface):
    """How the core reaches one connected worker (a protocol provides it)."""

    def assign(
        task_id: int, task_type: str, payload: bytes, attempt: int, max_attempts: int, timeout: float | None
    ) -> None:
        """
        Send this task to the worker (the channel may batch the frames), with
        what the task may know about itself: this attempt's number (from 1),
        the attempts it may make, and its timeout in seconds (or None).
        """

    def assign_group(group_id: int, task_type: str, members: list[tuple[int, int, int, bytes]]) -> None:
        """
        Send these queued tasks to the worker as one group, to run one after
        another in one slot: (task id, attempt, max attempts, payload) each.
        """

    def assign_chunk(chunk_id: int, task_type: str, payloads: list[bytes]) -> None:
        """Send these items to the worker as one chunk, to run one after another."""

    def cancel(task_id: int) -> None:
        """Tell the worker to stop this task; its lease is already gone."""

    def heartbeat() -> None:
        """Send a heartbeat."""

    def drop(reason: str) -> None:
        """Close the connection: the core has given up on this worker."""


class WorkerState:
    """The core's view of one connected worker: what it runs and what it holds."""

    __slots__ = (
        "channel",
        "name",
        "slots",
        "task_types",
        "capacity",
        "leases",
        "last_seen",
        "joined_at",
        "done",
        "failed",
        "draining",
    )

    def __init__(
        self,
        channel: IWorkerChannel,
        name: str,
        slots: int,
        task_types: frozenset[str],
        prefetch: int,
        now: float,
    ) -> None:
        self.channel = channel
        self.name = name
        self.slots = slots
        self.task_types = task_types
        #: Never more than this many tasks leased to the worker at once.
        self.capacity = slots + prefetch
        #: Tasks this worker holds, by id.
        self.leases: dict[int, Lease] = {}
        self.last_seen = now
        self.joined_at = now
        #: Outcomes this worker reported (a chunk's or group's items each count): for monitoring.
        self.done = 0
        self.failed = 0
        #: The worker is shutting down (warm): it gets nothing more.
        self.draining = False


def _consume(failure: Failure) -> None:
    """End of every failed task's chain: the failure has been delivered."""


#: Outcomes pruned in one reactor turn at the most: a round that has a day's
#: worth to forget goes on over the following turns instead of holding the
#: reactor for seconds.
PRUNE_BATCH = 2000

#: Seconds after an outage during which the store failing again for the same
#: reason is the same trouble coming back (a disk so full that small commits
#: pass and larger ones fail), logged as one summary line a minute instead
#: of three lines each time.
STORE_RELAPSE_WINDOW = 60.0

#: Delayed tasks read from the store in one reactor turn, at the most.
LOAD_BATCH = 1000

#: Schedules ``stats()`` lists, at the most.
SCHEDULES_LISTED = 100


def tick_key(name: str, due: float) -> str:
    """A schedule's tick's deduplication key: the schedule and the due time (ms): at most 153 bytes."""
    return f"schedule:{name}@{round(due * 1000)}"


#: What waits for a commit: (function, args, refuse or None).  ``refuse`` is
#: set for acknowledgements, which may be refused when the store stays down.
_Waiter = tuple[Callable[..., object], tuple[Any, ...], Callable[..., object] | None]
#: A background commit in flight: the outcomes and waiters it answers when it
#: lands, and the first task id it does not cover.
#: a background commit: what it answers when it lands, the id mark it makes
#: durable, and the far tasks and ticks written before it began
_Flight = tuple[list[tuple[Task, bytes]], list[_Waiter], int, tuple[int, ...], tuple[int, ...]]


class Scheduler:
    """Decides which worker runs which task, and when a task has failed."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: ITaskStore | None = None,
        policy: Policy = Policy(),
    ) -> None:
        self._clock = clock
        self._store: ITaskStore = store if store is not None else MemoryStore()
        self.policy = policy
        self._queue: TaskQueue[Queued] = TaskQueue()
        self._tasks: dict[int, Task] = {}
        self._keys: dict[str, int] = {}
        self._workers: list[WorkerState] = []
        self._jobs: dict[int, Job] = {}
        #: Task type -> how many connected workers run it.
        self._served: dict[str, int] = {}
        #: Per task type: how many queued single tasks travel as one chunk.
        self._group_sizes: dict[str, ChunkSizer] = {}
        self._next_id = self._store.next_id()
        self._waiting_retry = 0
        # group commit
        self._commit_call: IDelayedCall | None = None
        self._finished: list[tuple[Task, bytes]] = []
        self._after_commit: list[_Waiter] = []
        #: Ids only grow: every task with an id from this one on was added
        #: after the last successful commit (and is withdrawn if refused).
        self._committed_up_to = self._next_id
        #: The store, when it commits in its own thread (see IBackgroundCommit).
        self._background: Any = store if IBackgroundCommit.providedBy(store) else None
        self._in_flight: _Flight | None = None
        self._flight_began = 0.0
        #: The grace time ended while a commit was in flight: refuse if it fails.
        self._refuse_after_flight = False
        # store health: see the module's docstring
        self._store_error: str | None = None
        self._store_failed_at = 0.0
        self._store_failures = 0
        self._store_retry_delay = policy.store_retry_delay
        self._refusing = False
        self._grace_call: IDelayedCall | None = None
        self._prune_call: IDelayedCall | None = None
        self._stopping = False
        #: Commits that failed since start, over every episode, and the last one's reason and time.
        self.failed_commits = 0
        #: Seconds each commit took (successful or not), one observation per
        #: commit (a reactor turn's writes), not per task: for /metrics.
        self.commit_times = Histogram(COMMIT_BUCKETS)
        self._last_failure: tuple[str, float] | None = None
        # relapses: see STORE_RELAPSE_WINDOW
        self._last_store_error: str | None = None
        self._quiet_until = 0.0
        self._quiet_episode = False
        self._relapses = 0
        self._relapse_logged_at = float("-inf")
        # flow control
        self._paused = False
        #: Called with True when the queue goes beyond its bound, False when it has room again.
        self.on_queue_full: Callable[[bool], None] = lambda full: None
        #: Told (task id, final state, value) once the outcome of a task
        #: marked with ``notify`` is durable.  One call per task instead of
        #: a Deferred and its callbacks: the hot path of every submission a
        #: client waits for.  A failure's value is its reason (UTF-8).
        self.on_outcome: Callable[[int, State, bytes], None] | None = None
        self._loops: list[LoopingCall] = []
        #: What a peer can repeat at will is summarised, not logged each time.
        self._repeated = RepeatedEvents(self.log, clock)
        self.counts = {State.SUCCEEDED: 0, State.FAILED: 0, State.CANCELLED: 0}
        # Monitoring counters (read by the web layer at scrape time): one
        # dict increment per task, no work per request.
        self.started_at = clock.seconds()
        #: Task type -> tasks submitted (map items not included: see job_items).
        self.submitted_by_type: dict[str, int] = {}
        #: Task type -> finished counts by State (see ``finished_by_type``)
        #: and its histograms, the same objects as in run_times and queue_waits.
        self._by_type: dict[str, TypeCounters] = {}
        #: Map items answered: [succeeded, failed] (a job's items are no tasks of their own).
        self.job_items = [0, 0]
        #: Task type -> seconds from lease to outcome, and from submission to (last) lease.
        self.run_times: dict[str, Histogram] = {}
        self.queue_waits: dict[str, Histogram] = {}
        # Delayed tasks (see Policy.horizon): every one due before
        # ``_window`` is held in ``_tasks``, with a timer; later ones are read
        # from the store, in (due time, id) order from ``_cursor``, when the
        # window moves on.
        self._window = -1.0
        self._cursor: tuple[float, int] = (-1.0, 0)
        self._loading: IDelayedCall | None = None
        #: Delayed tasks not yet due, in memory or not (counted at start, then kept).
        self.scheduled_count = 0
        #: Delayed tasks beyond the window, added since the last commit: held
        #: only until they are durable (or withdrawn), by id.
        self._far: dict[int, Task] = {}
        #: Periodic schedules by name, with the timer of each one's next tick.
        self._schedules: dict[str, ScheduleRecord] = {}
        self._tick_calls: dict[str, IDelayedCall] = {}
        #: A tick's task id -> the schedule's record before the tick (to put back if withdrawn).
        self._ticks: dict[int, ScheduleRecord] = {}
        #: The latest progress of running tasks that reported some: task id ->
        #: (done, total, note).  In memory only: after a restart the task runs
        #: again from the start, and reports again.
        self._progress: dict[int, tuple[float, float, str]] = {}

    # -- life ----------------------------------------------------------------

    def start(self) -> int:
        """
        Take back every unfinished task from the store (queued or running
        when the last scheduler stopped: both are queued again), and start
        the heartbeat and pruning rounds.  Returns how many were recovered.
        """
        recovered = 0
        for stored in self._store.unfinished():
            options = TaskOptions(
                priority=stored.priority,
                timeout=stored.timeout,
                max_attempts=stored.max_attempts,
                key=stored.key,
                retry_on_error=stored.retry_on_error,
            )
            task = Task(stored.id, stored.type, stored.payload, options, stored.submitted_at)
            task.attempts = stored.attempts
            task.losses = stored.losses
            self._tasks[task.id] = task
            if stored.key is not None:
                self._keys[stored.key] = task.id
            self._queue.push(task)
            recovered += 1
        self._next_id = self._store.next_id()
        if recovered:
            self.log.info("recovered {count} unfinished tasks from the store", count=recovered)
        now = self._clock.seconds()
        self.scheduled_count = self._store.count_scheduled(now)
        self._start_schedules(now)
        for interval, work in (
            (self.policy.heartbeat_interval, self._check_workers),
            (min(60.0, self.policy.result_ttl), self._prune),
            (self.policy.horizon / 2, self._load_due),
        ):
            loop = LoopingCall(work)
            loop.clock = self._clock
            loop.start(interval, now=False)
            self._loops.append(loop)
        self._load_due()
        return recovered

    def stop(self) -> None:
        """Stop the rounds and make everything written so far durable (one last try)."""
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        self._repeated.stop()
        for call in (self._commit_call, self._grace_call, self._prune_call, self._loading):
            if call is not None and call.active():
                call.cancel()
        for call in self._tick_calls.values():
            if call.active():
                call.cancel()
        self._tick_calls.clear()
        self._grace_call = self._prune_call = self._loading = None
        self._commit()
        if self._store_error is not None:
            self.log.error(
                "stopping with the store still unavailable ({reason}): {submissions} submissions "
                "and {results} results were never acknowledged or reported",
                reason=self._store_error,
                submissions=len(self._uncommitted()),
                results=len(self._finished),
            )

    def fit_chunks_to(self, max_bytes: int) -> None:
        """Keep chunks (of jobs, and groups of tasks) within this many bytes."""
        if max_bytes < self.policy.max_chunk_bytes:
            self.policy = replace(self.policy, max_chunk_bytes=max_bytes)

    # -- what clients ask ----------------------------------------------------

    def submit(
        self, task_type: str, payload: bytes, options: TaskOptions = DEFAULT_OPTIONS
    ) -> tuple[int, bool]:
        """
        Take responsibility for a task; returns ``(task id, duplicate)``.  A
        submission whose key names an existing task (live or finished and
        not yet pruned) returns that task's id with ``duplicate`` true and
        queues nothing.  Watch the id with ``watch``; acknowledge only in
        ``after_commit_or_refuse``.  Raises ``StoreUnavailable`` while the
        store cannot commit and the grace time is over: nothing is queued.
        """
        if self._refusing:
            raise StoreUnavailable(self._store_error or "unknown error")
        key = options.key
        if key is not None:
            existing = self._keys.get(key)
            if existing is None:
                existing = self._store.task_for_key(key)
            if existing is not None:
                return existing, True
        task = Task(self._next_id, task_type, payload, options, self._clock.seconds())
        self._next_id += 1
        self._tasks[task.id] = task
        by_type = self.submitted_by_type
        by_type[task_type] = by_type.get(task_type, 0) + 1
        if key is not None:
            self._keys[key] = task.id
        self._store.add(task)
        if options is not DEFAULT_OPTIONS and (options.delay is not None or options.at is not None):
            self._submit_delayed(task)
            return task.id, False
        # Assign first, commit after: the worker can run the task while the
        # store commits it (only the acknowledgement waits for the commit).
        self._enqueue(task)
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)
        if not self._paused and len(self._queue) > self.policy.max_queued:
            self._paused = True
            self.log.warn(
                "{count} tasks queued: pausing submitters until there is room",
                count=len(self._queue),
            )
            self.on_queue_full(True)
        return task.id, False

    def after_commit(self, function: Callable[..., object], *args: Any) -> None:
        """
        Call ``function(*args)`` once everything written so far is durable
        (however long the store takes to be able to commit again).
        """
        self._after_commit.append((function, args, None))
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    def after_commit_or_refuse(
        self, function: Callable[..., object], refuse: Callable[..., object], *args: Any
    ) -> None:
        """
        For acknowledgements: call ``function(*args)`` once everything
        written so far is durable, or ``refuse(reason, *args)`` if the store
        cannot commit within the grace time (then every task submitted since
        the last commit has been withdrawn: nothing of it will run or be
        stored).  While the store refuses, ``refuse`` is called at once.
        """
        if self._refusing:
            refuse(str(StoreUnavailable(self._store_error or "unknown error")), *args)
            return
        self._after_commit.append((function, args, refuse))
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    @property
    def store_error(self) -> str | None:
        """Why the store cannot commit now, or None while it can."""
        return self._store_error

    def watch(self, task_id: int) -> Deferred[bytes] | Outcome | None:
        """
        The Deferred of a live task (callbacks added to it must pass the
        result or failure on), the outcome of a finished one, or None for an
        id never used or pruned.
        """
        task = self._tasks.get(task_id) or self._load_scheduled(task_id)
        if task is not None:
            return task.deferred
        return self._store.outcome(task_id)

    def notify(self, task_id: int) -> Task | Outcome | None:
        """
        Like ``watch``, without a Deferred: a live task is marked so that
        ``on_outcome`` is told its outcome once durable (the task is
        returned); a finished one's outcome, or None for an id never used
        or pruned, is returned for the caller to answer now.
        """
        task = self._tasks.get(task_id)
        if task is not None:
            task.watched = True
            return task
        return self._store.outcome(task_id)

    def task(self, task_id: int) -> Task | None:
        """A live (unfinished, or finished but not yet durable) task, or None."""
        return self._tasks.get(task_id)

    def state_of(self, task_id: int) -> State | None:
        """
        A live task's state as a client may be told it, or None: an outcome
        is told only once durable, so a task whose outcome the store has not
        committed yet is still RUNNING.
        """
        task = self._tasks.get(task_id) or self._load_scheduled(task_id)
        if task is None:
            return None
        return State.RUNNING if task.state.finished else task.state

    def due_of(self, task_id: int) -> float | None:
        """A live task's due time (seconds since the epoch), or None: it had none."""
        task = self._tasks.get(task_id)
        return None if task is None else due_time(task)

    def cancel(self, task_id: int, reason: str = "cancelled") -> bool:
        """
        Cancel a queued task, or a running one (its worker is told to stop
        and its late result, if any, is dropped).  False if the task is
        unknown or already finished.
        """
        task = self._tasks.get(task_id) or self._load_scheduled(task_id)
        if task is None or task.state.finished:
            return False
        worker = task.worker
        if worker is not None:
            self._release(task)
            worker.channel.cancel(task_id)
        elif task.state is State.SCHEDULED:
            self.scheduled_count -= 1
        elif task.timer is not None:
            self._waiting_retry -= 1
        else:
            self._queue.remove(task)
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        self._finish(task, State.CANCELLED, reason.encode("utf-8"))
        if worker is not None:
            self._fill(worker)
        else:
            # The queue may drain by cancels alone: paused submitters resume then too.
            self._resume_if_room()
        return True

    # -- what operators ask ---------------------------------------------------

    def list_tasks(
        self, state: str | None, task_type: str | None, limit: int, before_id: int | None
    ) -> dict[str, Any]:
        """
        A page of the store's committed tasks, newest first (``state``: one of
        LIST_STATES' names; None: all), unfinished ones with their live state
        from here, failed and cancelled ones with their reason's first line.
        Raises ``StoreUnavailable`` if the store cannot be read.
        """
        wanted = None if state is None else _LISTED[state]
        rows, next_before = self._store.list_tasks(wanted, task_type, limit, before_id)
        listed = []
        for row in rows:
            shown = self.listed_state(row)
            reason = None
            if row.finished_at is not None and shown is not State.SUCCEEDED:
                outcome = self._store.outcome(row.id)
                if outcome is not None:
                    reason = failure_summary(outcome.value).splitlines()[0][:200] if outcome.value else ""
            listed.append(
                {
                    "id": row.id,
                    "type": row.type,
                    "state": shown.name.lower(),
                    "attempts": row.attempts,
                    "losses": row.losses,
                    "key": row.key,
                    "submitted_at": row.submitted_at,
                    "finished_at": row.finished_at,
                    "reason": reason,
                }
            )
        return {"tasks": listed, "next_before": next_before}

    def listed_state(self, row: TaskSummary) -> State:
        """
        What a row of the store's task list is now: a finished task as
        stored; an unfinished one as held here (queued, running, ...), else
        scheduled if it waits in the store for its due time (beyond the
        horizon: read from the row, so that listing delayed tasks neither
        reads each one again nor holds it in memory), else queued.
        """
        if row.finished_at is not None:
            return row.state
        task = self._tasks.get(row.id)
        if task is not None:
            return State.RUNNING if task.state.finished else task.state
        return State.SCHEDULED if row.due_at is not None else State.QUEUED

    def retry(
        self, task_ids: list[int], every_failed: bool = False, task_type: str | None = None
    ) -> dict[str, Any]:
        """
        Run failed or cancelled tasks again under their ids, as submitted, with
        fresh attempts (``taskmesh retry``); with ``every_failed``, also every
        failed task (of ``task_type``) the store lists, up to RETRY_BATCH per
        call.  Returns ``{"retried": [...], "refused": [[id, reason]], "more":
        bool}``; answer it once committed (``after_commit``).  Raises
        ``StoreUnavailable`` while the store cannot commit or be read.
        """
        if self._store_error is not None:
            raise StoreUnavailable(self._store_error)
        wanted = list(dict.fromkeys(task_ids))
        more = False
        if every_failed:
            before: int | None = None
            for _ in range(RETRY_PAGES):
                room = RETRY_BATCH - len(wanted)
                if room <= 0:
                    more = True
                    break
                rows, before = self._store.list_tasks(State.FAILED, task_type, room, before)
                wanted.extend(row.id for row in rows if row.id not in self._tasks)
                if before is None:
                    break
            else:
                more = before is not None
        retried: list[int] = []
        refused: list[list[Any]] = []
        for task_id in dict.fromkeys(wanted):
            try:
                reason = self._reopen(task_id)
            except StoreUnavailable as e:  # this one could not be read: the others still go
                reason = str(e)
            if reason is None:
                retried.append(task_id)
            else:
                refused.append([task_id, reason])
        if retried:
            self.log.info(
                "retrying {count} tasks ({first}{rest})",
                count=len(retried),
                first=retried[0],
                rest=", ..." if len(retried) > 1 else "",
            )
            if self._commit_call is None:
                self._commit_call = self._clock.callLater(0, self._commit)
        return {"retried": retried, "refused": refused, "more": more}

    def _reopen(self, task_id: int) -> str | None:
        """Queue one finished task again under its id; None, or why not."""
        live = self._tasks.get(task_id)
        if live is not None:
            if live.state.finished:
                return f"task {task_id} has just finished and its outcome is not stored yet; try again"
            return f"task {task_id} is {live.state.name.lower()}: nothing to retry"
        stored = self._store.stored_task(task_id)
        if stored is None:
            return (
                f"no task {task_id} in the store (never submitted, or pruned after --result-ttl; "
                "a memory store keeps no finished task's payload)"
            )
        if stored.state is State.SUCCEEDED:
            return f"task {task_id} succeeded: nothing to retry"
        if not stored.state.finished:  # unfinished in the store and not here: cannot happen
            return f"task {task_id} is not finished"
        options = TaskOptions(
            priority=stored.priority,
            timeout=stored.timeout,
            max_attempts=stored.max_attempts,
            key=stored.key,
            retry_on_error=stored.retry_on_error,
        )
        task = Task(stored.id, stored.type, stored.payload, options, self._clock.seconds())
        self._tasks[task.id] = task
        if stored.key is not None:
            self._keys[stored.key] = task.id
        self._store.reopen(task.id)
        self._enqueue(task)
        return None

    def purge(self, task_type: str, reason: str = "purged") -> int:
        """
        Cancel every queued task of a type (waiting for a worker or to
        retry; running ones are left alone), with ``reason``: each waiter
        hears it, and ``retry`` can bring them back.  Returns how many; answer
        once committed (``after_commit``).
        """
        doomed = [
            task.id
            for task in self._tasks.values()
            if task.type == task_type and task.state is State.QUEUED and task.worker is None
        ]
        for task_id in doomed:
            self.cancel(task_id, reason)
        if doomed:
            self.log.info(
                "purged {count} queued {task_type} tasks ({reason})",
                count=len(doomed),
                task_type=task_type,
                reason=reason,
            )
        return len(doomed)

    def has_worker_for(self, task_type: str) -> bool:
        """Whether any connected worker runs this type (else the task waits)."""
        return task_type in self._served

    # -- delayed tasks -------------------------------------------------------

    def _submit_delayed(self, task: Task) -> None:
        """
        A new task with a due time: held (with a timer) if due within the
        window, else kept only until the store has it: the window reads it
        back when it comes near.  A delay of 0, or a time past, runs at once.
        """
        due = due_time(task)
        assert due is not None
        now = self._clock.seconds()
        if due <= now:
            self._enqueue(task)
        else:
            self.scheduled_count += 1
            if due < self._window:
                self._hold(task, due, now)
            else:
                del self._tasks[task.id]
                self._far[task.id] = task
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    def _hold(self, task: Task, due: float, now: float) -> None:
        """Keep a delayed task in memory until its due time (or run it now if due)."""
        self._tasks[task.id] = task
        if task.options.key is not None:
            self._keys[task.options.key] = task.id
        if due <= now:
            task.state = State.QUEUED
            self._enqueue(task)
            return
        task.state = State.SCHEDULED
        task.timer = self._clock.callLater(due - now, self._due, task)

    def _due(self, task: Task) -> None:
        """A delayed task's time has come: in line, like any other."""
        task.timer = None
        self.scheduled_count -= 1
        task.state = State.QUEUED
        self._enqueue(task)

    def _far_committed(self, ids: Iterable[int] | None = None) -> None:
        """
        Tasks beyond the window are durable (all of them, or these, which a
        background commit wrote): the store holds them now, not the core.
        """
        keys = self._keys
        far = self._far
        for task_id in list(far) if ids is None else ids:
            task = far.pop(task_id, None)
            if task is None:
                continue
            key = task.options.key
            if key is not None and keys.get(key) == task.id:
                del keys[key]

    def _task_from_store(self, stored: StoredTask) -> Task:
        options = TaskOptions(
            priority=stored.priority,
            timeout=stored.timeout,
            max_attempts=stored.max_attempts,
            key=stored.key,
            retry_on_error=stored.retry_on_error,
            at=stored.due_at,
        )
        task = Task(stored.id, stored.type, stored.payload, options, stored.submitted_at)
        task.attempts = stored.attempts
        task.losses = stored.losses
        return task

    def _load_scheduled(self, task_id: int) -> Task | None:
        """
        A delayed task the core does not hold (beyond the window), held now
        because someone asks for it (a query, a wait, a cancel); None if
        there is no such task.  Costs a store read only for ids not live.
        """
        if not self.scheduled_count:
            return None  # no delayed task waits anywhere: no store read for finished tasks' queries
        far = self._far.pop(task_id, None)
        if far is not None:
            due = due_time(far)
            assert due is not None
            self._hold(far, due, self._clock.seconds())
            return far
        try:
            stored = self._store.scheduled_task(task_id)
        except StoreUnavailable:
            return None
        if stored is None or stored.due_at is None:
            return None
        task = self._task_from_store(stored)
        self._hold(task, stored.due_at, self._clock.seconds())
        return task

    def _load_due(self) -> None:
        """A window round: hold every delayed task due before now + horizon (a batch per turn)."""
        if self._loading is None:
            self._window = max(self._window, self._clock.seconds() + self.policy.horizon)
            self._load_batch()

    def _load_batch(self) -> None:
        """
        Read the next batch of delayed tasks due before the window's end; the
        next batch next turn.  Tasks already held (submitted into the window,
        or asked for) are skipped.  A failed read ends this round only.
        """
        self._loading = None
        try:
            batch = self._store.due_tasks(self._window, self._cursor, LOAD_BATCH)
        except StoreUnavailable as e:
            self.log.warn(
                "reading delayed tasks failed: {reason}; the next round tries again", reason=e.reason
            )
            return
        now = self._clock.seconds()
        tasks = self._tasks
        for stored in batch:
            if stored.id in tasks or stored.id in self._far or stored.due_at is None:
                continue
            self._hold(self._task_from_store(stored), stored.due_at, now)
        if batch:
            last = batch[-1]
            assert last.due_at is not None
            self._cursor = (last.due_at, last.id)
        if len(batch) >= LOAD_BATCH and not self._stopping:
            self._loading = self._clock.callLater(0, self._load_batch)

    # -- periodic schedules --------------------------------------------------

    def _start_schedules(self, now: float) -> None:
        """
        Take back the store's schedules, and run or skip the ticks missed
        while no scheduler ran (each schedule's ``catch_up``): a missed tick
        runs once, as the latest one missed, never once per tick missed.
        """
        for record in self._store.schedules():
            self._schedules[record.name] = record
            if record.paused:
                continue
            if record.next_due <= now:
                latest = latest_missed(record.cron, record.every, record.tz, record.next_due, now)
                if record.catch_up:
                    self.log.info(
                        "schedule {name}: running its missed tick due {due:.3f} once",
                        name=record.name,
                        due=latest,
                    )
                    record = replace(record, next_due=latest)
                else:
                    following = next_after(record.cron, record.every, record.tz, latest)
                    self.log.info(
                        "schedule {name}: skipping ticks missed since {since:.3f}; next at {due:.3f}",
                        name=record.name,
                        since=record.next_due,
                        due=following,
                    )
                    record = replace(record, next_due=following)
                    self._store.save_schedule(record)
                self._schedules[record.name] = record
            self._arm(record, now)

    def declare_schedules(self, records: list[ScheduleRecord]) -> None:
        """
        Schedules from the scheduler's configuration (before ``start``): each
        replaces the stored definition of its name, keeping when it last
        ran; stored schedules from the configuration that it no longer
        declares are removed.
        """
        stored = {record.name: record for record in self._store.schedules()}
        declared = {record.name for record in records}
        for record in records:
            old = stored.get(record.name)
            if old is not None:
                same = (old.cron, old.every, old.tz) == (record.cron, record.every, record.tz)
                record = replace(
                    record,
                    last_due=old.last_due,
                    last_task=old.last_task,
                    next_due=old.next_due if same else record.next_due,
                )
            self._store.save_schedule(record)
        for name, old in stored.items():
            if old.source == "config" and name not in declared:
                self._store.remove_schedule(name)
        self._commit_now()

    def _commit_now(self) -> None:
        """Before start: make the configuration durable, or say why not."""
        while not self._store.commit():
            pass

    def _arm(self, record: ScheduleRecord, now: float) -> None:
        call = self._tick_calls.pop(record.name, None)
        if call is not None and call.active():
            call.cancel()
        if not record.paused and not self._stopping:
            self._tick_calls[record.name] = self._clock.callLater(
                max(0.0, record.next_due - now), self._tick, record.name
            )

    def _tick(self, name: str) -> None:
        """
        A schedule's tick is due: one task whose key is the schedule and the
        due time, and the schedule's record saying so, in the same commit.
        A tick whose key the store already has (written by a scheduler that
        stopped before it could save the record) is not enqueued again.
        """
        self._tick_calls.pop(name, None)
        record = self._schedules.get(name)
        if record is None or record.paused:
            return
        now = self._clock.seconds()
        due = record.next_due
        key = tick_key(name, due)
        try:
            existing = self._keys.get(key) or self._store.task_for_key(key)
        except StoreUnavailable as e:
            self.log.warn(
                "schedule {name}: cannot check its tick: {reason}; retrying", name=name, reason=e.reason
            )
            self._tick_calls[name] = self._clock.callLater(
                self.policy.store_retry_max_delay, self._tick, name
            )
            return
        if existing is None:
            options = TaskOptions(
                priority=record.priority,
                timeout=record.timeout,
                max_attempts=record.max_attempts,
                key=key,
                retry_on_error=record.retry_on_error,
                no_result=True,
                at=due,
            )
            task = Task(self._next_id, record.task_type, record.payload, options, now)
            self._next_id += 1
            self._tasks[task.id] = task
            self._keys[key] = task.id
            by_type = self.submitted_by_type
            by_type[task.type] = by_type.get(task.type, 0) + 1
            self._store.add(task)
            self._ticks.setdefault(task.id, record)
            self._enqueue(task)
            existing = task.id
        updated = replace(
            record,
            last_due=due,
            last_task=existing,
            next_due=next_after(record.cron, record.every, record.tz, due),
        )
        self._schedules[name] = updated
        self._store.save_schedule(updated)
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)
        self._arm(updated, now)

    def _untick(self, task_id: int) -> None:
        """A tick's task was withdrawn (the store could not commit it): the tick is due again."""
        if not self._ticks:
            return
        before = self._ticks.pop(task_id, None)
        if before is None or self._schedules.get(before.name) is None:
            return
        self._schedules[before.name] = before
        self._store.save_schedule(before)
        self._arm(before, self._clock.seconds())

    def add_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        """
        Create or replace a schedule (``next_due`` is computed here, from
        now); durable at the next commit (answer in ``after_commit``).
        Raises ScheduleError for a bad one.
        """
        check_name(record.name)
        check_spec(record.cron, record.every, record.tz)
        if record.name not in self._schedules and len(self._schedules) >= MAX_SCHEDULES:
            raise ScheduleError(f"a scheduler keeps at most {MAX_SCHEDULES} schedules")
        now = self._clock.seconds()
        old = self._schedules.get(record.name)
        record = replace(
            record,
            next_due=first_due(record.cron, record.every, record.tz, now),
            last_due=old.last_due if old else None,
            last_task=old.last_task if old else None,
        )
        self._set_schedule(record, now)
        return record

    def _set_schedule(self, record: ScheduleRecord, now: float) -> None:
        self._schedules[record.name] = record
        self._store.save_schedule(record)
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)
        self._arm(record, now)

    def remove_schedule(self, name: str) -> bool:
        """Forget a schedule (its ticks' tasks stay); False if there is none of that name."""
        if self._schedules.pop(name, None) is None:
            return False
        call = self._tick_calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()
        self._store.remove_schedule(name)
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)
        return True

    def pause_schedule(self, name: str, paused: bool = True) -> ScheduleRecord | None:
        """
        Pause (no ticks) or resume a schedule; None if there is none of that
        name.  Resuming skips the ticks due while it was paused: the next is
        the first one after now.
        """
        record = self._schedules.get(name)
        if record is None:
            return None
        now = self._clock.seconds()
        if not paused and record.paused:
            last = record.last_due if record.last_due is not None else now
            following = next_after(record.cron, record.every, record.tz, max(last, now))
            record = replace(record, paused=False, next_due=following)
        else:
            record = replace(record, paused=paused)
        self._set_schedule(record, now)
        return record

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        return [self._schedules[name] for name in sorted(self._schedules)]

    # -- jobs (maps) ---------------------------------------------------------

    def open_job(
        self,
        task_type: str,
        report: JobReport,
        priority: int = 0,
        chunk_size: int = 0,
        size_hint: int = 0,
    ) -> Job:
        """
        Open a job; ``report(job, [(index, status, value), ...])`` is called
        as its items finish, in any order.  ``chunk_size`` 0: adapt to the job's
        speed (see ``taskmesh.core.chunking``).
        """
        slots = sum(worker.slots for worker in self._workers if task_type in worker.task_types)
        sizer = ChunkSizer(min(chunk_size, MAX_CHUNK), size_hint, slots)
        job = Job(self._next_id, task_type, priority, sizer, report)
        job.opened_at = self._clock.seconds()
        self._next_id += 1
        self._jobs[job.id] = job
        return job

    def add_job_items(self, job: Job, first_index: int, payloads: list[bytes]) -> None:
        """More items of a job, indexed first_index, first_index + 1, ..."""
        job.buffer.extend(zip(range(first_index, first_index + len(payloads)), payloads))
        job.received += len(payloads)
        job.outstanding += len(payloads)
        self._cut(job)

    def end_job(self, job: Job) -> None:
        """No more items will come: what is buffered goes out, however few."""
        job.ended = True
        self._cut(job)
        self._maybe_done(job)

    def close_job(self, job: Job) -> None:
        """The submitter is gone: drop the job's queued chunks, stop its running ones."""
        self._jobs.pop(job.id, None)
        job.buffer.clear()
        chunks = list(job.chunks.values())
        job.chunks.clear()
        self._queue.remove_all([chunk for chunk in chunks if chunk.worker is None])
        freed: list[WorkerState] = []
        for chunk in chunks:
            worker = chunk.worker
            if worker is not None:
                del worker.leases[chunk.id]
                chunk.worker = None
                worker.channel.cancel(chunk.id)
                freed.append(worker)
        for worker in freed:
            self._fill(worker)

    def _cut(self, job: Job, idle_only: bool = False) -> None:
        """
        Cut buffered items into chunks: full ones always; a short one when a
        worker that runs the type has room and nothing else waits for it, or
        when the job has ended (unless ``idle_only``).
        """
        buffer = job.buffer
        max_bytes = self.policy.max_chunk_bytes
        size = job.sizer.size
        if job.sizer.guessing and buffer:
            slots = sum(worker.slots for worker in self._workers if job.type in worker.task_types)
            size = job.sizer.first_size(len(buffer), slots)
        while buffer:
            if len(buffer) < size and not (job.ended and not idle_only):
                if self._queue.has_waiting(job.type) or not self._room_for(job.type):
                    return
            indexes: list[int] = []
            payloads: list[bytes] = []
            total = chunk_record_overhead(job.type)
            while buffer and len(payloads) < size:
                index, payload = buffer[0]
                if payloads and total + len(payload) + CHUNK_ITEM_OVERHEAD > max_bytes:
                    break
                buffer.popleft()
                indexes.append(index)
                payloads.append(payload)
                total += len(payload) + CHUNK_ITEM_OVERHEAD
            self._enqueue(self._chunk(job, indexes, payloads))

    def _chunk(self, job: Job, indexes: list[int], payloads: list[bytes], seq: int = 0) -> Chunk:
        chunk_id = self._next_id
        self._next_id += 1
        chunk = Chunk(chunk_id, job, indexes, payloads, seq or chunk_id)
        job.chunks[chunk_id] = chunk
        return chunk

    def _room_for(self, task_type: str) -> bool:
        return any(
            len(worker.leases) < worker.capacity and task_type in worker.task_types
            for worker in self._workers
        )

    def complete_chunks(
        self, worker: WorkerState, records: list[tuple[int, int, list[tuple[int, bytes]]]]
    ) -> None:
        """
        A worker answers chunks: (chunk id, offset, outcomes), one (status,
        value) per item from the offset on, in the chunk's order.  A chunk
        may be answered in several parts, in order; its slot is free once
        every item has its answer.  Raises ValueError for a part that does
        not fit the chunk (the protocol drops such a worker).
        """
        now = self._clock.seconds()
        leases = worker.leases
        for chunk_id, offset, outcomes in records:
            lease = leases.get(chunk_id)
            if not isinstance(lease, (Chunk, Group)):
                self._repeated.note(
                    "late chunk answers",
                    worker.name,
                    "dropped a late answer for chunk {chunk_id} from {name}, which no longer holds it",
                    chunk_id=chunk_id,
                    name=worker.name,
                )
                continue
            items = lease.size
            if offset != lease.answered or offset + len(outcomes) > items:
                raise ValueError(
                    f"chunk {chunk_id} of {items} items has {lease.answered} answered; "
                    f"an answer for {len(outcomes)} from {offset} does not fit"
                )
            lease.answered += len(outcomes)
            done = lease.answered == items
            ok = sum(1 for status, _ in outcomes if status == STATUS_OK)
            worker.done += ok
            worker.failed += len(outcomes) - ok
            if done:
                del leases[chunk_id]
                lease.worker = None
            if isinstance(lease, Group):
                self._complete_members(worker, lease.members[offset : offset + len(outcomes)], outcomes)
                if done:
                    self._group_size(lease.type).observe(items, now - lease.leased_at)
                continue
            job = lease.job
            job.outstanding -= len(outcomes)
            self.job_items[0] += ok
            self.job_items[1] += len(outcomes) - ok
            job.failed += len(outcomes) - ok
            if done:
                del job.chunks[chunk_id]
                job.sizer.observe(items, now - lease.leased_at)
            if job.id in self._jobs:
                indexes = lease.indexes[offset : offset + len(outcomes)]
                job.report(
                    job,
                    [(index, *_no_retry(status, value)) for index, (status, value) in zip(indexes, outcomes)],
                )
                self._maybe_done(job)
        self._fill(worker)

    def _complete_members(
        self, worker: WorkerState, members: list[Task], outcomes: list[tuple[int, bytes]]
    ) -> None:
        """Outcomes for tasks of a group: each is finished (or retried) on its own."""
        for member, (status, value) in zip(members, outcomes):
            if member.worker is not worker or member.state is not State.RUNNING:
                continue  # cancelled while the group ran
            member.worker = None
            if status == STATUS_OK:
                self._finish(member, State.SUCCEEDED, value)
            else:
                self._outcome(member, status, value)

    def _maybe_done(self, job: Job) -> None:
        if job.ended and not job.outstanding:
            self._jobs.pop(job.id, None)

    # -- what workers do -----------------------------------------------------

    def add_worker(
        self, channel: IWorkerChannel, name: str, slots: int, task_types: frozenset[str]
    ) -> WorkerState:
        """A worker finished its handshake: give it work at once."""
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        worker = WorkerState(channel, name, slots, task_types, self.policy.prefetch, self._clock.seconds())
        self._workers.append(worker)
        for task_type in task_types:
            self._served[task_type] = self._served.get(task_type, 0) + 1
        self.log.info(
            "worker {name} joined with {slots} slots for {types}",
            name=name,
            slots=slots,
            types=",".join(sorted(task_types)),
        )
        self._fill(worker)
        return worker

    def heard_from(self, worker: WorkerState) -> None:
        """Any frame from a worker proves it alive."""
        worker.last_seen = self._clock.seconds()

    def remove_worker(self, worker: WorkerState, reason: str = "connection lost") -> None:
        """
        A worker is gone.  Each task it held goes back in line, unless it has
        now lost its worker max_losses times: then it fails as poison, so a
        task that kills every worker cannot kill them all.
        """
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        for task_type in worker.task_types:
            if self._served[task_type] == 1:
                del self._served[task_type]
            else:
                self._served[task_type] -= 1
        held: list[Task | Chunk] = []
        for lease in worker.leases.values():
            if isinstance(lease, Group):  # each of its tasks was lost with the worker
                held.extend(m for m in lease.members if m.worker is worker and m.state is State.RUNNING)
            else:
                held.append(lease)
        worker.leases.clear()
        held.sort(key=lambda item: item.seq)
        self.log.info(
            "worker {name} left ({reason}); {count} tasks to requeue",
            name=worker.name,
            reason=reason,
            count=len(held),
        )
        for item in held:
            if isinstance(item, Chunk):
                item.worker = None
                item.losses += 1
                self._split(item, worker.name, reason)
                continue
            task = item
            self._release(task)
            task.losses += 1
            if task.losses >= self.policy.max_losses:
                self._finish(
                    task,
                    State.FAILED,
                    f"poison: task {task.id} lost its worker {task.losses} times "
                    f"(last: {worker.name}, {reason}); not trying again".encode(),
                )
            else:
                self._store.record_attempts(task.id, task.attempts, task.losses)
                self._queue.push(task)
        self._fill_all()

    def drain(self, worker: WorkerState, lease_ids: list[int]) -> None:
        """
        A worker shuts down warm: it gets nothing more, and the leases it
        hands back (held, never started) go back in line at once, in their
        place, without counting an attempt or a loss: nothing ran.  What it
        still runs stays leased to it until its results come (or it leaves).
        An id it does not hold (answered, cancelled, timed out) is ignored.
        """
        if not worker.draining:
            worker.draining = True
            worker.capacity = 0
            self.log.info(
                "worker {name} is shutting down: it finishes {running} running, hands back {count}",
                name=worker.name,
                running=len(worker.leases) - len(lease_ids),
                count=len(lease_ids),
            )
        requeued: list[Task | Chunk] = []
        for lease_id in lease_ids:
            lease = worker.leases.pop(lease_id, None)
            if lease is None:
                continue
            if isinstance(lease, Group):
                for member in lease.members:
                    if member.worker is worker and member.state is State.RUNNING:
                        self._release(member)
                        requeued.append(member)
            elif isinstance(lease, Chunk):
                lease.worker = None
                requeued.append(lease)
            else:
                self._release(lease)
                requeued.append(lease)
        for item in requeued:
            self._queue.push(item)
        if requeued:
            self._fill_all()

    def complete(self, worker: WorkerState, records: list[tuple[int, int, bytes]]) -> None:
        """
        A worker reports outcomes: (task id, status, value) with status 0 for
        success, else value is the reason.  Only the worker holding a task's
        lease is heard: a result for a task it does not hold (requeued after
        a lost lease, timed out, cancelled, already done) is logged and
        dropped, so each task's outcome is recorded once.  The worker is
        refilled once, after the whole batch.
        """
        now = self._clock.seconds()
        leases = worker.leases
        for task_id, status, value in records:
            lease = leases.get(task_id)
            if not isinstance(lease, Task):  # a chunk or group is answered with ChunkResults
                self._repeated.note(
                    "late results",
                    worker.name,
                    "dropped a late result for task {task_id} from {name}, which no longer holds it",
                    task_id=task_id,
                    name=worker.name,
                )
                continue
            del leases[task_id]
            task = lease
            task.worker = None
            if task.timer is not None:
                task.timer.cancel()
                task.timer = None
            if status == STATUS_OK:
                worker.done += 1
                # A single task's time includes a round trip: an upper bound,
                # enough to tell quick types (worth grouping) from slow ones.
                self._group_size(task.type).observe(1, now - task.leased_at)
                self._finish(task, State.SUCCEEDED, value)
            else:
                worker.failed += 1
                self._outcome(task, status, value)
        self._fill(worker)

    def _outcome(self, task: Task, status: int, value: bytes) -> None:
        """
        A worker's answer for a task other than success: a retry the task
        asked for (within its attempts, after the delay it asked for or the
        backoff); a failure, retried only with ``retry_on_error``.
        """
        if status == STATUS_RETRY:
            delay, reason = split_retry(value)
            self._attempt_failed(task, reason, delay, asked=True)
        elif task.options.retry_on_error:
            self._attempt_failed(task, value)
        else:
            self._finish(task, State.FAILED, value)

    def progress(self, worker: WorkerState, records: list[ProgressRecord]) -> None:
        """
        A worker reports how far running tasks have come: only a task that
        worker is running is heard (progress that crossed the task's result,
        or a lost lease, is dropped).  The latest report of each task is kept
        until the task leaves its worker.
        """
        tasks = self._tasks
        for task_id, done, total, note in records:
            task = tasks.get(task_id)
            if task is not None and task.worker is worker and task.state is State.RUNNING:
                self._progress[task_id] = (done, total, note)

    def progress_of(self, task_id: int) -> tuple[float, float, str] | None:
        """A running task's latest progress: (done, total (0: unknown), note), or None."""
        return self._progress.get(task_id)

    # -- what monitoring reads ----------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self._clock.seconds()
        held = sum(self._held(worker) for worker in self._workers)
        # Running: what occupies a slot; the rest a worker holds is prefetched,
        # waiting on the worker for a slot.
        running = sum(min(len(worker.leases), worker.slots) for worker in self._workers)
        waiting = self._queue.waiting_by_type()
        return {
            "tasks": {
                "queued": len(self._queue),
                "waiting_to_retry": self._waiting_retry,
                "running": running,
                "held": held,
                "prefetched": max(0, held - running),
                "succeeded": self.counts[State.SUCCEEDED],
                "failed": self.counts[State.FAILED],
                "cancelled": self.counts[State.CANCELLED],
                "scheduled": self.scheduled_count,
            },
            "schedules": [describe_schedule(record) for record in self.schedules()[:SCHEDULES_LISTED]],
            "waiting_by_type": {
                task_type: {"queued": count, "no_worker_runs_it": task_type not in self._served}
                for task_type, count in sorted(waiting.items())
            },
            "workers": [
                {
                    "name": worker.name,
                    "slots": worker.slots,
                    "running": min(len(worker.leases), worker.slots),
                    "held": self._held(worker),
                    "types": sorted(worker.task_types),
                    "last_seen_seconds_ago": round(now - worker.last_seen, 3),
                    "done": worker.done,
                    "failed": worker.failed,
                    "connected_seconds": round(now - worker.joined_at, 3),
                    "draining": worker.draining,
                }
                for worker in self._workers
            ],
            "jobs": [
                {
                    "id": job.id,
                    "type": job.type,
                    "priority": job.priority,
                    "items_outstanding": job.outstanding,
                    "items_received": job.received,
                    "items_done": job.received - job.outstanding,
                    "items_failed": job.failed,
                    "open_seconds": round(now - job.opened_at, 3),
                    "ended": job.ended,
                    "chunk_size": job.sizer.size,
                }
                for job in self._jobs.values()
            ],
            "paused_submitters": self._paused,
            "version": __version__,
            "uptime_seconds": round(now - self.started_at, 3),
            "submitted": sum(self.submitted_by_type.values()),
            "map_items": {"succeeded": self.job_items[0], "failed": self.job_items[1]},
            "progress": [
                {
                    "id": task_id,
                    "type": self._tasks[task_id].type,
                    "done": done,
                    "total": total or None,
                    "note": note,
                }
                for task_id, (done, total, note) in list(self._progress.items())[:PROGRESS_LISTED]
            ],
            "store": self._store_stats(now),
        }

    def _store_stats(self, now: float) -> dict[str, Any]:
        """The store's health, for ``taskmesh status`` and monitoring."""
        failing = self._store_error is not None
        return {
            "available": not failing,
            "error": str(StoreUnavailable(self._store_error)) if self._store_error is not None else None,
            "unavailable_seconds": round(now - self._store_failed_at, 3) if failing else 0.0,
            "refusing_submissions": self._refusing,
            "held_back_submissions": len(self._uncommitted()) if failing else 0,
            "held_back_results": len(self._finished) if failing else 0,
            "failed_commits": self.failed_commits,
            # A store that fails again and again (a disk so full that small
            # commits pass) looks available between failures: say when it last failed.
            "last_error": str(StoreUnavailable(self._last_failure[0])) if self._last_failure else None,
            "last_error_seconds_ago": round(now - self._last_failure[1], 3) if self._last_failure else None,
        }

    @staticmethod
    def _held(worker: WorkerState) -> int:
        """Tasks a worker holds, counting each task of a group."""
        return sum(lease.size if isinstance(lease, Group) else 1 for lease in worker.leases.values())

    # -- decisions -----------------------------------------------------------

    def _enqueue(self, task: Queued) -> None:
        """Straight to the roomiest worker that runs the type, or in line."""
        if not self._queue.has_waiting(task.type):
            best = None
            best_free = 0
            for worker in self._workers:
                free = worker.capacity - len(worker.leases)
                if free > best_free and task.type in worker.task_types:
                    best, best_free = worker, free
            if best is not None:
                self._lease(task, best)
                return
        self._queue.push(task)

    def _lease(self, task: Queued, worker: WorkerState) -> None:
        task.worker = worker
        task.leased_at = self._clock.seconds()
        worker.leases[task.id] = task
        if isinstance(task, Chunk):
            worker.channel.assign_chunk(task.id, task.type, task.payloads)
            return
        task.state = State.RUNNING
        options = task.options
        timeout = options.timeout
        if timeout is not None:
            task.timer = self._clock.callLater(timeout, self._timed_out, task)
        worker.channel.assign(
            task.id,
            task.type,
            task.payload,
            task.attempts + 1,
            options.max_attempts or self.policy.max_attempts,
            timeout,
        )

    def _release(self, task: Task) -> None:
        """Take a task's lease back from its worker (lost, timed out, cancelled)."""
        worker = task.worker
        if worker is not None:
            # A task in a group holds no lease of its own: the group does,
            # and skips it when the group's answer comes.
            worker.leases.pop(task.id, None)
            task.worker = None
            if self._progress:
                self._progress.pop(task.id, None)
        task.state = State.QUEUED
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None

    def _fill(self, worker: WorkerState) -> None:
        """
        Give a worker queued work until it is full or nothing fits; with room
        left, cut chunks from the jobs it can run (highest priority first).
        """
        queue = self._queue
        if self._jobs and len(worker.leases) < worker.capacity:
            waiting = sorted(
                (job for job in self._jobs.values() if job.buffer and job.type in worker.task_types),
                key=lambda job: -job.priority,
            )
            for job in waiting:
                self._cut(job, idle_only=True)
        if not queue:
            return
        while len(worker.leases) < worker.capacity:
            task = queue.pop_for(worker.task_types)
            if task is None:
                break
            if isinstance(task, Task) and task.options.timeout is None:
                sizer = self._group_sizes.get(task.type)
                if sizer is not None and sizer.size > 1 and queue.has_waiting(task.type):
                    self._lease_group(task, sizer.size, worker)
                    continue
            self._lease(task, worker)
        self._resume_if_room()

    def _resume_if_room(self) -> None:
        """Submitters paused at the queue's bound resume once it is below 90 % of it."""
        if self._paused and len(self._queue) < self.policy.max_queued * 0.9:
            self._paused = False
            self.log.info("queue has room again: resuming submitters")
            self.on_queue_full(False)

    def _lease_group(self, first: Task, size: int, worker: WorkerState) -> None:
        """
        Lease ``first`` and the next queued tasks of its type (as many as the
        type's group size, while they have no timeout) as one chunk: one
        assignment, one slot, one answer.  Each task keeps its own Deferred,
        store record and outcome.
        """
        queue = self._queue
        members = [first]
        budget = (
            self.policy.max_chunk_bytes
            - chunk_record_overhead(first.type)
            - len(first.payload)
            - CHUNK_ITEM_OVERHEAD
        )
        while len(members) < size:
            following = queue.peek(first.type)
            if (
                not isinstance(following, Task)  # none, or a job's chunk
                or following.options.timeout is not None
                or len(following.payload) + CHUNK_ITEM_OVERHEAD > budget
            ):
                break
            budget -= len(following.payload) + CHUNK_ITEM_OVERHEAD
            queue.pop_for((first.type,))
            members.append(following)
        if len(members) == 1:
            self._lease(first, worker)
            return
        group = Group(self._next_id, members, worker, self._clock.seconds())
        self._next_id += 1
        leased_at = group.leased_at
        for member in members:
            member.worker = worker
            member.state = State.RUNNING
            member.leased_at = leased_at
        worker.leases[group.id] = group
        default_attempts = self.policy.max_attempts
        worker.channel.assign_group(
            group.id,
            group.type,
            [
                (
                    member.id,
                    member.attempts + 1,
                    member.options.max_attempts or default_attempts,
                    member.payload,
                )
                for member in members
            ],
        )

    def _group_size(self, task_type: str) -> ChunkSizer:
        sizer = self._group_sizes.get(task_type)
        if sizer is None:
            sizer = self._group_sizes[task_type] = ChunkSizer(first=1)
        return sizer

    def _fill_all(self) -> None:
        # Emptiest first, so requeued work spreads out instead of piling up.
        for worker in sorted(self._workers, key=lambda w: len(w.leases)):
            self._fill(worker)

    def _split(self, chunk: Chunk, worker_name: str, reason: str) -> None:
        """
        A chunk lost with its worker goes back as single items, in the
        chunk's place in line: they spread over the workers that remain, and
        an item that kills workers is failed alone, after max_losses.
        """
        job = chunk.job
        del job.chunks[chunk.id]
        if job.id not in self._jobs:
            return
        if chunk.losses >= self.policy.max_losses:
            reason_text = (
                f"poison: lost its worker {chunk.losses} times "
                f"(last: {worker_name}, {reason}); not trying again"
            ).encode()
            unanswered = chunk.indexes[chunk.answered :]
            job.outstanding -= len(unanswered)
            job.report(job, [(index, 1, reason_text) for index in unanswered])
            self._maybe_done(job)
            return
        answered = chunk.answered
        for index, payload in zip(chunk.indexes[answered:], chunk.payloads[answered:]):
            piece = self._chunk(job, [index], [payload], seq=chunk.seq)
            piece.losses = chunk.losses
            self._queue.push(piece)

    def _timed_out(self, task: Task) -> None:
        task.timer = None
        worker = task.worker
        self._release(task)
        if worker is not None:
            worker.channel.cancel(task.id)
        self._attempt_failed(task, f"timed out after {task.options.timeout:g} s".encode())
        if worker is not None:
            self._fill(worker)

    def _attempt_failed(
        self, task: Task, reason: bytes, delay: float | None = None, asked: bool = False
    ) -> None:
        """
        Retry after ``delay`` (None: an exponential backoff), or fail once
        attempts are spent, with the last attempt's reason (a failure value:
        plain text, or a task function's structured failure) and a note.
        ``asked``: the task itself asked for the retry.
        """
        task.attempts += 1
        allowed = task.options.max_attempts or self.policy.max_attempts
        if task.attempts >= allowed:
            self._finish(
                task, State.FAILED, add_note(reason, f"attempt {task.attempts} of {allowed}; giving up")
            )
            return
        if delay is None:
            delay = min(self.policy.retry_delay * 2 ** (task.attempts - 1), self.policy.retry_max_delay)
        self.log.info(
            "task {task_id} attempt {attempt} of {allowed} {how} ({reason}); retry in {delay:g} s",
            task_id=task.id,
            attempt=task.attempts,
            allowed=allowed,
            how="asked for a retry" if asked else "failed",
            reason=failure_summary(reason),
            delay=delay,
        )
        self._store.record_attempts(task.id, task.attempts, task.losses)
        task.state = State.QUEUED
        self._waiting_retry += 1
        task.timer = self._clock.callLater(delay, self._retry, task)

    def _retry(self, task: Task) -> None:
        task.timer = None
        self._waiting_retry -= 1
        self._enqueue(task)

    @property
    def finished_by_type(self) -> dict[tuple[str, State], int]:
        """Finished tasks by (type, state), built when someone asks (a scrape), not per task."""
        return {
            (task_type, State(state)): count
            for task_type, counters in self._by_type.items()
            for state, count in enumerate(counters.finished)
            if count
        }

    def _finish(self, task: Task, state: State, value: bytes) -> None:
        """Record an outcome; the Deferred fires once it is durable."""
        task.state = state
        self.counts[state] += 1
        now = self._clock.seconds()
        task_type = task.type
        counters = self._by_type.get(task_type) or self._new_type(task_type)
        counters.finished[state] += 1
        leased_at = task.leased_at
        if leased_at >= 0 and state is not State.CANCELLED:
            # Histogram.observe, twice, inline: this runs once per task.
            seconds = now - leased_at
            histogram = counters.run
            histogram.counts[bisect_left(BUCKETS, seconds)] += 1
            histogram.total += seconds
            seconds = leased_at - task.submitted_at
            histogram = counters.wait
            histogram.counts[bisect_left(BUCKETS, seconds)] += 1
            histogram.total += seconds
        if self._progress:
            self._progress.pop(task.id, None)
        if state is not State.SUCCEEDED:
            self.log.info(
                "task {task_id} {state}: {reason}",
                task_id=task.id,
                state=state.name.lower(),
                reason=failure_summary(value),
            )
        if task.options.key is not None:
            self._keys.pop(task.options.key, None)
        self._store.finish(task.id, state, value, now)
        self._finished.append((task, value))
        if self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    def _new_type(self, task_type: str) -> TypeCounters:
        """The counters and histograms of a type (for /metrics), made as its first task finishes."""
        counters = self._by_type[task_type] = TypeCounters(len(State))
        self.run_times[task_type] = counters.run
        self.queue_waits[task_type] = counters.wait
        return counters

    def _commit(self) -> None:
        """
        One commit for everything this turn wrote, then the Deferreds of the
        tasks it finished, then whoever waited for durability.  If the
        commit fails, nothing of this happens: every waiter stays, and the
        commit is tried again later (see ``_commit_failed``).  Each callback
        runs on its own: one that raises (a bug) is logged, and the others'
        answers still go out.
        """
        self._commit_call = None
        if self._background is not None:
            if not self._stopping:
                if self._in_flight is None:
                    self._begin_commit()
                # else: its landing begins the next commit, for what came since
                return
            if self._in_flight is not None:
                # The last commit, below, waits for this one and writes everything.
                self._put_back(self._in_flight)
                self._in_flight = None
        clock = self._clock
        started = clock.seconds()
        try:
            try:
                done = self._store.commit()
                while not done and self._stopping:  # the last commit: all of it, now
                    done = self._store.commit()
            finally:
                self.commit_times.observe(clock.seconds() - started)
        except StoreUnavailable as e:
            self._commit_failed(e.reason)
            return
        except Exception as e:
            self.log.failure("bug in the store's commit; treating the store as unavailable")
            self._commit_failed(f"{type(e).__name__}: {e}")
            return
        if self._store_error is not None:
            self._store_recovered()
        if not done:
            # A large backlog goes a slice per turn, so that the reactor
            # serves everyone in between; the waiters wait for all of it.
            self._commit_call = self._clock.callLater(0, self._commit)
            return
        self._committed_up_to = self._next_id
        if self._far:
            self._far_committed()
        if self._ticks:
            self._ticks.clear()
        finished, self._finished = self._finished, []
        waiting, self._after_commit = self._after_commit, []
        self._answer(finished, waiting)

    def _answer(self, finished: list[tuple[Task, bytes]], waiting: list[_Waiter]) -> None:
        """Their writes are durable: fire the finished tasks' Deferreds, then call the waiters."""
        tasks = self._tasks
        on_outcome = self.on_outcome
        for task, value in finished:
            del tasks[task.id]
            if task.watched and on_outcome is not None:
                try:
                    on_outcome(task.id, task.state, value)
                except Exception:
                    self.log.failure("bug while reporting the outcome of task {task_id}", task_id=task.id)
            deferred = task.fired
            if deferred is None:  # nobody waits: the store has the outcome
                continue
            try:
                if task.state is State.SUCCEEDED:
                    deferred.callback(value)
                else:
                    error = TaskCancelled if task.state is State.CANCELLED else TaskFailed
                    deferred.errback(error(value.decode("utf-8", "replace")))
                    deferred.addErrback(_consume)
            except Exception:
                self.log.failure("bug while reporting the outcome of task {task_id}", task_id=task.id)
        for function, args, _ in waiting:
            try:
                function(*args)
            except Exception:
                self.log.failure(
                    "bug in {function} after a commit; the other answers still go out", function=function
                )

    def _begin_commit(self) -> None:
        """Hand everything written so far to the store's thread, with what waits for it."""
        flight: _Flight = (
            self._finished,
            self._after_commit,
            self._next_id,
            tuple(self._far),
            tuple(self._ticks),
        )
        self._finished, self._after_commit = [], []
        self._in_flight = flight
        self._flight_began = self._clock.seconds()
        try:
            started = self._background.begin_commit(lambda reason: self._commit_landed(flight, reason))
        except Exception as e:
            self.log.failure("bug in the store's begin_commit; treating the store as unavailable")
            self._in_flight = None
            self._put_back(flight)
            self._commit_failed(f"{type(e).__name__}: {e}")
            return
        if not started:  # nothing to write: all of it is durable already
            self._commit_landed(flight, None)

    def _commit_landed(self, flight: _Flight, reason: str | None) -> None:
        """A background commit is durable (reason None) or failed; begin the next one if needed."""
        if self._in_flight is not flight:
            return  # taken over by the last commit, when stopping
        self._in_flight = None
        self.commit_times.observe(self._clock.seconds() - self._flight_began)
        if reason is not None:
            self._put_back(flight)
            self._commit_failed(reason)
            if self._refuse_after_flight:
                self._refuse_after_flight = False
                self._refuse_held()
            return
        if self._store_error is not None:
            self._store_recovered()
        self._committed_up_to = flight[2]
        if flight[3]:
            self._far_committed(flight[3])
        for task_id in flight[4]:  # those ticks' tasks are durable with their records
            self._ticks.pop(task_id, None)
        self._answer(flight[0], flight[1])
        if (self._finished or self._after_commit or self._background.pending()) and self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    def _put_back(self, flight: _Flight) -> None:
        """A commit that did not land: what it would have answered waits again, first in line."""
        self._finished[:0] = flight[0]
        self._after_commit[:0] = flight[1]

    def _commit_failed(self, reason: str) -> None:
        """
        The store could not commit: keep everything, say so once per episode
        (and when the cause changes), and try again after a backoff.  The
        first failure starts the grace time after which held-back
        submissions are refused.
        """
        self.failed_commits += 1
        self._store_failures += 1
        self._last_failure = (reason, self._clock.seconds())
        if self._store_error is None:
            now = self._clock.seconds()
            self._store_failed_at = now
            self._store_retry_delay = self.policy.store_retry_delay
            self._quiet_episode = reason == self._last_store_error and now < self._quiet_until
            if not self._quiet_episode:
                self._relapses = 0
                self.log.error(
                    "the store cannot commit: {reason}; holding back {submissions} submissions and "
                    "{results} results and retrying with backoff; submissions not committed within "
                    "{grace:g} s are refused until it commits again",
                    reason=reason,
                    submissions=len(self._uncommitted()),
                    results=len(self._finished),
                    grace=self.policy.store_grace,
                )
            else:
                self._relapses += 1
                if now - self._relapse_logged_at >= STORE_RELAPSE_WINDOW:
                    self._relapse_logged_at = now
                    self.log.warn(
                        "the store failed again: {reason} ({count} times since it last recovered "
                        "after an outage; it commits small writes but not all)",
                        reason=reason,
                        count=self._relapses,
                    )
            if not self._stopping:
                self._grace_call = self._clock.callLater(self.policy.store_grace, self._refuse_held)
        elif reason != self._store_error:
            self.log.error("the store still cannot commit, now: {reason}", reason=reason)
        self._store_error = reason
        if self._stopping:
            return
        delay = self._store_retry_delay
        self._store_retry_delay = min(delay * 2, self.policy.store_retry_max_delay)
        self._commit_call = self._clock.callLater(delay, self._commit)

    def _refuse_held(self) -> None:
        """
        The grace time is over and the store still cannot commit: refuse the
        submissions waiting for it (withdrawing their tasks, so that nothing
        refused ever runs or is stored), and refuse new ones at once from now
        on.  Results and other answers keep waiting: they were promised.
        """
        self._grace_call = None
        reason = self._store_error
        if reason is None:
            return
        if self._in_flight is not None:
            # Its writes are the store's now: refuse (and discard) only if it fails.
            self._refuse_after_flight = True
            return
        self._refusing = True
        withdrawn = self._uncommitted()
        if withdrawn:
            self._withdraw(withdrawn, reason)
        refused = [waiter for waiter in self._after_commit if waiter[2] is not None]
        if refused:
            self._after_commit = [waiter for waiter in self._after_commit if waiter[2] is None]
        if not self._quiet_episode:
            self.log.warn(
                "the store is still unavailable after {grace:g} s ({reason}): refused {count} held-back "
                "submissions; refusing new ones until it commits again",
                grace=self.policy.store_grace,
                reason=reason,
                count=len(withdrawn),
            )
        message = str(StoreUnavailable(reason))
        for _, args, refuse in refused:
            assert refuse is not None
            try:
                refuse(message, *args)
            except Exception:
                self.log.failure("bug in {function} refusing submissions", function=refuse)

    def _uncommitted(self) -> list[Task]:
        """
        The tasks added since the last successful commit, found when needed
        (an outage) rather than listed on every submission.
        """
        mark = self._committed_up_to
        return [task for task in self._tasks.values() if task.id >= mark] + list(self._far.values())

    def _withdraw(self, tasks: list[Task], reason: str) -> None:
        """
        Forget tasks whose submissions are refused: out of the line, off
        their workers (who are told to stop), their uncommitted writes
        discarded.  Nobody was told their ids, so nobody waits for them.
        """
        ids = {task.id for task in tasks}
        refill: list[WorkerState] = []
        failure = TaskFailed(f"submission refused: {StoreUnavailable(reason)}")
        for task in tasks:
            if self._far.get(task.id) is task:
                del self._far[task.id]
                self.scheduled_count -= 1
                if task.options.key is not None and self._keys.get(task.options.key) == task.id:
                    del self._keys[task.options.key]
                continue
            if self._tasks.get(task.id) is not task:
                continue
            del self._tasks[task.id]
            self._untick(task.id)
            key = task.options.key
            if key is not None and self._keys.get(key) == task.id:
                del self._keys[key]
            if task.state.finished:
                self.counts[task.state] -= 1  # that outcome is discarded with the task
            else:
                worker = task.worker
                if worker is not None:
                    self._release(task)
                    worker.channel.cancel(task.id)
                    if worker not in refill:
                        refill.append(worker)
                elif task.timer is not None:
                    task.timer.cancel()
                    task.timer = None
                    if task.state is State.SCHEDULED:
                        self.scheduled_count -= 1
                    else:
                        self._waiting_retry -= 1
                else:
                    self._queue.remove(task)
            task.state = State.CANCELLED
            if task.watched and self.on_outcome is not None:
                self.on_outcome(task.id, State.FAILED, str(failure).encode("utf-8", "replace"))
            deferred = task.fired
            if deferred is not None:
                deferred.errback(failure)
                deferred.addErrback(_consume)
        if self._finished:
            self._finished = [(task, value) for task, value in self._finished if task.id not in ids]
        self._store.discard(ids)
        for worker in refill:
            if worker in self._workers:
                self._fill(worker)

    def _store_recovered(self) -> None:
        now = self._clock.seconds()
        if not self._quiet_episode:
            self.log.info(
                "the store commits again after {seconds:.1f} s and {attempts} failed commits; "
                "sending what was held back ({submissions} submissions, {results} results)",
                seconds=now - self._store_failed_at,
                attempts=self._store_failures,
                submissions=len(self._uncommitted()),
                results=len(self._finished),
            )
        if self._refusing or self._quiet_episode:
            # It refused submissions: if it fails again soon for the same
            # reason, that is this trouble coming back.
            self._last_store_error = self._store_error
            self._quiet_until = now + STORE_RELAPSE_WINDOW
        self._store_error = None
        self._store_failures = 0
        self._refusing = False
        self._refuse_after_flight = False
        if self._grace_call is not None:
            if self._grace_call.active():
                self._grace_call.cancel()
            self._grace_call = None

    def _check_workers(self) -> None:
        """Heartbeat round: drop the silent, greet the rest (a bug with one never stops the rounds)."""
        now = self._clock.seconds()
        limit = self.policy.heartbeat_interval * self.policy.heartbeat_tolerance
        for worker in list(self._workers):
            try:
                silent = now - worker.last_seen
                if silent > limit:
                    reason = f"no heartbeat for {silent:.1f} s"
                    worker.channel.drop(reason)
                    self.remove_worker(worker, reason)
                else:
                    worker.channel.heartbeat()
            except Exception:
                self.log.failure("bug in the heartbeat round for {name}", name=worker.name)

    def _prune(self) -> None:
        """A pruning round (unless the last one is still going, a batch per turn)."""
        if self._prune_call is None:
            self._prune_batch(self._clock.seconds() - self.policy.result_ttl, 0)

    def _prune_batch(self, before: float, pruned: int) -> None:
        """
        Forget a batch of old outcomes, and the next batch next turn.  A
        failure ends this round only: it is logged, and the next round runs.
        """
        self._prune_call = None
        try:
            count = self._store.prune(before, PRUNE_BATCH)
        except StoreUnavailable as e:
            self.log.warn(
                "pruning failed after {count} outcomes: {reason}; the next round tries again",
                count=pruned,
                reason=e.reason,
            )
            return
        except Exception:
            self.log.failure("bug while pruning; the next round tries again")
            return
        pruned += count
        if count >= PRUNE_BATCH and not self._stopping:
            self._prune_call = self._clock.callLater(0, self._prune_batch, before, pruned)
        elif pruned:
            self.log.info("pruned {count} outcomes older than the retention time", count=pruned)


def describe_schedule(record: ScheduleRecord) -> dict[str, Any]:
    """A schedule as status and the schedule commands show it (JSON)."""
    return {
        "name": record.name,
        "cron": record.cron,
        "every": record.every,
        "tz": record.tz,
        "type": record.task_type,
        "paused": record.paused,
        "catch_up": record.catch_up,
        "next_due": None if record.paused else record.next_due,
        "last_due": record.last_due,
        "last_task": record.last_task,
        "source": record.source,
    }


def _no_retry(status: int, value: bytes) -> tuple[int, bytes]:
    """A map's item that asked for a retry fails: items have no attempts to count."""
    if status != STATUS_RETRY:
        return status, value
    return STATUS_FAILED, add_note(split_retry(value)[1], "a map's items are not retried")
