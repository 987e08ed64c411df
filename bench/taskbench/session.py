"""
One cluster measured through a client: warmed up, then the throughput runs,
then the latency runs, on the same processes, then stopped.

The throughput and latency measurements share their cluster (one start-up and
warm-up for both), and the scaling measurement uses the same session with
another worker count and no latency, so the sequence lives here, once.
"""

from __future__ import annotations

import argparse
import cProfile
import time
from pathlib import Path
from typing import Any

from taskbench.client import close, expected_digests, payloads, warm_up
from taskbench.common import say
from taskbench.latency import measure_latency
from taskbench.processes import Cluster, ClusterFactory
from taskbench.results import ClusterResults, StoreResults
from taskbench.throughput import measure_throughput
from taskmesh import Client


async def bench_cluster(
    reactor: Any,
    args: argparse.Namespace,
    cluster: Cluster,
    latency: bool,
    profiler: cProfile.Profile | None = None,
    throughput: bool = True,
) -> ClusterResults:
    """Start a cluster, warm it up, measure it ``--runs`` times, stop it."""
    say(
        f"[{cluster.label}] starting a scheduler and {cluster.workers} worker(s) "
        f"(concurrency {cluster.concurrency}) in {cluster.folder}"
    )
    started = time.monotonic()
    try:
        await cluster.start(reactor, args.startup_timeout)
        ready = time.monotonic() - started
        say(f"[{cluster.label}] ready at {cluster.address} in {ready:.2f} s; warming up")
        results = ClusterResults(cluster.workers, cluster.concurrency, ready)
        client = await Client.connect(cluster.address, reactor, timeout=args.startup_timeout)
        try:
            await warm_up(client, args.warmup, reactor, args.timeout)
            texts = payloads(args.tasks)
            want = expected_digests(texts)
            for n in range(1, (args.runs if throughput else 0) + 1):
                run = await measure_throughput(client, texts, want, reactor, args.timeout, profiler)
                results.throughput.append(run)
                say(
                    f"[{cluster.label}] throughput run {n}/{args.runs}: "
                    f"{run.tasks_per_s:,.0f} tasks/s ({run.tasks} in {run.elapsed_s:.3f} s, "
                    f"submit loop {run.submit_s * 1000:.1f} ms); digests checked"
                )
            if latency and args.latency_rounds > 0:
                texts = payloads(args.latency_rounds)
                want = expected_digests(texts)
                for n in range(1, args.runs + 1):
                    lat = await measure_latency(client, texts, want, reactor, args.timeout)
                    results.latency.append(lat)
                    say(
                        f"[{cluster.label}] latency run {n}/{args.runs}: p50 {lat.p50_ms:.3f} ms, "
                        f"p90 {lat.p90_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms"
                    )
        finally:
            await close(client, reactor)
        return results
    finally:
        cluster.stop()


async def run_main(
    reactor: Any,
    args: argparse.Namespace,
    stores: dict[str, StoreResults],
    new_cluster: ClusterFactory,
    profile_dir: Path | None,
) -> None:
    """
    The throughput and latency measurements, store after store, each on a
    ``main`` cluster of ``--workers`` workers.  With ``--profile``, the
    client is profiled during the throughput runs (not the latency ones,
    whose time is mostly spent waiting).
    """
    for store, results in stores.items():
        profiler = cProfile.Profile() if profile_dir else None
        results.main = await bench_cluster(
            reactor,
            args,
            new_cluster("main", store, args.workers),
            latency=True,
            profiler=profiler,
            throughput=not args.no_throughput,
        )
        if profiler is not None and profile_dir is not None and not args.no_throughput:
            profiler.dump_stats(profile_dir / f"{store}-client.prof")
