"""
Where one scheduler's ceiling is: its CPU time per task.

Starts a real scheduler (``--store memory``, ``sqlite`` or ``postgres``: a
throwaway PostgreSQL cluster) and workers on loopback, submits ``--tasks``
sha256 tasks through ``taskmesh.Client`` in batches, and reads the
scheduler's and the workers' CPU time (utime + stime of ``/proc/PID/stat``)
before and after.  The scheduler's CPU seconds per task bound what one
scheduler can carry on one core: 1 / (CPU per task) tasks/s, whatever the
number of workers.  Every result is checked against hashlib.

    python bench/ceiling.py --store sqlite --tasks 20000 --workers 2 --concurrency 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(address: str, tasks: int, batch: int) -> float:
    """Submit every task (``batch`` in flight at most), check each digest; wall seconds."""
    from twisted.internet import task
    from twisted.internet.defer import Deferred, gatherResults

    from taskmesh import Client

    elapsed: list[float] = []

    async def main(reactor: Any) -> None:
        client = await Client.connect(address, reactor)
        started = time.monotonic()
        for first in range(0, tasks, batch):
            payloads = [f"ceiling-{i}" for i in range(first, min(tasks, first + batch))]
            results = await gatherResults([client.submit(p) for p in payloads])
            for payload, result in zip(payloads, results):
                if result.decode() != hashlib.sha256(payload.encode()).hexdigest():
                    raise SystemExit(f"wrong digest for {payload}")
        elapsed.append(time.monotonic() - started)
        print(f"{elapsed[0]:.3f}", flush=True)  # react() exits the process: say it here
        await client.close()

    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    return elapsed[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--store", choices=("memory", "sqlite", "postgres"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=2000, help="tasks in flight at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    # (--run ADDRESS TASKS BATCH: the client's own process)
    arguments, rest = parser.parse_known_args()
    if arguments.run:  # the measuring client, in a process of its own (its own reactor)
        address, tasks, batch = rest[0], int(rest[1]), int(rest[2])
        measure(address, tasks, batch)
        return

    import subprocess

    from taskmesh.testing import Mesh, child_env

    folder = Path(tempfile.mkdtemp(prefix="taskmesh-ceiling-"))
    cluster = None
    store = {"memory": "memory", "sqlite": str(folder / "ceiling.sqlite")}.get(arguments.store)
    if store is None:
        from taskmesh.testing_postgres import PostgresCluster

        cluster = PostgresCluster()
        cluster.start()
        store = cluster.create_database("ceiling")
    try:
        with Mesh(folder, store=store) as mesh:
            scheduler = mesh.scheduler("scheduler", "--web", "none")
            names = [f"w{n}" for n in range(arguments.workers)]
            workers = mesh.workers(*names, concurrency=arguments.concurrency)
            pids = [scheduler.popen.pid, *(worker.popen.pid for worker in workers)]
            before = [cpu_seconds(pid) for pid in pids]
            rss_before = rss_kib(scheduler.popen.pid)
            run = subprocess.run(
                [sys.executable, __file__, "--run", mesh.address, str(arguments.tasks), str(arguments.batch)],
                capture_output=True,
                text=True,
                timeout=600,
                env=child_env(),
            )
            if run.returncode != 0:
                raise SystemExit(f"the client failed: {run.stderr[-2000:]}")
            wall = float(run.stdout.split()[-1])
            after = [cpu_seconds(pid) for pid in pids]
            spent = [b - a for a, b in zip(before, after)]
            rss_after = rss_kib(scheduler.popen.pid)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(f"store                          {arguments.store}")
    print(f"tasks                          {arguments.tasks} ({arguments.batch} in flight)")
    print(f"workers x slots                {arguments.workers} x {arguments.concurrency}")
    print(f"tasks/s                        {arguments.tasks / wall:,.0f}")
    print(f"scheduler CPU per task         {spent[0] / arguments.tasks * 1e6:,.0f} us")
    print(f"scheduler CPU share of wall    {spent[0] / wall:.0%}")
    print(f"workers CPU per task           {sum(spent[1:]) / arguments.tasks * 1e6:,.0f} us")
    print(
        f"ceiling on one core            {arguments.tasks / spent[0]:,.0f} tasks/s"
        " (1 / scheduler CPU per task)"
    )
    print(f"scheduler RSS before/after     {rss_before / 1024:.1f} / {rss_after / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
