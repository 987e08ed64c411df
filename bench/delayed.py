"""
What delayed tasks cost the scheduler's memory (a benchmark, not a test).

A real scheduler (``twistd -n taskmesh-scheduler``, SQLite store by default)
on loopback; a client process of its own enqueues ``--tasks`` tasks delayed
by ``--delay`` seconds (beyond the scheduler's horizon, so they stay in the
store), and the scheduler's resident memory (VmRSS, from /proc/PID/status)
is read before, after a first ``--first`` of them, and after all of them.
For comparison, the same number of tasks without a delay (queued in memory,
no worker to run them) on a fresh scheduler.

    .venv/bin/python bench/delayed.py                      # 100,000 tasks delayed by an hour
    .venv/bin/python bench/delayed.py --tasks 20000 --store memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from taskmesh.testing import Mesh
except ImportError as e:
    sys.exit(f"delayed: {e}; run this with the Python that has taskmesh installed (.venv/bin/python)")

#: Runs in a child Python, so the benchmark's own process holds no reactor and no tasks.
CLIENT = """
import json, sys
from twisted.internet import defer, task
from taskmesh import Client

address, count, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
options = {"delay": delay} if delay else {}

async def main(reactor):
    client = await Client.connect(address, reactor)
    window = 5000
    for start in range(0, count, window):
        await defer.gatherResults(
            [client.enqueue(f"task-{start + i}", **options) for i in range(min(window, count - start))]
        )
    status = await client.status()
    await client.close()
    print(json.dumps(status["tasks"]))

task.react(main)
"""


def rss_kib(pid: int) -> int:
    """The process's resident set size, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def enqueue(mesh: Mesh, count: int, delay: float) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, mesh.address, str(count), str(delay)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client failed:\n{done.stderr}")
    tasks: dict[str, int] = json.loads(done.stdout)
    return tasks


def settled_rss(pid: int) -> int:
    """RSS once the scheduler has finished committing (two equal readings 0.5 s apart, 10 s at most)."""
    last = rss_kib(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def measure(store: str, tasks: int, first: int, delay: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder, Mesh(Path(folder), store=store) as mesh:
        scheduler = mesh.scheduler("scheduler")
        pid = scheduler.popen.pid
        before = settled_rss(pid)
        began = time.perf_counter()
        counts = enqueue(mesh, first, delay)
        after_first = settled_rss(pid)
        counts = enqueue(mesh, tasks - first, delay)
        seconds = time.perf_counter() - began
        after = settled_rss(pid)
        return {
            "store": store,
            "delay_s": delay,
            "tasks": tasks,
            "rss_before_kib": before,
            f"rss_after_{first}_kib": after_first,
            f"rss_after_{tasks}_kib": after,
            "growth_kib": after - before,
            "growth_after_first_kib": after - after_first,
            "enqueue_per_s": round(tasks / seconds),
            "status_tasks": counts,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=1000, help="tasks after which RSS is read once more")
    parser.add_argument("--delay", type=float, default=3600.0, help="seconds (beyond the 60 s horizon)")
    parser.add_argument("--store", default="taskmesh.sqlite", help="'memory' or an SQLite file name")
    parser.add_argument("--no-control", action="store_true", help="skip the run without a delay")
    args = parser.parse_args()
    results = [measure(args.store, args.tasks, args.first, args.delay)]
    if not args.no_control:
        results.append(measure(args.store, args.tasks, args.first, 0.0))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
