"""
Benchmark taskmesh end to end: a real scheduler and real workers (``twistd``
subprocesses on loopback TCP) driven through the public Python API and the
``taskmesh map`` command.

    python bench/bench.py                      # the full run (about 2 minutes)
    python bench/bench.py --tasks 2000 --latency-rounds 100 --runs 1 --no-scaling \\
        --map-lines 20000 --backlog-tasks 20000

It measures what a user of taskmesh sees, not what a microbenchmark of one
module would, each with the in-memory store and with the SQLite store side by
side (``--stores``):

1. submit throughput: ``--tasks`` sha256 tasks (payload ``task-<i>``), one
   ``submit()`` call each, all submitted at once; tasks/s from the first
   submit to the last result, every digest checked against hashlib;
2. round-trip latency: ``--latency-rounds`` sequential submit-and-await
   round trips; p50, p90 and p99 in milliseconds;
3. map: the real ``taskmesh map`` command over a file of ``--map-lines``
   lines; tasks/s, and the peak RSS of the scheduler, of each worker and of
   the command; every output line checked against hashlib;
4. backlog: ``--backlog-tasks`` tasks enqueued with no worker connected; the
   scheduler's RSS growth per queued task;
5. scaling: the throughput of (1) with 1, 2 and 4 workers.

Each measurement is repeated (``--runs``, ``--map-runs``, ``--backlog-runs``)
and the median is reported (with the min and max, so the spread is visible).
A readable table goes to stdout, progress to stderr, and everything (every
run, the machine, the software) to a JSON file, by default
``bench/results/latest.json``.

Every process it starts (twistd, ``taskmesh map``) always stops, by pid
(SIGTERM, a bounded wait, then SIGKILL), whether the benchmark ends, fails or
is interrupted with Ctrl-C; every wait has a deadline.
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
import textwrap
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
#: 2: results per store (``results.stores.<store>``), map and backlog added.
JSON_SCHEMA = 2

#: The scheduler options of each store.  SQLite is the scheduler's default
#: (``taskmesh.sqlite`` in its folder), so it is measured as a user gets it:
#: without any option.
STORES: dict[str, list[str]] = {"memory": ["--store", "memory"], "sqlite": []}

#: The scheduler picks its own free port (port 0) and logs it; reading the
#: port back from this line avoids the race of probing for a free port first.
LISTENING = re.compile(r"scheduler listening on (?P<host>\S+):(?P<port>\d+) ")
JOINED = re.compile(r"worker (?P<name>bench-worker-\d+)@\S+ joined")
WORKER_CONNECTED = "connected to scheduler"

#: Seconds between two looks at a log file while waiting for a process.
POLL_INTERVAL = 0.05
#: Seconds a process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Process name of the ``taskmesh map`` command in the results.
MAP_CLIENT = "map-client"


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


#: ``python -I -S -c`` this, a result file, then a command: run the command
#: as a child and write its peak RSS, exit status and time to the file.
#:
#: Why a wrapper: Linux keeps a process's ``ru_maxrss`` across exec, and a
#: child starts with its parent's memory (Python's subprocess even shares
#: the parent's memory until exec, so the child inherits the parent's peak):
#: a command spawned straight from this benchmark, whose own RSS is tens of
#: MB, would report max(the benchmark's peak, its own).  Spawned from this
#: small wrapper instead, it inherits only the wrapper's peak (``floor_kb``,
#: a few MB, well below what any taskmesh process needs), so ``wait4``'s
#: ``ru_maxrss`` is the command's own peak, to the last page, exit included:
#: no polling of /proc, which would miss the end.  The wrapper forwards
#: SIGTERM to the command, and the command gets SIGKILL if the wrapper dies
#: (PR_SET_PDEATHSIG): stopping the wrapper by pid stops both.
MEASURED_COMMAND = """
import ctypes, json, os, signal, sys, time
result_path, argv = sys.argv[1], sys.argv[2:]
floor = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
parent = os.getpid()
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == parent:  # else the wrapper died before prctl
            os.execv(argv[0], argv)
    finally:
        os._exit(127)
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: os.kill(pid, signum))
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
with open(result_path, "w") as stream:
    json.dump({"elapsed_s": elapsed, "exit": code, "maxrss_kb": usage.ru_maxrss, "floor_kb": floor}, stream)
sys.exit(code if code >= 0 else 128 - code)
"""


class BenchError(Exception):
    """The benchmark cannot go on (a process died, a wait ran out, a wrong digest)."""


def say(message: str) -> None:
    """Progress for the person waiting: stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


# -- the processes under test ------------------------------------------------


def installed_command(name: str) -> str:
    """
    A console command (``twistd``, ``taskmesh``) of the Python running this
    script, so that the processes under test run the same interpreter and the
    same taskmesh as the client.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found: run this with the Python that has taskmesh installed")
    return found


def twistd_command() -> list[str]:
    return [installed_command("twistd")]


@dataclass
class Process:
    """One subprocess and the files it writes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path  # twistd's log file; a command's stderr
    output: Path  # stdout and stderr of twistd: tracebacks before its log is open

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
    their own, and the commands run against them.  ``start()`` returns once
    every worker has joined (bounded); ``stop()`` is synchronous, idempotent
    and safe to call from a shutdown trigger or atexit: that is what
    guarantees nothing is left running.
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
        return self._popen(name, [*command, "-n", f"--logfile={log.name}", *arguments], log, output)

    def _popen(self, name: str, argv: list[str], log: Path, output: Path) -> Process:
        """Start ``argv`` in this cluster's folder; stop() will stop it with the rest."""
        with output.open("wb") as sink:
            stderr: Any = subprocess.STDOUT
            if log != output:
                stderr = log.open("wb")
            try:
                popen = subprocess.Popen(
                    argv,
                    cwd=self.folder,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=stderr,
                    # Its own session: a Ctrl-C in the terminal reaches only this
                    # script, which then stops the processes itself (stop()).
                    start_new_session=True,
                )
            finally:
                if stderr is not subprocess.STDOUT:
                    stderr.close()
        process = Process(name, popen, log, output)
        self.processes.append(process)
        return process

    def run_command(self, name: str, argv: list[str]) -> Process:
        """
        Start a command (``taskmesh map ...``) beside the cluster: stdout to
        ``NAME.out``, stderr to ``NAME.err``; it is stopped by pid with the
        cluster if it is still running then.
        """
        return self._popen(name, argv, self.folder / f"{name}.err", self.folder / f"{name}.out")

    def pid(self, name: str) -> int:
        for process in self.processes:
            if process.name == name:
                return process.popen.pid
        raise KeyError(name)

    def twistd_names(self) -> list[str]:
        """The scheduler and the workers, in that order."""
        return ["scheduler", *(f"worker-{n}" for n in range(1, self.workers + 1))]

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


def proc_status(pid: int) -> dict[str, int]:
    """
    The kB figures of ``/proc/PID/status`` (VmRSS, VmHWM, RssAnon, ...): the
    kernel's own accounting of a live process, read from outside it, so the
    reading costs the process nothing.  Empty for a process that has exited
    (a zombie has no memory left to show).
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    figures = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            figures[name] = int(parts[0])
    return figures


def memory_of(cluster: Cluster, name: str) -> dict[str, int]:
    """A live process's memory figures; BenchError if it is gone (it must not be)."""
    figures = proc_status(cluster.pid(name))
    if "VmRSS" not in figures:
        raise BenchError(f"{cluster.label}: cannot read the memory of {name}: has it exited?")
    return figures


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


async def gather(label: str, pending: list[Deferred[T]], reactor: Any, timeout: float) -> list[T]:
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


# -- map: the taskmesh map command -----------------------------------------------


@dataclass
class MapRun:
    lines: int
    elapsed_s: float  # spawn of `taskmesh map` to its exit: start-up and line count included
    tasks_per_s: float
    #: Peak RSS in kB: VmHWM of the scheduler and of each worker (read before
    #: they stop, so it covers their warm-up too), and the map command's
    #: ru_maxrss from wait4 in its wrapper (see MEASURED_COMMAND).
    peak_rss_kb: dict[str, int]
    #: The wrapper's own peak when it started the command: the command's
    #: figure is its own only above this (it always is, by far).
    client_rss_floor_kb: int


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
    process = cluster.run_command(name, [
        sys.executable, "-I", "-S", "-c", MEASURED_COMMAND, str(measured),
        *command, "map", "--connect", cluster.address, "--output", str(output), str(source),
    ])
    deadline = time.monotonic() + timeout
    while process.popen.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"{cluster.label}: taskmesh map did not finish within {timeout:g} s")
        await task.deferLater(reactor, POLL_INTERVAL, lambda: None)
    if process.popen.returncode != 0:
        raise BenchError(
            f"{cluster.label}: taskmesh map exited with status {process.popen.returncode}:\n"
            f"{process.tail()}"
        )
    result = json.loads(measured.read_text())
    if result["maxrss_kb"] <= result["floor_kb"]:
        raise BenchError(
            f"{cluster.label}: the map command's peak RSS ({result['maxrss_kb']} kB) is not above "
            f"its wrapper's ({result['floor_kb']} kB): it cannot be told apart"
        )
    return result["elapsed_s"], result["maxrss_kb"], result["floor_kb"]


async def bench_map(
    reactor: Any, args: argparse.Namespace, cluster: Cluster, source: Path, warmup: Path | None,
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
            say(f"[{cluster.label}] ready at {cluster.address}; warming up with a map of "
                f"{args.warmup:,} lines")
            warm_output = cluster.folder / "warmup-output.txt"
            await run_map_command(reactor, cluster, "warmup-client", warmup, warm_output,
                                  args.timeout, None)
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
    say(f"[{cluster.label}] map: {run.tasks_per_s:,.0f} tasks/s ({run.lines:,} lines in "
        f"{elapsed:.2f} s); peak RSS "
        + ", ".join(f"{name} {kb / 1024:.1f} MiB" for name, kb in peaks.items())
        + "; every line checked")
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


# -- backlog: memory per queued task -----------------------------------------------


#: /proc/PID/status figures kept in the JSON of a backlog run.
MEMORY_FIGURES = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


@dataclass
class BacklogRun:
    tasks: int
    enqueue_s: float  # first enqueue() to status() reporting every task queued
    tasks_per_s: float  # the enqueue rate: acknowledged (durable) tasks a second
    rss_before_kb: int  # the scheduler's VmRSS after the warm-up
    rss_after_kb: int  # ... with the backlog queued
    bytes_per_task: float  # (after - before) / tasks
    memory_before_kb: dict[str, int]
    memory_after_kb: dict[str, int]
    store_file_bytes: int | None  # the SQLite files on disk (database, WAL, index); None in memory


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
            say(f"[{cluster.label}] ready at {cluster.address}; scheduler RSS "
                f"{before['VmRSS'] / 1024:.1f} MiB; enqueueing {count:,} tasks")
            started = time.perf_counter()
            for first in range(0, count, args.backlog_batch):
                batch = [client.enqueue(f"task-{i}")
                         for i in range(first, min(count, first + args.backlog_batch))]
                ids.update(await gather("backlog", batch, reactor, args.timeout))
            await wait_queued(reactor, client, args.warmup + count, args.timeout, cluster.label)
            elapsed = time.perf_counter() - started
            after = memory_of(cluster, "scheduler")
            if len(ids) != args.warmup + count:
                raise BenchError(f"{cluster.label}: {len(ids):,} distinct task ids for "
                                 f"{args.warmup + count:,} tasks")
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
    say(f"[{cluster.label}] backlog: {count:,} queued in {elapsed:.1f} s "
        f"({run.tasks_per_s:,.0f} tasks/s); scheduler RSS {before['VmRSS'] / 1024:.1f} -> "
        f"{after['VmRSS'] / 1024:.1f} MiB, {run.bytes_per_task:,.0f} bytes a queued task"
        + (f"; SQLite files {store_bytes / 2**20:.1f} MiB" if store_bytes else ""))
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


async def close(client: Client, reactor: Any) -> None:
    """Close a client, waiting 5 s at most: the processes are stopped next anyway."""
    closing = client.close()
    closing.addTimeout(5, reactor)
    try:
        await closing
    except Exception:
        pass


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
    throughput: bool = True,
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
            for n in range(1, (args.runs if throughput else 0) + 1):
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
            await close(client, reactor)
        return results
    finally:
        cluster.stop()


@dataclass
class StoreResults:
    """Every measurement made with one store."""

    store: str
    scheduler_args: list[str]
    main: ClusterResults | None = None  # throughput and latency
    map: list[MapRun] = field(default_factory=list)
    backlog: list[BacklogRun] = field(default_factory=list)
    scaling: list[ClusterResults] = field(default_factory=list)


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


def filesystem_of(path: Path) -> str | None:
    """
    The file system the SQLite stores are written to (the temporary folder):
    a commit costs very different times on tmpfs, ext4 or a network disk.
    """
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(path.resolve())
    best = max(
        (m for m in mounts if target == m[0] or target.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return f"{best[1]} on {best[0]}" if best else None


def environment(workspace: Path) -> dict[str, Any]:
    from twisted.internet import reactor

    package = Path(taskmesh.__file__).resolve().parent
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "memory_total_kb": proc_meminfo_total(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "workspace_filesystem": filesystem_of(workspace),
        },
        "software": {
            "taskmesh": taskmesh.__version__,
            "taskmesh_path": str(package),
            "taskmesh_git": git_info(package),
            "twisted": twisted.__version__,
            "reactor": f"{type(reactor).__module__}.{type(reactor).__qualname__}",
        },
    }


def proc_meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput_report(args: argparse.Namespace, results: ClusterResults) -> dict[str, Any]:
    return {
        "workers": results.workers,
        "concurrency": results.concurrency,
        "tasks": args.tasks,
        "tasks_per_s": summary([run.tasks_per_s for run in results.throughput]),
        "runs": [asdict(run) for run in results.throughput],
    }


def store_report(args: argparse.Namespace, results: StoreResults) -> dict[str, Any]:
    """One store's measurements as plain data."""
    main = results.main
    latency = None
    if main and main.latency:
        latency = {
            "rounds": args.latency_rounds,
            **{
                key: summary([getattr(run, f"{key}_ms") for run in main.latency])
                for key in ("p50", "p90", "p99", "mean")
            },
            "runs": [asdict(run) for run in main.latency],
        }
    map_report = None
    if results.map:
        runs = results.map
        map_report = {
            "lines": args.map_lines,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "tasks_per_s": summary([run.tasks_per_s for run in runs]),
            "peak_rss_kb": {
                name: summary([run.peak_rss_kb[name] for run in runs]) for name in runs[0].peak_rss_kb
            },
            "runs": [asdict(run) for run in runs],
        }
    backlog = None
    if results.backlog:
        runs_b = results.backlog
        backlog = {
            "tasks": args.backlog_tasks,
            "batch": args.backlog_batch,
            "bytes_per_task": summary([run.bytes_per_task for run in runs_b]),
            "rss_after_kb": summary([run.rss_after_kb for run in runs_b]),
            "enqueue_tasks_per_s": summary([run.tasks_per_s for run in runs_b]),
            "runs": [asdict(run) for run in runs_b],
        }
    scaling = None
    if results.scaling:
        first = results.scaling[0].median_tasks_per_s()
        scaling = [
            {**throughput_report(args, each), "speedup_vs_first": each.median_tasks_per_s() / first}
            for each in results.scaling
        ]
    return {
        "scheduler_args": results.scheduler_args,
        "ready_s": main.ready_s if main else None,
        "throughput": throughput_report(args, main) if main and main.throughput else None,
        "latency": latency,
        "map": map_report,
        "backlog": backlog,
        "scaling": scaling,
    }


def report(
    args: argparse.Namespace, env: dict[str, Any], stores: list[StoreResults],
    extra: dict[str, Any], started_at: str, duration: float,
) -> dict[str, Any]:
    """Everything as plain data: the JSON file, and the source of the table."""
    return {
        "schema": JSON_SCHEMA,
        "started_at": started_at,
        "duration_s": round(duration, 3),
        "command": [sys.executable, *sys.argv],
        "config": {
            "stores": args.stores,
            "tasks": None if args.no_throughput else args.tasks,
            "latency_rounds": args.latency_rounds,
            "warmup": args.warmup,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "scheduler_args": args.scheduler_args,
            "worker_args": args.worker_args,
            "runs": args.runs,
            "map_lines": None if args.no_map else args.map_lines,
            "map_runs": args.map_runs,
            "backlog_tasks": None if args.no_backlog else args.backlog_tasks,
            "backlog_runs": args.backlog_runs,
            "backlog_batch": args.backlog_batch,
            "scaling": None if args.no_scaling else args.scaling,
            "profiled": args.profile is not None,
        },
        **env,
        "results": {
            **extra,
            "stores": {each.store: store_report(args, each) for each in stores},
        },
    }


#: A table row: label, runs, {store: summary}, unit, digits.
Row = tuple[str, int, dict[str, dict[str, float]], str, int]
KIB_TO_MIB = 1 / 1024


def table_rows(data: dict[str, Any]) -> list[Row]:
    """The measurements to show, one row each, with every store's summary."""
    config = data["config"]
    stores: dict[str, dict[str, Any]] = data["results"]["stores"]
    rows: list[Row] = []

    def add(label: str, runs: int, unit: str, digits: int, path: tuple[str | int, ...],
            scale: float = 1.0) -> None:
        """A row of the summary at ``path`` in each store's results (missing: not measured)."""
        values = {}
        for store, results in stores.items():
            found: Any = results
            for part in path:
                found = found[part] if found is not None else None
            if found is not None:
                values[store] = {key: value * scale for key, value in found.items()}
        if values:
            rows.append((label, runs, values, unit, digits))

    runs = config["runs"]
    workers = config["workers"]
    if config["tasks"]:
        add(f"throughput, {config['tasks']:,} tasks, {workers} workers", runs, "tasks/s", 0,
            ("throughput", "tasks_per_s"))
    if config["latency_rounds"]:
        for key in ("p50", "p90", "p99"):
            add(f"latency {key}, {config['latency_rounds']:,} round trips", runs, "ms", 3,
                ("latency", key))
    if config["map_lines"]:
        map_runs = config["map_runs"]
        add(f"map, {config['map_lines']:,} lines, {workers} workers", map_runs, "tasks/s", 0,
            ("map", "tasks_per_s"))
        names: dict[str, Any] = next((r["map"]["peak_rss_kb"] for r in stores.values() if r["map"]), {})
        for name in names:
            shown = "taskmesh map (client)" if name == MAP_CLIENT else name
            add(f"  map peak RSS: {shown}", map_runs, "MiB", 1, ("map", "peak_rss_kb", name),
                KIB_TO_MIB)
    if config["backlog_tasks"]:
        backlog_runs = config["backlog_runs"]
        add(f"backlog, {config['backlog_tasks']:,} queued, no worker: RSS per task",
            backlog_runs, "bytes", 0, ("backlog", "bytes_per_task"))
        add("  backlog: scheduler RSS with it queued", backlog_runs, "MiB", 1,
            ("backlog", "rss_after_kb"), KIB_TO_MIB)
        add("  backlog: enqueue rate", backlog_runs, "tasks/s", 0,
            ("backlog", "enqueue_tasks_per_s"))
    for index, count in enumerate(config["scaling"] or []):
        plural = "worker" if count == 1 else "workers"
        add(f"scaling: {count} {plural}", runs, "tasks/s", 0, ("scaling", index, "tasks_per_s"))
    return rows


def table(data: dict[str, Any]) -> str:
    """The report as a person reads it: per store, the median first, then the spread."""
    config, results = data["config"], data["results"]
    machine, software = data["machine"], data["software"]
    stores = list(results["stores"])
    git = software["taskmesh_git"]
    source = f"git {git['commit'][:10]}{', uncommitted changes' if git['dirty'] else ''}" if git else "no git"
    extra = [
        f"{role} {shlex.join(config[f'{role}_args'])}"
        for role in ("scheduler", "worker") if config[f"{role}_args"]
    ]
    runs_note = f"median of {config['runs']} run(s)"
    if config["map_lines"] and config["map_runs"] != config["runs"]:
        runs_note += f", map {config['map_runs']}"
    if config["backlog_tasks"] and config["backlog_runs"] != config["runs"]:
        runs_note += f", backlog {config['backlog_runs']}"
    lines = [
        f"taskmesh {software['taskmesh']} benchmark: {runs_note} (min and max beside it; "
        "'runs' says how many each row has)",
        f"  {software['taskmesh_path']} ({source})",
        f"  {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['platform']}, "
        f"Python {machine['python']}, Twisted {software['twisted']}",
        f"  scheduler and workers: twistd subprocesses on loopback TCP, concurrency "
        f"{config['concurrency']} per worker; the client runs in this process, the map "
        "in its own (taskmesh map)",
        "  stores: " + ", ".join(
            f"{store} ({'--store memory' if store == 'memory' else 'the default, taskmesh.sqlite'}"
            + (f", on {machine['workspace_filesystem']}" if store == "sqlite" and machine["workspace_filesystem"] else "")
            + ")" for store in stores
        ),
        f"  options: {'; '.join(extra) if extra else 'the defaults'}",
    ]
    if config["profiled"]:
        lines.append("  PROFILED RUN: cProfile slows everything down; do not compare these numbers")
    lines.append("")

    rows = table_rows(data)
    compare = "memory" in stores and "sqlite" in stores
    headers = ["measurement", "runs"]
    for store in stores:
        headers += ["median", "min", "max"]
    headers.append("unit")
    if compare:
        headers.append("sqlite/memory")
    cells: list[list[str]] = []
    for label, runs, values, unit, digits in rows:
        row = [label, str(runs)]
        for store in stores:
            found = values.get(store)
            row += [
                "-" if found is None else f"{found[key]:,.{digits}f}"
                for key in ("median", "min", "max")
            ]
        row.append(unit)
        if compare:
            if "memory" in values and "sqlite" in values and values["memory"]["median"]:
                row.append(f"x{values['sqlite']['median'] / values['memory']['median']:.2f}")
            else:
                row.append("")
        cells.append(row)
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    unit_column = 2 + 3 * len(stores)

    def line(row: Sequence[str]) -> str:
        parts = [
            text.ljust(widths[i]) if i in (0, unit_column) else text.rjust(widths[i])
            for i, text in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    # The store names above their three columns: "----- memory -----".
    spans = [" " * (widths[0] + 2 + widths[1])]
    for index, store in enumerate(stores):
        first = 2 + 3 * index
        span = sum(widths[first:first + 3]) + 4
        spans.append(f" {store} ".center(span, "-"))
    lines.append("  ".join(spans))
    lines.append(line(headers))
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(line(row) for row in cells)

    notes = []
    if config["map_lines"]:
        notes.append(
            f"map: tasks/s from spawning `taskmesh map` to its exit, so its start-up is in it "
            f"(`taskmesh --version` takes {results['command_startup_s']:.2f} s here); peak RSS: "
            "VmHWM of each twistd process before it stops; the command's own ru_maxrss, read by "
            "wait4 in a small wrapper process (see bench/README.md)"
        )
    if config["backlog_tasks"]:
        notes.append(
            "backlog: (scheduler VmRSS with the backlog queued - VmRSS before) / tasks, enqueued "
            f"in batches of {config['backlog_batch']:,} through Client.enqueue(); the scheduler "
            "runs with --max-queued above the backlog, so flow control does not pause the client"
        )
    for store in stores:
        scaling = results["stores"][store]["scaling"]
        if scaling:
            notes.append(
                f"scaling ({store}): x = median relative to {scaling[0]['workers']} worker(s): "
                + ", ".join(f"{each['workers']}: x{each['speedup_vs_first']:.2f}" for each in scaling)
            )
    if config["scaling"]:
        notes.append(f"{machine['cpu_count']} CPUs are shared by the client, the scheduler and every worker")
    if compare:
        notes.append("sqlite/memory: the sqlite median over the memory median")
    if notes:
        lines.append("")
        lines.extend(textwrap.fill(note, 100, initial_indent="  ", subsequent_indent="    ")
                     for note in notes)
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


def store_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in STORES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected stores among {','.join(STORES)}, each once")
    return names


def names_a_store(arguments: Sequence[str]) -> bool:
    """Whether scheduler options choose the store (-s, --store), which --stores does."""
    return any(
        arg == "--store" or arg.startswith("--store=") or (arg.startswith("-s") and not arg.startswith("--"))
        for arg in arguments
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark taskmesh: a real scheduler and workers, driven through the Python "
                    "API and the taskmesh map command, with each store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--stores", type=store_names, default=",".join(STORES),
                        help="the scheduler stores to measure, side by side: memory, sqlite")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the throughput measurement (not the scaling one)")
    parser.add_argument("--latency-rounds", type=int, default=500,
                        help="sequential round trips per latency run (0: skip latency)")
    parser.add_argument("--map-lines", type=int, default=1_000_000, help="lines per map run")
    parser.add_argument("--map-runs", type=int, default=0,
                        help="map runs per store, each on fresh processes (0: as many as --runs)")
    parser.add_argument("--no-map", action="store_true", help="skip the map measurement")
    parser.add_argument("--backlog-tasks", type=int, default=1_000_000,
                        help="tasks queued per backlog run")
    parser.add_argument("--backlog-runs", type=int, default=1,
                        help="backlog runs per store, each on a fresh scheduler (slow: about "
                             "25 s a run at a million tasks)")
    parser.add_argument("--backlog-batch", type=int, default=10_000,
                        help="enqueue() calls sent before awaiting their acknowledgements")
    parser.add_argument("--no-backlog", action="store_true", help="skip the backlog measurement")
    parser.add_argument("--warmup", type=int, default=500, help="tasks run before measuring")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers for the throughput, latency and map measurements")
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker")
    parser.add_argument("--scheduler-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more options for taskmesh-scheduler, e.g. --scheduler-args='--prefetch 16' "
                             "(not --store: see --stores)")
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
                        help="write cProfile stats of the scheduler, the workers, the client's "
                             "throughput runs and the map command to DIR (slows everything: "
                             "numbers are not comparable)")
    args = parser.parse_args(argv)
    for name in ("tasks", "workers", "concurrency", "runs", "map_lines",
                 "backlog_tasks", "backlog_runs", "backlog_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    for name in ("latency_rounds", "warmup", "map_runs"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    args.map_runs = args.map_runs or args.runs
    if names_a_store(args.scheduler_args):
        parser.error("choose the store with --stores, not in --scheduler-args")
    if (not args.no_map or not args.no_backlog) and not Path("/proc/self/status").exists():
        parser.error("the map and backlog measurements read /proc (Linux); use --no-map --no-backlog")
    return args


@dataclass
class Outcome:
    """How the run went, shared by the reactor's shutdown trigger and main()."""

    workspace: Path | None = None  # the temporary folder with the twistd logs
    finished: bool = False  # the benchmark coroutine returned or raised
    succeeded: bool = False  # the results were written
    interrupted: bool = False  # the reactor stopped first: Ctrl-C or SIGTERM


async def run(reactor: Any, args: argparse.Namespace, outcome: Outcome) -> None:
    """
    Measurement by measurement, each with every store in turn (the map and
    backlog runs alternate stores run by run), so that a machine getting
    busier during the benchmark does not favour one store.
    """
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix="taskmesh-bench-"))
    outcome.workspace = workspace
    env = environment(workspace)
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    def cluster(label: str, store: str, workers: int, scheduler_args: Sequence[str] = ()) -> Cluster:
        return Cluster(f"{store}-{label}", workspace / f"{store}-{label}", workers, args.concurrency,
                       [*STORES[store], *args.scheduler_args, *scheduler_args], args.worker_args,
                       profile_dir)

    stores = {store: StoreResults(store, [*STORES[store], *args.scheduler_args])
              for store in args.stores}
    extra: dict[str, Any] = {}

    if not args.no_throughput or args.latency_rounds > 0:
        for store, results in stores.items():
            profiler = cProfile.Profile() if profile_dir else None
            results.main = await bench_cluster(
                reactor, args, cluster("main", store, args.workers), latency=True,
                profiler=profiler, throughput=not args.no_throughput,
            )
            if profiler is not None and profile_dir is not None and not args.no_throughput:
                profiler.dump_stats(profile_dir / f"{store}-client.prof")

    if not args.no_map:
        extra["command_startup_s"] = command_startup_s()
        source = workspace / "map-input.txt"
        write_lines(source, args.map_lines, "task")
        warmup = None
        if args.warmup:
            warmup = workspace / "map-warmup.txt"
            write_lines(warmup, args.warmup, "warmup")
        for n in range(1, args.map_runs + 1):
            for store, results in stores.items():
                results.map.append(await bench_map(
                    reactor, args, cluster(f"map-{n}", store, args.workers), source, warmup
                ))
        source.unlink()

    if not args.no_backlog:
        # Above the backlog, so that the queue's bound never pauses the client:
        # a paused client's status() requests are not read either.
        bound = ["--max-queued", str(2 * (args.backlog_tasks + args.warmup))]
        for n in range(1, args.backlog_runs + 1):
            for store, results in stores.items():
                results.backlog.append(await bench_backlog(
                    reactor, args, cluster(f"backlog-{n}", store, 0, bound)
                ))

    if not args.no_scaling:
        for workers in args.scaling:
            for store, results in stores.items():
                results.scaling.append(await bench_cluster(
                    reactor, args, cluster(f"scaling-{workers}w", store, workers), latency=False,
                ))
    if profile_dir is not None:
        say(f"profiles written to {profile_dir} (read them with python -m pstats)")

    data = report(args, env, list(stores.values()), extra, started_at, time.monotonic() - started)
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
        say("bench: interrupted; every process it started was stopped")
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
