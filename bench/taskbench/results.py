"""
The numbers each measurement produces, as plain dataclasses.

They are the JSON's schema too: report.py writes them with ``asdict()``, so a
field added, renamed or removed here changes the JSON file (bump
``report.JSON_SCHEMA`` when a field changes meaning).  They live together, and
apart from the code that measures them, so that the measurements, the report
and the orchestration in cli.py can all use them without import cycles.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

#: Process name of the ``taskmesh map`` command in the results.
MAP_CLIENT = "map-client"


@dataclass
class ThroughputRun:
    """One throughput run: every task submitted at once, every result awaited."""

    tasks: int
    elapsed_s: float  # first submit() to last result
    submit_s: float  # the loop of submit() calls alone (client-side cost)
    tasks_per_s: float


@dataclass
class LatencyRun:
    """One latency run: sequential round trips, in milliseconds."""

    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


@dataclass
class MapRun:
    """One ``taskmesh map`` run on a fresh cluster."""

    lines: int
    elapsed_s: float  # spawn of `taskmesh map` to its exit: start-up and line count included
    tasks_per_s: float
    #: Peak RSS in kB: VmHWM of the scheduler and of each worker (read before
    #: they stop, so it covers their warm-up too), and the map command's
    #: ru_maxrss from wait4 in its wrapper (see processes.MEASURED_COMMAND).
    peak_rss_kb: dict[str, int]
    #: The wrapper's own peak when it started the command: the command's
    #: figure is its own only above this (it always is, by far).
    client_rss_floor_kb: int


@dataclass
class BacklogRun:
    """One backlog run on a fresh scheduler with no worker."""

    tasks: int
    enqueue_s: float  # first enqueue() to status() reporting every task queued
    tasks_per_s: float  # the enqueue rate: acknowledged (durable) tasks a second
    rss_before_kb: int  # the scheduler's VmRSS after the warm-up
    rss_after_kb: int  # ... with the backlog queued
    bytes_per_task: float  # (after - before) / tasks
    memory_before_kb: dict[str, int]
    memory_after_kb: dict[str, int]
    store_file_bytes: int | None  # the SQLite files on disk (database, WAL, index); None in memory


@dataclass
class ClusterResults:
    """The runs made on one cluster: the main one (throughput and latency), or a scaling count."""

    workers: int
    concurrency: int
    ready_s: float  # start of the scheduler to every worker joined
    throughput: list[ThroughputRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)

    def median_tasks_per_s(self) -> float:
        """The figure the scaling speedups are computed from."""
        return statistics.median(run.tasks_per_s for run in self.throughput)


@dataclass
class StoreResults:
    """Every measurement made with one store."""

    store: str
    scheduler_args: list[str]
    main: ClusterResults | None = None  # throughput and latency
    map: list[MapRun] = field(default_factory=list)
    backlog: list[BacklogRun] = field(default_factory=list)
    scaling: list[ClusterResults] = field(default_factory=list)
