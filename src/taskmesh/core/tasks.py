"""
What the scheduler core keeps track of: tasks, jobs, and the leases workers hold.

One type per concept, so that no field means different things for different
kinds of work:

- a ``Task`` is one submission: its payload, options, state and Deferred;
- a ``Job`` is a map, whose items are cut into ``Chunk``\\ s as they arrive;
- what a worker holds is a *lease*, and a lease is one of three things: a
  single ``Task``, a ``Chunk`` of a job's items, or a ``Group`` of queued
  quick tasks of one type sent as one chunk (each member keeps its own
  record, outcome and Deferred).

Tasks and chunks wait in the queue; groups are only ever formed at the moment
of leasing.  The classes use ``__slots__``: a million queued tasks must stay
within a few hundred bytes each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from taskmesh.core.chunking import ChunkSizer
from taskmesh.store.interface import State
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions

if TYPE_CHECKING:
    from taskmesh.core.scheduler import WorkerState

#: A job's answers as items finish: [(index, status, value), ...].
JobReport = Callable[["Job", list[tuple[int, int, bytes]]], None]


class Task:
    """One task the scheduler is responsible for until its Deferred fires."""

    __slots__ = (
        "_deferred",
        "attempts",
        "id",
        "leased_at",
        "losses",
        "options",
        "payload",
        "seq",
        "state",
        "submitted_at",
        "timer",
        "type",
        "watched",
        "worker",
    )

    def __init__(
        self, task_id: int, task_type: str, payload: bytes, options: TaskOptions, submitted_at: float
    ) -> None:
        self.id = task_id
        self.type = task_type
        self.payload = payload
        self.options = options
        self.submitted_at = submitted_at
        self._deferred: Deferred[bytes] | None = None
        #: Whether the scheduler's ``on_outcome`` is to be told the outcome
        #: (cheaper than a Deferred for each task a client waits for).
        self.watched = False
        self.state = State.QUEUED
        #: Attempts that failed (timed out, or raised with retries on error).
        self.attempts = 0
        #: Times this task's worker was lost while it held the task.
        self.losses = 0
        #: The worker running it (alone, or as a member of a group).
        self.worker: WorkerState | None = None
        #: The pending timeout (while running) or retry (while waiting to retry).
        self.timer: IDelayedCall | None = None
        #: Place in line among equal priorities.
        self.seq = task_id
        #: When last leased; negative: never (what /metrics reports run times of).
        self.leased_at = -1.0

    @property
    def deferred(self) -> Deferred[bytes]:
        """
        The task's one Deferred, made when someone first waits for the task:
        a million queued tasks that nobody is waiting on (submitted with
        ``enqueue``) cost no Deferreds.  It fires exactly once, when the
        outcome is durable.
        """
        if self._deferred is None:
            self._deferred = Deferred()
        return self._deferred

    @property
    def fired(self) -> Deferred[bytes] | None:
        """The Deferred if anyone asked for it (so it must be fired), else None."""
        return self._deferred

    @property
    def priority(self) -> int:
        return self.options.priority

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.type} {self.state.name}>"


class Job:
    """
    A map: many items of one type, cut into chunks as they arrive and as
    workers have room, answered item by item through ``report``.  Jobs live
    in memory only: the submitter holds the items it has not had answers
    for, and sends them again if the scheduler restarts.
    """

    __slots__ = (
        "buffer",
        "chunks",
        "ended",
        "id",
        "options",
        "outstanding",
        "failed",
        "opened_at",
        "priority",
        "received",
        "report",
        "sizer",
        "type",
    )

    def __init__(
        self, job_id: int, task_type: str, priority: int, sizer: ChunkSizer, report: JobReport
    ) -> None:
        self.id = job_id
        self.type = task_type
        self.priority = priority
        #: Its chunks' options: they queue at the job's priority.
        self.options = TaskOptions(priority=priority) if priority else DEFAULT_OPTIONS
        self.sizer = sizer
        #: Called with the job and [(index, status, value), ...] as items finish.
        self.report = report
        #: Items received and not yet cut into a chunk: (index, payload).
        self.buffer: deque[tuple[int, bytes]] = deque()
        #: Live chunks (queued or leased) by id.
        self.chunks: dict[int, Chunk] = {}
        #: Items received and not yet answered.
        self.outstanding = 0
        self.received = 0
        self.ended = False
        #: For monitoring: items answered with a failure, and when the job was opened.
        self.failed = 0
        self.opened_at = 0.0


class Chunk:
    """
    Consecutive items of one job, queued and leased as one: one assignment,
    one slot, answered in one or more parts, in order.
    """

    __slots__ = (
        "answered",
        "id",
        "indexes",
        "job",
        "leased_at",
        "losses",
        "payloads",
        "seq",
        "type",
        "worker",
    )

    def __init__(self, chunk_id: int, job: Job, indexes: list[int], payloads: list[bytes], seq: int) -> None:
        self.id = chunk_id
        self.type = job.type
        self.job = job
        #: The items' indexes in the job, and their payloads, in the same order.
        self.indexes = indexes
        self.payloads = payloads
        #: How many of its items (from the first) have been answered.
        self.answered = 0
        #: Times its worker was lost while it held the chunk.
        self.losses = 0
        self.seq = seq
        self.worker: WorkerState | None = None
        self.leased_at = 0.0

    @property
    def priority(self) -> int:
        return self.job.priority

    @property
    def size(self) -> int:
        return len(self.payloads)

    def __repr__(self) -> str:
        return f"<Chunk {self.id} of job {self.job.id}: {len(self.payloads)} items>"


class Group:
    """
    Queued quick tasks of one type leased together as one chunk.  The group
    holds the lease (one slot, one answer); each member is still its own
    task, finished, retried or cancelled on its own.
    """

    __slots__ = ("answered", "id", "leased_at", "members", "type", "worker")

    def __init__(self, group_id: int, members: list[Task], worker: WorkerState, leased_at: float) -> None:
        self.id = group_id
        self.type = members[0].type
        self.members = members
        #: How many of its members (from the first) have been answered.
        self.answered = 0
        self.worker = worker
        self.leased_at = leased_at

    @property
    def size(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<Group {self.id} of {len(self.members)} {self.type} tasks>"


#: What waits in the queue.
Queued = Task | Chunk
#: What a worker holds.
Lease = Task | Chunk | Group
