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


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), with the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), +Inf last: Prometheus' buckets."""
        running = 0
        out: list[tuple[str, int]] = []
        for bound, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), self.counts):
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
