"""
Benchmark taskmesh end to end: a real scheduler and real workers (``twistd``
subprocesses on loopback TCP) driven through the public Python API.

    python bench/bench.py                      # the full run (about a minute)
    python bench/bench.py --tasks 2000 --latency-rounds 100 --runs 1 --no-scaling

It measures what a user of ``taskmesh.Client`` sees, not what a
microbenchmark of one module would:

1. submit throughput: ``--tasks`` sha256 tasks (payload ``task-<i>``), one
   ``submit()`` call each, all submitted at once; tasks/s from the first
   submit to the last result, every digest checked against hashlib;
2. round-trip latency: ``--latency-rounds`` sequential submit-and-await
   round trips; p50, p90 and p99 in milliseconds;
3. scaling: the throughput of (1) with 1, 2 and 4 workers.

Each measurement is repeated ``--runs`` times and the median is reported (with
the min and max, so the spread is visible).  A readable table goes to stdout,
progress to stderr, and everything (every run, the machine, the software) to
a JSON file, by default ``bench/results/latest.json``.

The twistd processes always stop, by pid (SIGTERM, a bounded wait, then
SIGKILL), whether the benchmark ends, fails or is interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import gc
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

try:
    import twisted
    from twisted.internet import task
    from twisted.internet.defer import Deferred, FirstError, TimeoutError, gatherResults
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    import taskmesh
    from taskmesh import Client
except ImportError as e:  # the usual mistake: a Python without taskmesh installed
    sys.exit(
        f"bench: {e} ({sys.executable}); run this with the Python that has taskmesh "
        "installed, e.g. .venv/bin/python bench/bench.py"
    )

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
#: Version of the JSON layout below; bump it when a field changes meaning.
JSON_SCHEMA = 1

#: The scheduler picks its own free port (port 0) and logs it; reading the
#: port back from this line avoids the race of probing for a free port first.
LISTENING = re.compile(r"scheduler listening on (?P<host>\S+):(?P<port>\d+) ")
JOINED = re.compile(r"worker (?P<name>bench-worker-\d+)@\S+ joined")
WORKER_CONNECTED = "connected to scheduler"

#: Seconds between two looks at a log file while waiting for a process.
POLL_INTERVAL = 0.05
#: Seconds a twistd process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0


#: ``python -c`` this, the profile's path, then twistd's arguments: twistd
#: under cProfile.  Not ``python -m cProfile twistd``: after a SIGTERM twistd
#: re-raises the signal to die by it, and cProfile never writes its file.
PROFILED_TWISTD = """
import cProfile, sys
from twisted.application import app
from twisted.scripts.twistd import run
path = sys.argv.pop(1)
sys.argv[0] = "twistd"
app._exitWithSignal = lambda signum: None
profile = cProfile.Profile()
profile.enable()
try:
    run()
finally:
    profile.disable()
    profile.dump_stats(path)
"""


class BenchError(Exception):
    """The benchmark cannot go on (a process died, a wait ran out, a wrong digest)."""


def say(message: str) -> None:
    """Progress for the person waiting: stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


# -- the processes under test ------------------------------------------------


def twistd_command() -> list[str]:
    """
    The ``twistd`` of the Python running this script, so that the processes
    under test run the same interpreter and the same taskmesh as the client.
    """
    beside = Path(sys.executable).parent / "twistd"
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if found is None:
        raise BenchError("twistd not found: run this with the Python that has taskmesh installed")
    return [found]


@dataclass
class Process:
    """One twistd subprocess and the files it writes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    output: Path  # stdout and stderr: tracebacks before twistd's log is open

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        text = self.log_text()
        try:
            text += self.output.read_text(errors="replace")
        except FileNotFoundError:
            pass
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


class Cluster:
    """
    A scheduler and its workers, each a ``twistd -n`` subprocess in a folder of
    their own.  ``start()`` returns once every worker has joined (bounded);
    ``stop()`` is synchronous, idempotent and safe to call from a shutdown
    trigger or atexit: that is what guarantees nothing is left running.
    """

    #: Every cluster not yet stopped, for the Ctrl-C and atexit paths.
    live: set["Cluster"] = set()

    def __init__(
        self,
        label: str,
        folder: Path,
        workers: int,
        concurrency: int,
        scheduler_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        profile_dir: Path | None = None,
    ) -> None:
        self.label = label
        self.folder = folder
        self.workers = workers
        self.concurrency = concurrency
        self.scheduler_args = list(scheduler_args)
        self.worker_args = list(worker_args)
        self.profile_dir = profile_dir
        self.processes: list[Process] = []
        self.address = ""

    def _spawn(self, name: str, arguments: list[str]) -> Process:
        if self.profile_dir is None:
            command = twistd_command()
        else:
            profile = self.profile_dir / f"{self.label}-{name}.prof"
            command = [sys.executable, "-c", PROFILED_TWISTD, str(profile)]
        log = self.folder / f"{name}.log"
        output = self.folder / f"{name}.out"
        with output.open("wb") as sink:
            popen = subprocess.Popen(
                [*command, "-n", f"--logfile={log.name}", *arguments],
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches only this
                # script, which then stops the processes itself (stop()).
                start_new_session=True,
            )
        process = Process(name, popen, log, output)
        self.processes.append(process)
        return process

    async def start(self, reactor: Any, timeout: float) -> None:
        """Start the scheduler, then the workers; wait until all have joined."""
        self.folder.mkdir(parents=True)
        Cluster.live.add(self)
        deadline = time.monotonic() + timeout
        scheduler = self._spawn(
            "scheduler",
            ["taskmesh-scheduler", "--listen", "tcp:0:interface=127.0.0.1", *self.scheduler_args],
        )
        listening = await self._wait_for(
            reactor, scheduler, deadline, "the scheduler to listen", self._port_of
        )
        self.address = f"127.0.0.1:{listening}"
        workers = [
            self._spawn(
                f"worker-{n}",
                [
                    "taskmesh-worker",
                    "--connect", self.address,
                    "--concurrency", str(self.concurrency),
                    "--name", f"bench-worker-{n}",
                    *self.worker_args,
                ],
            )
            for n in range(1, self.workers + 1)
        ]
        await self._wait_for(
            reactor, scheduler, deadline, f"{self.workers} worker(s) to join", self._all_joined
        )
        for worker in workers:
            await self._wait_for(
                reactor, worker, deadline, f"{worker.name} to connect",
                lambda text: WORKER_CONNECTED in text or None,
            )

    def _port_of(self, text: str) -> int | None:
        match = LISTENING.search(text)
        return int(match["port"]) if match else None

    def _all_joined(self, text: str) -> bool | None:
        joined = {match["name"] for match in JOINED.finditer(text)}
        return len(joined) >= self.workers or None

    async def _wait_for(
        self,
        reactor: Any,
        process: Process,
        deadline: float,
        what: str,
        found: Callable[[str], T | None],
    ) -> T:
        """Poll ``process``'s log until ``found(text)`` is not None; fail fast if anything dies."""
        while True:
            result = found(process.log_text())
            if result is not None:
                return result
            for each in self.processes:
                if each.popen.poll() is not None:
                    raise BenchError(
                        f"{self.label}: {each.name} exited with status {each.popen.returncode} "
                        f"while waiting for {what}:\n{each.tail()}"
                    )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.label}: timed out waiting for {what} ({process.log.name}):\n"
                    f"{process.tail()}"
                )
            await task.deferLater(reactor, POLL_INTERVAL, lambda: None)

    def stop(self) -> None:
        """SIGTERM every process by pid, wait (bounded), SIGKILL what is left."""
        Cluster.live.discard(self)
        running = [p for p in self.processes if p.popen.poll() is None]
        for process in running:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{self.label}: {process.name} (pid {process.popen.pid}) ignored SIGTERM; killing it")
                _signal(process, signal.SIGKILL)
                try:
                    process.popen.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    say(f"{self.label}: {process.name} (pid {process.popen.pid}) survived SIGKILL")

    @classmethod
    def stop_all(cls) -> None:
        for cluster in list(cls.live):
            cluster.stop()


def _signal(process: Process, signum: int) -> None:
    try:
        os.kill(process.popen.pid, signum)
    except ProcessLookupError:
        pass


# -- measurements --------------------------------------------------------------


def payloads(count: int) -> list[str]:
    return [f"task-{i}" for i in range(count)]


def expected_digests(texts: Sequence[str]) -> list[bytes]:
    """What the sha256 task type must answer, computed here, outside the timings."""
    return [hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii") for text in texts]


def check_digests(label: str, texts: Sequence[str], got: Sequence[bytes], want: Sequence[bytes]) -> None:
    """A benchmark of wrong answers measures nothing: any mismatch ends the run."""
    if len(got) != len(want):
        raise BenchError(f"{label}: {len(got)} results for {len(want)} tasks")
    wrong = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    if wrong:
        i = wrong[0]
        raise BenchError(
            f"{label}: {len(wrong)} wrong digests; first: {texts[i]!r} gave {got[i]!r}, "
            f"expected {want[i]!r}"
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), ``ordered`` sorted."""
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ThroughputRun:
    tasks: int
    elapsed_s: float  # first submit() to last result
    submit_s: float  # the loop of submit() calls alone (client-side cost)
    tasks_per_s: float


@dataclass
class LatencyRun:
    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


async def gather(label: str, pending: list[Deferred[bytes]], reactor: Any, timeout: float) -> list[bytes]:
    """All results in submission order, within ``timeout`` seconds, or BenchError."""
    gathered = gatherResults(pending, consumeErrors=True)
    gathered.addTimeout(timeout, reactor)
    try:
        return await gathered
    except TimeoutError:
        raise BenchError(f"{label}: not every result came within {timeout:g} s") from None
    except FirstError as e:
        raise BenchError(f"{label}: task {e.index} failed: {e.subFailure.value!r}") from None


async def warm_up(client: Client, count: int, reactor: Any, timeout: float) -> None:
    """
    Run a batch and a few round trips first, so that connection setup, first
    imports and cold caches are not charged to the first measured run.
    """
    if count <= 0:
        return
    texts = [f"warmup-{i}" for i in range(count)]
    results = await gather("warm-up", [client.submit(text) for text in texts], reactor, timeout)
    check_digests("warm-up", texts, results, expected_digests(texts))
    for text in texts[: min(20, count)]:
        await gather("warm-up", [client.submit(text)], reactor, timeout)


async def measure_throughput(
    client: Client, texts: list[str], want: list[bytes], reactor: Any, timeout: float,
    profiler: cProfile.Profile | None = None,
) -> ThroughputRun:
    """Submit every task at once, await them all, check every digest."""
    gc.collect()  # do not charge the previous run's garbage to this one
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    pending = [client.submit(text) for text in texts]
    submitted = time.perf_counter()
    results = await gather("throughput", pending, reactor, timeout)
    finished = time.perf_counter()
    if profiler is not None:
        profiler.disable()
    check_digests("throughput", texts, results, want)
    elapsed = finished - started
    return ThroughputRun(len(texts), elapsed, submitted - started, len(texts) / elapsed)


async def measure_latency(
    client: Client, texts: list[str], want: list[bytes], reactor: Any, timeout: float
) -> LatencyRun:
    """One task at a time: submit, await its result, then the next."""
    gc.collect()
    samples: list[float] = []
    results: list[bytes] = []
    for text in texts:
        started = time.perf_counter()
        result = client.submit(text)
        result.addTimeout(timeout, reactor)
        try:
            results.append(await result)
        except TimeoutError:
            raise BenchError(f"latency: no result for {text!r} within {timeout:g} s") from None
        except Exception as e:
            raise BenchError(f"latency: {text!r} failed: {e!r}") from None
        samples.append(time.perf_counter() - started)
    check_digests("latency", texts, results, want)
    ordered = sorted(sample * 1000 for sample in samples)
    return LatencyRun(
        rounds=len(ordered),
        p50_ms=percentile(ordered, 50),
        p90_ms=percentile(ordered, 90),
        p99_ms=percentile(ordered, 99),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        max_ms=ordered[-1],
    )


# -- one configuration ------------------------------------------------------------


@dataclass
class ClusterResults:
    workers: int
    concurrency: int
    ready_s: float  # start of the scheduler to every worker joined
    throughput: list[ThroughputRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)

    def median_tasks_per_s(self) -> float:
        return statistics.median(run.tasks_per_s for run in self.throughput)


async def bench_cluster(
    reactor: Any,
    args: argparse.Namespace,
    cluster: Cluster,
    latency: bool,
    profiler: cProfile.Profile | None = None,
) -> ClusterResults:
    """Start a cluster, warm it up, measure it ``--runs`` times, stop it."""
    say(f"[{cluster.label}] starting a scheduler and {cluster.workers} worker(s) "
        f"(concurrency {cluster.concurrency}) in {cluster.folder}")
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
            for n in range(1, args.runs + 1):
                run = await measure_throughput(client, texts, want, reactor, args.timeout, profiler)
                results.throughput.append(run)
                say(f"[{cluster.label}] throughput run {n}/{args.runs}: "
                    f"{run.tasks_per_s:,.0f} tasks/s ({run.tasks} in {run.elapsed_s:.3f} s, "
                    f"submit loop {run.submit_s * 1000:.1f} ms); digests checked")
            if latency and args.latency_rounds > 0:
                texts = payloads(args.latency_rounds)
                want = expected_digests(texts)
                for n in range(1, args.runs + 1):
                    lat = await measure_latency(client, texts, want, reactor, args.timeout)
                    results.latency.append(lat)
                    say(f"[{cluster.label}] latency run {n}/{args.runs}: p50 {lat.p50_ms:.3f} ms, "
                        f"p90 {lat.p90_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms")
        finally:
            closing = client.close()
            closing.addTimeout(5, reactor)
            try:
                await closing
            except Exception:
                pass  # the processes are stopped next anyway
        return results
    finally:
        cluster.stop()


# -- the report -------------------------------------------------------------------


def git_info(folder: Path) -> dict[str, Any] | None:
    """The commit of the taskmesh source measured, and whether it differs from it."""
    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *arguments],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", ".")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    from twisted.internet import reactor

    package = Path(taskmesh.__file__).resolve().parent
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "software": {
            "taskmesh": taskmesh.__version__,
            "taskmesh_path": str(package),
            "taskmesh_git": git_info(package),
            "twisted": twisted.__version__,
            "reactor": f"{type(reactor).__module__}.{type(reactor).__qualname__}",
        },
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(
    args: argparse.Namespace, env: dict[str, Any], main: ClusterResults,
    scaling: list[ClusterResults], started_at: str, duration: float,
) -> dict[str, Any]:
    """Everything as plain data: the JSON file, and the source of the table."""
    latency = None
    if main.latency:
        latency = {
            "rounds": args.latency_rounds,
            **{
                key: summary([getattr(run, f"{key}_ms") for run in main.latency])
                for key in ("p50", "p90", "p99", "mean")
            },
            "runs": [asdict(run) for run in main.latency],
        }
    return {
        "schema": JSON_SCHEMA,
        "started_at": started_at,
        "duration_s": round(duration, 3),
        "command": [sys.executable, *sys.argv],
        "config": {
            "tasks": args.tasks,
            "latency_rounds": args.latency_rounds,
            "warmup": args.warmup,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "scheduler_args": args.scheduler_args,
            "worker_args": args.worker_args,
            "runs": args.runs,
            "scaling": None if args.no_scaling else args.scaling,
            "profiled": args.profile is not None,
        },
        **env,
        "results": {
            "ready_s": main.ready_s,
            "throughput": {
                "workers": main.workers,
                "concurrency": main.concurrency,
                "tasks": args.tasks,
                "tasks_per_s": summary([run.tasks_per_s for run in main.throughput]),
                "runs": [asdict(run) for run in main.throughput],
            },
            "latency": latency,
            "scaling": None if args.no_scaling else [
                {
                    "workers": each.workers,
                    "concurrency": each.concurrency,
                    "tasks": args.tasks,
                    "tasks_per_s": summary([run.tasks_per_s for run in each.throughput]),
                    "speedup_vs_first": each.median_tasks_per_s() / scaling[0].median_tasks_per_s(),
                    "runs": [asdict(run) for run in each.throughput],
                }
                for each in scaling
            ],
        },
    }


def table(data: dict[str, Any]) -> str:
    """The report as a person reads it: medians first, then the spread."""
    config, results = data["config"], data["results"]
    machine, software = data["machine"], data["software"]
    git = software["taskmesh_git"]
    source = f"git {git['commit'][:10]}{', uncommitted changes' if git['dirty'] else ''}" if git else "no git"
    extra = [
        f"{role} {shlex.join(config[f'{role}_args'])}"
        for role in ("scheduler", "worker") if config[f"{role}_args"]
    ]
    lines = [
        f"taskmesh {software['taskmesh']} benchmark: median of {config['runs']} run(s) "
        f"(min and max beside it)",
        f"  {software['taskmesh_path']} ({source})",
        f"  {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['platform']}, "
        f"Python {machine['python']}, Twisted {software['twisted']}",
        f"  scheduler and workers: twistd subprocesses on loopback TCP, concurrency "
        f"{config['concurrency']} per worker; the client runs in this process",
        f"  options: {'; '.join(extra) if extra else 'the defaults'}",
    ]
    if config["profiled"]:
        lines.append("  PROFILED RUN: cProfile slows everything down; do not compare these numbers")
    lines.append("")

    rows: list[tuple[str, str, str, str, str]] = []

    def add(label: str, values: dict[str, float], unit: str, digits: int, note: str = "") -> None:
        def fmt(value: float) -> str:
            return f"{value:,.{digits}f}"
        rows.append((label, fmt(values["median"]), fmt(values["min"]), fmt(values["max"]), f"{unit}{note}"))

    throughput = results["throughput"]
    add(f"throughput, {throughput['tasks']:,} tasks, {throughput['workers']} workers",
        throughput["tasks_per_s"], "tasks/s", 0)
    if results["latency"]:
        latency = results["latency"]
        for key in ("p50", "p90", "p99"):
            add(f"latency {key}, {latency['rounds']:,} round trips", latency[key], "ms", 3)
    for each in results["scaling"] or []:
        plural = "worker" if each["workers"] == 1 else "workers"
        add(f"scaling: {each['workers']} {plural}", each["tasks_per_s"], "tasks/s", 0,
            f"  x{each['speedup_vs_first']:.2f}")

    headers = ("measurement", "median", "min", "max", "unit")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(5)]
    def line(row: Sequence[str]) -> str:
        return "  ".join(
            [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in (1, 2, 3)] + [row[4]]
        ).rstrip()
    lines.append(line(headers))
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(line(row) for row in rows)
    if results["scaling"]:
        lines.append("")
        lines.append(f"  scaling: x = median throughput relative to {results['scaling'][0]['workers']} "
                     f"worker(s); {machine['cpu_count']} CPUs are shared by the client, the "
                     "scheduler and every worker")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


# -- the command --------------------------------------------------------------------


def worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected worker counts such as 1,2,4")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark taskmesh: a real scheduler and workers, driven through the Python API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--latency-rounds", type=int, default=500,
                        help="sequential round trips per latency run (0: skip latency)")
    parser.add_argument("--warmup", type=int, default=500, help="tasks run before measuring")
    parser.add_argument("--workers", type=int, default=2, help="workers for throughput and latency")
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker")
    parser.add_argument("--scheduler-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more options for taskmesh-scheduler, e.g. --scheduler-args='--prefetch 16'")
    parser.add_argument("--worker-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more options for every taskmesh-worker")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--scaling", type=worker_counts, default=[1, 2, 4],
                        help="worker counts for the scaling measurement")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling measurement")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--startup-timeout", type=float, default=30.0,
                        help="seconds to wait for the processes to be ready")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the results of one run")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temporary folder with the twistd logs (kept anyway on failure)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="write cProfile stats of the scheduler, the workers and the client's "
                             "throughput runs to DIR (slows everything: numbers are not comparable)")
    args = parser.parse_args(argv)
    for name in ("tasks", "workers", "concurrency", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more")
    for name in ("latency_rounds", "warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    return args


@dataclass
class Outcome:
    """How the run went, shared by the reactor's shutdown trigger and main()."""

    workspace: Path | None = None  # the temporary folder with the twistd logs
    finished: bool = False  # the benchmark coroutine returned or raised
    succeeded: bool = False  # the results were written
    interrupted: bool = False  # the reactor stopped first: Ctrl-C or SIGTERM


async def run(reactor: Any, args: argparse.Namespace, outcome: Outcome) -> None:
    """The main cluster (throughput, latency), then one cluster per scaling step."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    env = environment()
    workspace = Path(tempfile.mkdtemp(prefix="taskmesh-bench-"))
    outcome.workspace = workspace
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile() if profile_dir else None

    def cluster(label: str, workers: int) -> Cluster:
        return Cluster(label, workspace / label, workers, args.concurrency,
                       args.scheduler_args, args.worker_args, profile_dir)

    main = await bench_cluster(reactor, args, cluster("main", args.workers), latency=True,
                               profiler=profiler)
    scaling = []
    if not args.no_scaling:
        for workers in args.scaling:
            scaling.append(await bench_cluster(reactor, args, cluster(f"scaling-{workers}w", workers),
                                               latency=False))
    if profiler is not None and profile_dir is not None:
        profiler.dump_stats(profile_dir / "client.prof")
        say(f"profiles written to {profile_dir} (read them with python -m pstats)")

    data = report(args, env, main, scaling, started_at, time.monotonic() - started)
    write_json(args.json, data)
    outcome.succeeded = True
    print(table(data))
    print(f"\nJSON: {args.json}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # Warnings and errors from Twisted (an unhandled error in a Deferred, a
    # dropped connection) would otherwise vanish: show them on stderr.
    # (The ignores: mypy cannot see that these classes provide the interfaces.)
    warnings = FilteringLogObserver(
        textFileLogObserver(sys.stderr),  # type: ignore[arg-type]
        [LogLevelFilterPredicate(LogLevel.warn)],  # type: ignore[list-item]
    )
    globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)  # type: ignore[list-item]
    outcome = Outcome()
    atexit.register(Cluster.stop_all)  # the last resort, if all else was skipped

    def on_shutdown() -> None:
        # Runs before the reactor stops, also after Ctrl-C or SIGTERM, when
        # the coroutine below is abandoned mid-await and its finally never runs.
        if not outcome.finished:
            outcome.interrupted = True
        Cluster.stop_all()

    async def guarded(reactor: Any) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
        try:
            await run(reactor, args, outcome)
        except BenchError as e:
            if not outcome.interrupted:  # else it is only the echo of our own stopping
                say(f"bench: error: {e}")
            raise SystemExit(1) from None
        finally:
            outcome.finished = True
            Cluster.stop_all()

    status = 0
    try:
        task.react(guarded)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        Cluster.stop_all()
        if outcome.workspace is not None:
            failed = not outcome.succeeded and not outcome.interrupted
            if args.keep_logs or failed:
                say(f"bench: twistd logs kept in {outcome.workspace}")
            else:
                shutil.rmtree(outcome.workspace, ignore_errors=True)
    if outcome.interrupted:
        say("bench: interrupted; every twistd process was stopped")
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
