"""
The three clients side by side, on bench.py's throughput and latency workload.

    python bench/clients.py                  # 10,000 tasks x 3 runs, 1,000 round trips, each client
    python bench/clients.py --tasks 2000 --latency-rounds 200 --runs 1

A scheduler (in-memory store, as bench.py's first column; ``--store sqlite``
for the SQLite one) and ``--workers`` workers are started as ``twistd -n``
subprocesses on a loopback port; then each client runs in a process of its
own (the blocking client starts its own reactor thread, the asyncio client
must have no reactor at all):

- throughput: ``--tasks`` sha256 tasks (payload ``task-<i>``), one call per
  task from one thread, all submitted before any is awaited, then every result
  gathered in order; tasks/s from the first call to the last result, every
  digest checked.  Twisted: ``client.submit`` then ``gatherResults``; blocking:
  ``client.start`` (a handle) then ``handle.result()`` each; asyncio:
  ``client.submit`` (a future) then ``asyncio.gather``;
- latency: ``--latency-rounds`` sequential submit-and-wait round trips: p50
  and p90 in milliseconds (blocking: ``client.submit``, which waits).

The median of ``--runs`` throughput runs is reported.  Results go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("twisted", "blocking", "asyncio")


def texts(count: int) -> list[str]:
    return [f"task-{i}" for i in range(count)]


def check(got: list[bytes], sent: list[str]) -> None:
    want = [hashlib.sha256(t.encode()).hexdigest().encode() for t in sent]
    if got != want:
        wrong = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise SystemExit(f"wrong digest for {sent[wrong]!r}: {got[wrong]!r}")


def percentile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(runs: list[float], samples: list[float]) -> dict[str, Any]:
    ordered = sorted(s * 1000 for s in samples)
    return {
        "tasks_per_s": statistics.median(runs),
        "runs": runs,
        "p50_ms": percentile(ordered, 50) if ordered else None,
        "p90_ms": percentile(ordered, 90) if ordered else None,
    }


# -- one client, in its own process ----------------------------------------------


def measure_blocking(address: str, tasks: int, rounds: int, runs: int) -> dict[str, Any]:
    import taskmesh

    client = taskmesh.connect(address, wait_timeout=300)
    for handle in [client.start(t) for t in texts(500)]:  # warm-up
        handle.result()
    rates = []
    for _ in range(runs):
        sent = texts(tasks)
        started = time.perf_counter()
        handles = [client.start(t) for t in sent]
        got = [handle.result() for handle in handles]
        rates.append(tasks / (time.perf_counter() - started))
        check(got, sent)
    samples = []
    for t in texts(rounds):
        started = time.perf_counter()
        client.submit(t)
        samples.append(time.perf_counter() - started)
    client.close()
    return summary(rates, samples)


def measure_asyncio(address: str, tasks: int, rounds: int, runs: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        import taskmesh.aio

        client = await taskmesh.aio.connect(address)
        await asyncio.gather(*(client.submit(t) for t in texts(500)))  # warm-up
        rates = []
        for _ in range(runs):
            sent = texts(tasks)
            started = time.perf_counter()
            futures = [client.submit(t) for t in sent]
            got = await asyncio.gather(*futures)
            rates.append(tasks / (time.perf_counter() - started))
            check(list(got), sent)
        samples = []
        for t in texts(rounds):
            started = time.perf_counter()
            await client.submit(t)
            samples.append(time.perf_counter() - started)
        await client.close()
        out = summary(rates, samples)
        out["reactor_imported"] = "twisted.internet.reactor" in sys.modules
        return out

    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())  # type: ignore[no-any-return]


def measure(kind: str, address: str, tasks: int, rounds: int, runs: int, result: Path) -> None:
    if kind == "twisted":
        # task.react exits the process: write the result from inside.
        from twisted.internet import task
        from twisted.internet.defer import gatherResults

        from taskmesh import Client

        async def main(reactor: Any) -> None:
            client = await Client.connect(address, reactor)
            await gatherResults([client.submit(t) for t in texts(500)])
            rates = []
            for _ in range(runs):
                sent = texts(tasks)
                started = time.perf_counter()
                got = await gatherResults([client.submit(t) for t in sent])
                rates.append(tasks / (time.perf_counter() - started))
                check(got, sent)
            samples = []
            for t in texts(rounds):
                started = time.perf_counter()
                await client.submit(t)
                samples.append(time.perf_counter() - started)
            await client.close()
            result.write_text(json.dumps(summary(rates, samples)))

        from twisted.internet.defer import ensureDeferred

        task.react(lambda reactor: ensureDeferred(main(reactor)))
    found = measure_blocking(address, tasks, rounds, runs) if kind == "blocking" else None
    if kind == "asyncio":
        found = measure_asyncio(address, tasks, rounds, runs)
    result.write_text(json.dumps(found))


# -- the run ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency-rounds", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--clients", default=",".join(KINDS), help="which clients, in order")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "ADDRESS", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, address, result = args.measure
        measure(kind, address, args.tasks, args.latency_rounds, args.runs, Path(result))
        return

    from taskmesh.testing import Mesh

    with tempfile.TemporaryDirectory(prefix="taskmesh-clients-") as folder:
        os.environ["XDG_CONFIG_HOME"] = str(Path(folder) / "config")  # a fresh secret, made by the scheduler
        os.environ.pop("TASKMESH_SECRET", None)
        mesh = Mesh(Path(folder), store="memory" if args.store == "memory" else "taskmesh.sqlite")
        with mesh:
            mesh.scheduler()
            mesh.workers(*(f"w{i}" for i in range(1, args.workers + 1)))
            figures: dict[str, Any] = {}
            for kind in args.clients.split(","):
                result = Path(folder) / f"{kind}.json"
                command = [sys.executable, __file__, "--measure", kind, mesh.address, str(result)]
                command += ["--tasks", str(args.tasks), "--latency-rounds", str(args.latency_rounds)]
                command += ["--runs", str(args.runs)]
                subprocess.run(command, check=True, timeout=600)
                figures[kind] = json.loads(result.read_text())
                print(f"{kind}: {figures[kind]}", file=sys.stderr, flush=True)
    base = figures.get("twisted")
    print(f"{'client':<10} {'tasks/s':>10} {'vs twisted':>11} {'p50 ms':>8} {'p90 ms':>8}")
    for kind, found in figures.items():
        ratio = f"{found['tasks_per_s'] / base['tasks_per_s']:.0%}" if base else "-"
        rate, p50, p90 = found["tasks_per_s"], found["p50_ms"], found["p90_ms"]
        print(f"{kind:<10} {rate:>10,.0f} {ratio:>11} {p50:>8.3f} {p90:>8.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
