"""
The map: the real ``taskmesh map`` command, in a process of its own, over an
input file of ``--map-lines`` lines, against a freshly started cluster for
each run (so that each run's peak memory is its own).

Tasks per second from the command's start to its exit, which is what a user
waits for; the peak RSS of the scheduler, of each worker (``VmHWM``, read
before they stop) and of the command (``ru_maxrss``, read by the
MEASURED_COMMAND wrapper of processes.py); then every output line is checked,
in order, against hashlib.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import task

from taskbench.common import BenchError, say
from taskbench.processes import (
    POLL_INTERVAL,
    Cluster,
    ClusterFactory,
    installed_command,
    measured_command,
    memory_of,
)
from taskbench.results import MAP_CLIENT, MapRun, StoreResults


def write_lines(path: Path, count: int, prefix: str) -> None:
    """The map's input: ``PREFIX-<i>`` one per line, written in blocks."""
    with path.open("w", encoding="ascii") as stream:
        for start in range(0, count, 100_000):
            stream.write("".join(f"{prefix}-{i}\n" for i in range(start, min(count, start + 100_000))))


def check_map_output(label: str, path: Path, count: int, prefix: str) -> None:
    """Every output line is the digest of its input line, in order, and nothing else."""
    index = 0
    with path.open("rb") as stream:
        for index, line in enumerate(stream, 1):
            if index > count:
                raise BenchError(f"{label}: more than {count:,} output lines")
            want = hashlib.sha256(f"{prefix}-{index - 1}".encode("ascii")).hexdigest().encode("ascii")
            if line[:-1] != want or line[-1:] != b"\n":
                raise BenchError(
                    f"{label}: output line {index:,} is {line!r}; expected the digest of "
                    f"{prefix}-{index - 1}, {want.decode()}"
                )
    if index != count:
        raise BenchError(f"{label}: {index:,} output lines for {count:,} input lines")


async def run_map_command(
    reactor: Any,
    cluster: Cluster,
    name: str,
    source: Path,
    output: Path,
    timeout: float,
    profile_dir: Path | None,
) -> tuple[float, int, int]:
    """
    Run ``taskmesh map`` on ``source`` against the cluster, under the
    MEASURED_COMMAND wrapper, and wait for it (bounded): returns (seconds
    from its start to its exit, its peak RSS in kB, the wrapper's floor in
    kB).  If the deadline passes: BenchError, and the cluster's stop()
    stops the wrapper, hence the command, by pid.
    """
    taskmesh_script = installed_command("taskmesh")
    if profile_dir is None:
        command = [taskmesh_script]
    else:
        profile = profile_dir / f"{cluster.label}-{name}.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), taskmesh_script]
    measured = cluster.folder / f"{name}.json"
    process = cluster.run_command(
        name,
        measured_command(
            measured, [*command, "map", "--connect", cluster.address, "--output", str(output), str(source)]
        ),
    )
    deadline = time.monotonic() + timeout
    while process.popen.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"{cluster.label}: taskmesh map did not finish within {timeout:g} s")
        await task.deferLater(reactor, POLL_INTERVAL, lambda: None)
    if process.popen.returncode != 0:
        raise BenchError(
            f"{cluster.label}: taskmesh map exited with status {process.popen.returncode}:\n{process.tail()}"
        )
    result = json.loads(measured.read_text())
    if result["maxrss_kb"] <= result["floor_kb"]:
        raise BenchError(
            f"{cluster.label}: the map command's peak RSS ({result['maxrss_kb']} kB) is not above "
            f"its wrapper's ({result['floor_kb']} kB): it cannot be told apart"
        )
    return result["elapsed_s"], result["maxrss_kb"], result["floor_kb"]


async def bench_map(
    reactor: Any,
    args: argparse.Namespace,
    cluster: Cluster,
    source: Path,
    warmup: Path | None,
) -> MapRun:
    """
    One map run on a fresh cluster, so that each run's peaks are its own:
    start, warm up with a small map, time the big one, read the twistd
    processes' peaks before stopping them, then check every output line.
    """
    say(f"[{cluster.label}] starting a scheduler and {cluster.workers} worker(s) in {cluster.folder}")
    output = cluster.folder / "map-output.txt"
    try:
        await cluster.start(reactor, args.startup_timeout)
        if warmup is not None:
            say(
                f"[{cluster.label}] ready at {cluster.address}; warming up with a map of "
                f"{args.warmup:,} lines"
            )
            warm_output = cluster.folder / "warmup-output.txt"
            await run_map_command(reactor, cluster, "warmup-client", warmup, warm_output, args.timeout, None)
            check_map_output(f"{cluster.label} warm-up", warm_output, args.warmup, "warmup")
        elapsed, client_peak, floor = await run_map_command(
            reactor, cluster, MAP_CLIENT, source, output, args.timeout, cluster.profile_dir
        )
        peaks = {name: memory_of(cluster, name)["VmHWM"] for name in cluster.twistd_names()}
        peaks[MAP_CLIENT] = client_peak
    finally:
        cluster.stop()
    check_map_output(cluster.label, output, args.map_lines, "task")  # outside the timed part
    output.unlink()  # tens of MB a run; kept when the check fails
    run = MapRun(args.map_lines, elapsed, args.map_lines / elapsed, peaks, floor)
    say(
        f"[{cluster.label}] map: {run.tasks_per_s:,.0f} tasks/s ({run.lines:,} lines in "
        f"{elapsed:.2f} s); peak RSS "
        + ", ".join(f"{name} {kb / 1024:.1f} MiB" for name, kb in peaks.items())
        + "; every line checked"
    )
    return run


def command_startup_s(runs: int = 3) -> float:
    """
    Seconds ``taskmesh --version`` takes (the median of a few): the share of
    a map's time that is the command's start-up (interpreter and imports)
    rather than the map.  Run between clusters, so blocking is harmless.
    """
    script = installed_command("taskmesh")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            subprocess.run([script, "--version"], capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"{script} --version failed: {e}") from None
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run_map(
    reactor: Any,
    args: argparse.Namespace,
    stores: dict[str, StoreResults],
    new_cluster: ClusterFactory,
    workspace: Path,
) -> None:
    """
    Every map run: the input files written once, in the workspace, then
    ``--map-runs`` runs, alternating stores run by run so that a machine
    getting busier during the benchmark does not favour one store.
    """
    source = workspace / "map-input.txt"
    write_lines(source, args.map_lines, "task")
    warmup = None
    if args.warmup:
        warmup = workspace / "map-warmup.txt"
        write_lines(warmup, args.warmup, "warmup")
    for n in range(1, args.map_runs + 1):
        for store, results in stores.items():
            results.map.append(
                await bench_map(reactor, args, new_cluster(f"map-{n}", store, args.workers), source, warmup)
            )
    source.unlink()
