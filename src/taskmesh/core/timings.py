"""
Fixed-bucket histograms the core fills as tasks finish (one bisect and two
additions per task, inline in the core: no call), so that ``/metrics`` can
report run time and queue wait by type without keeping any per-task record.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds in seconds: from a millisecond (quick tasks in groups) to ten minutes.
BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    300.0,
    600.0,
)


#: Upper bounds in seconds of a store's commit durations: from 100 µs (the
#: memory store, a small SQLite transaction) to ten seconds (a stalled disk).
COMMIT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), with the sum."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), +Inf last: Prometheus' buckets."""
        running = 0
        out: list[tuple[str, int]] = []
        for bound, count in zip((*(repr(b) for b in self.buckets), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class TypeCounters:
    """
    What the core counts of one task type as its tasks finish: finished
    tasks by state (a list indexed by the state's number) and the run time
    and queue wait histograms.  One object per type, so a finishing task
    costs one dictionary lookup for all three.
    """

    __slots__ = ("finished", "run", "wait")

    def __init__(self, states: int) -> None:
        self.finished = [0] * states
        self.run = Histogram()
        self.wait = Histogram()


class RunCounters:
    """
    What a worker counts of one task type: items (tasks, or a chunk's
    items) that succeeded, failed or asked for a retry, and how long each
    slot was held (one observation per task, group or chunk: a slot's work).
    """

    __slots__ = ("failed", "retried", "run", "succeeded")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.run = Histogram()


class WorkerStats:
    """
    A worker process's counters for its own ``/metrics``: kept by the
    worker's factory, so they outlive a reconnection (each connection has
    a core of its own), and filled by the core as work finishes.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        #: Task type -> its counters, made as its first work finishes.
        self.by_type: dict[str, RunCounters] = {}

    def counters(self, task_type: str) -> RunCounters:
        found = self.by_type.get(task_type)
        if found is None:
            found = self.by_type[task_type] = RunCounters()
        return found
