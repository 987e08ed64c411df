"""
The scheduler core: a sans-I/O state machine.

It owns the task table, the queue, the connected workers and their leases,
and one Deferred per task that fires exactly once.  Every scheduling decision
(assign, requeue, fail) is made here and nowhere else.  It does no I/O: it
hands assignments to an ``IWorkerChannel`` that a protocol implements, and it
takes time from the ``IReactorTime`` it is given, never the global reactor,
so tests drive it with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from taskmesh.taskqueue import TaskQueue

#: How many times a task may lose its worker (connection dropped) before it is
#: failed instead of requeued: a task that keeps killing workers is poison.
DEFAULT_MAX_LOSSES = 3
#: Tasks a worker may hold beyond its slots, so it never idles waiting for the
#: next assignment to cross the network.  Small, so that slow tasks are not
#: hoarded by one worker while another sits idle.
DEFAULT_PREFETCH = 2


class TaskFailed(Exception):
    """A task ended without a result; the message says why, for a person."""


class IWorkerChannel(Interface):
    """How the core reaches one connected worker (a protocol provides it)."""

    def assign(task_id: int, task_type: str, payload: bytes) -> None:
        """Send this task to the worker (the channel may batch the frames)."""


class WorkerState:
    """The core's view of one connected worker: what it runs and what it holds."""

    __slots__ = ("channel", "name", "slots", "task_types", "capacity", "leases")

    def __init__(
        self,
        channel: IWorkerChannel,
        name: str,
        slots: int,
        task_types: frozenset[str],
        prefetch: int,
    ) -> None:
        self.channel = channel
        self.name = name
        self.slots = slots
        self.task_types = task_types
        #: Never more than this many tasks leased to the worker at once.
        self.capacity = slots + prefetch
        #: Tasks this worker holds, by id.
        self.leases: dict[int, Task] = {}

    def free(self) -> int:
        return self.capacity - len(self.leases)


@dataclass(eq=False, slots=True)
class Task:
    """One task the scheduler is responsible for until its Deferred fires."""

    id: int
    type: str
    payload: bytes
    submitted_at: float
    deferred: "Deferred[bytes]" = field(default_factory=Deferred)
    #: Times this task was leased to a worker whose connection then dropped.
    losses: int = 0
    #: The worker holding the lease, while running.
    worker: WorkerState | None = None

    @property
    def seq(self) -> int:
        """Place in line: ids grow with submission order."""
        return self.id


class Scheduler:
    """Decides which worker runs which task, and when a task has failed."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        prefetch: int = DEFAULT_PREFETCH,
        max_losses: int = DEFAULT_MAX_LOSSES,
    ) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        if max_losses < 1:
            raise ValueError("max_losses must be 1 or more")
        self._clock = clock
        self._prefetch = prefetch
        self._max_losses = max_losses
        self._queue = TaskQueue()
        self._tasks: dict[int, Task] = {}
        self._workers: list[WorkerState] = []
        self._next_id = 1
        self.completed = 0
        self.failed = 0

    # -- what clients ask ----------------------------------------------------

    def submit(self, task_type: str, payload: bytes) -> Task:
        """
        Take responsibility for a task.  Its Deferred fires with the result
        bytes, or fails with TaskFailed.  The task goes straight to the worker
        with the most free room that runs its type, or waits in the queue.
        """
        task = Task(self._next_id, task_type, payload, self._clock.seconds())
        self._next_id += 1
        self._tasks[task.id] = task
        if not self._queue.has_waiting(task_type):
            worker = self._roomiest_worker_for(task_type)
            if worker is not None:
                self._lease(task, worker)
                return task
        self._queue.push(task)
        return task

    def has_worker_for(self, task_type: str) -> bool:
        """Whether any connected worker runs this type (else the task waits)."""
        return any(task_type in worker.task_types for worker in self._workers)

    # -- what workers do -----------------------------------------------------

    def add_worker(
        self, channel: IWorkerChannel, name: str, slots: int, task_types: frozenset[str]
    ) -> WorkerState:
        """A worker finished its handshake: give it work at once."""
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        worker = WorkerState(channel, name, slots, task_types, self._prefetch)
        self._workers.append(worker)
        self.log.info(
            "worker {name} joined with {slots} slots for {types}",
            name=name,
            slots=slots,
            types=",".join(sorted(task_types)),
        )
        self._fill(worker)
        return worker

    def remove_worker(self, worker: WorkerState, reason: str = "connection lost") -> None:
        """
        A worker is gone.  Each task it held goes back to the front of the
        queue, unless it has now lost its worker max_losses times: then it
        fails, so a task that kills every worker cannot kill them all.
        """
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        held = sorted(worker.leases.values(), key=lambda task: task.seq)
        worker.leases.clear()
        self.log.info(
            "worker {name} left ({reason}); {count} tasks to requeue",
            name=worker.name,
            reason=reason,
            count=len(held),
        )
        for task in held:
            task.worker = None
            task.losses += 1
            if task.losses >= self._max_losses:
                self._fail(
                    task,
                    f"task {task.id} lost its worker {task.losses} times "
                    f"(last: {worker.name}, {reason}); giving up",
                )
            else:
                self._queue.push_front(task)
        self._fill_all()

    def complete(self, worker: WorkerState, records: list[tuple[int, int, bytes]]) -> None:
        """
        A worker reports outcomes: (task id, status, value) with status 0 for
        success, else value is the reason.  Only the worker holding a task's
        lease is heard: a result for a task it does not hold (already
        requeued, already done) is logged and dropped, so each task is decided
        once.  The worker is refilled once, after the whole batch.
        """
        leases = worker.leases
        tasks = self._tasks
        for task_id, status, value in records:
            task = leases.pop(task_id, None)
            if task is None:
                self.log.warn(
                    "dropped a result for task {task_id} from worker {name}, which does not hold it",
                    task_id=task_id,
                    name=worker.name,
                )
                continue
            task.worker = None
            del tasks[task_id]
            if status == 0:
                self.completed += 1
                task.deferred.callback(value)
            else:
                self._fail_finished(task, value.decode("utf-8", "replace"))
        self._fill(worker)

    # -- what monitoring reads ----------------------------------------------

    def stats(self) -> dict[str, object]:
        running = sum(len(worker.leases) for worker in self._workers)
        return {
            "queued": len(self._queue),
            "running": running,
            "completed": self.completed,
            "failed": self.failed,
            "waiting_by_type": self._queue.waiting_by_type(),
            "workers": [
                {
                    "name": worker.name,
                    "slots": worker.slots,
                    "running": len(worker.leases),
                    "types": sorted(worker.task_types),
                }
                for worker in self._workers
            ],
        }

    # -- decisions -----------------------------------------------------------

    def _roomiest_worker_for(self, task_type: str) -> WorkerState | None:
        best = None
        best_free = 0
        for worker in self._workers:
            free = worker.capacity - len(worker.leases)
            if free > best_free and task_type in worker.task_types:
                best, best_free = worker, free
        return best

    def _lease(self, task: Task, worker: WorkerState) -> None:
        task.worker = worker
        worker.leases[task.id] = task
        worker.channel.assign(task.id, task.type, task.payload)

    def _fill(self, worker: WorkerState) -> None:
        """Give a worker queued work until it is full or nothing fits."""
        if not self._queue:
            return
        while len(worker.leases) < worker.capacity:
            task = self._queue.pop_for(worker.task_types)
            if task is None:
                return
            self._lease(task, worker)  # type: ignore[arg-type]

    def _fill_all(self) -> None:
        # Emptiest first, so requeued work spreads out instead of piling up.
        for worker in sorted(self._workers, key=lambda w: len(w.leases)):
            self._fill(worker)

    def _fail(self, task: Task, reason: str) -> None:
        del self._tasks[task.id]
        self._fail_finished(task, reason)

    def _fail_finished(self, task: Task, reason: str) -> None:
        self.failed += 1
        self.log.info("task {task_id} failed: {reason}", task_id=task.id, reason=reason)
        task.deferred.errback(TaskFailed(reason))
