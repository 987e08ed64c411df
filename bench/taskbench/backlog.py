"""
The backlog: how much memory the scheduler needs a queued task.  A scheduler
with no worker is given ``--backlog-tasks`` tasks through
``Client.enqueue()``; its ``VmRSS`` is read before and after, and the growth
is divided by the tasks.  The enqueue rate (acknowledged, hence durable,
tasks a second) comes with it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import TimeoutError

from taskbench.client import close, gather
from taskbench.common import BenchError, say
from taskbench.processes import POLL_INTERVAL, Cluster, ClusterFactory, memory_of
from taskbench.results import BacklogRun, StoreResults
from taskmesh import Client

#: /proc/PID/status figures kept in the JSON of a backlog run.
MEMORY_FIGURES = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def sqlite_bytes(folder: Path) -> int | None:
    """What the SQLite store holds on disk: the database, its WAL and WAL index."""
    files = list(folder.glob("taskmesh.sqlite*"))
    return sum(path.stat().st_size for path in files) if files else None


async def bench_backlog(reactor: Any, args: argparse.Namespace, cluster: Cluster) -> BacklogRun:
    """
    One backlog run on a fresh scheduler with no worker: warm up by
    enqueueing a first batch, read the scheduler's VmRSS, enqueue
    ``--backlog-tasks`` more in batches of ``--backlog-batch`` (each batch
    acknowledged before the next is sent, so the client's own memory stays
    bounded), wait until status() counts them all as queued, read VmRSS again.

    Every acknowledgement must carry a task id, all different: a backlog of
    refused or merged tasks would measure nothing.
    """
    say(f"[{cluster.label}] starting a scheduler with no worker in {cluster.folder}")
    count = args.backlog_tasks
    try:
        await cluster.start(reactor, args.startup_timeout)
        client = await Client.connect(cluster.address, reactor, timeout=args.startup_timeout)
        try:
            ids: set[int] = set()
            if args.warmup:
                warm = [client.enqueue(f"warmup-{i}") for i in range(args.warmup)]
                ids.update(await gather("backlog warm-up", warm, reactor, args.timeout))
            await wait_queued(reactor, client, len(ids), args.timeout, cluster.label)
            before = memory_of(cluster, "scheduler")
            say(
                f"[{cluster.label}] ready at {cluster.address}; scheduler RSS "
                f"{before['VmRSS'] / 1024:.1f} MiB; enqueueing {count:,} tasks"
            )
            started = time.perf_counter()
            for first in range(0, count, args.backlog_batch):
                batch = [
                    client.enqueue(f"task-{i}") for i in range(first, min(count, first + args.backlog_batch))
                ]
                ids.update(await gather("backlog", batch, reactor, args.timeout))
            await wait_queued(reactor, client, args.warmup + count, args.timeout, cluster.label)
            elapsed = time.perf_counter() - started
            after = memory_of(cluster, "scheduler")
            if len(ids) != args.warmup + count:
                raise BenchError(
                    f"{cluster.label}: {len(ids):,} distinct task ids for {args.warmup + count:,} tasks"
                )
        finally:
            await close(client, reactor)
        store_bytes = sqlite_bytes(cluster.folder)
    finally:
        cluster.stop()
    growth = after["VmRSS"] - before["VmRSS"]
    run = BacklogRun(
        tasks=count,
        enqueue_s=elapsed,
        tasks_per_s=count / elapsed,
        rss_before_kb=before["VmRSS"],
        rss_after_kb=after["VmRSS"],
        bytes_per_task=growth * 1024 / count,
        memory_before_kb={key: before[key] for key in MEMORY_FIGURES if key in before},
        memory_after_kb={key: after[key] for key in MEMORY_FIGURES if key in after},
        store_file_bytes=store_bytes,
    )
    say(
        f"[{cluster.label}] backlog: {count:,} queued in {elapsed:.1f} s "
        f"({run.tasks_per_s:,.0f} tasks/s); scheduler RSS {before['VmRSS'] / 1024:.1f} -> "
        f"{after['VmRSS'] / 1024:.1f} MiB, {run.bytes_per_task:,.0f} bytes a queued task"
        + (f"; SQLite files {store_bytes / 2**20:.1f} MiB" if store_bytes else "")
    )
    return run


async def wait_queued(reactor: Any, client: Client, count: int, timeout: float, label: str) -> None:
    """Poll status() until the scheduler counts ``count`` queued tasks (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        asking = client.status()
        asking.addTimeout(max(0.1, deadline - time.monotonic()), reactor)
        try:
            queued = (await asking)["tasks"]["queued"]
        except TimeoutError:
            raise BenchError(f"{label}: the scheduler did not answer status() within {timeout:g} s") from None
        if queued == count:
            return
        if queued > count or time.monotonic() > deadline:
            raise BenchError(f"{label}: the scheduler has {queued:,} tasks queued, expected {count:,}")
        await task.deferLater(reactor, POLL_INTERVAL, lambda: None)


async def run_backlog(
    reactor: Any,
    args: argparse.Namespace,
    stores: dict[str, StoreResults],
    new_cluster: ClusterFactory,
) -> None:
    """
    Every backlog run, each on a fresh scheduler with no worker, alternating
    stores run by run so that a machine getting busier does not favour one.
    """
    # Above the backlog, so that the queue's bound never pauses the client:
    # a paused client's status() requests are not read either.
    bound = ["--max-queued", str(2 * (args.backlog_tasks + args.warmup))]
    for n in range(1, args.backlog_runs + 1):
        for store, results in stores.items():
            results.backlog.append(
                await bench_backlog(reactor, args, new_cluster(f"backlog-{n}", store, 0, bound))
            )
