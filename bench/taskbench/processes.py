"""
The processes under test, and the only place that starts or stops them.

A cluster is a scheduler and its workers, each a ``twistd -n`` subprocess in a
folder of its own, plus the commands run against it (``taskmesh map``).  Every
measurement gets its clusters from here so that one piece of code guarantees
what the benchmark promises: every process it starts is stopped by pid
(SIGTERM, a bounded wait, then SIGKILL), whether the run ends, fails or is
interrupted, and every wait on a process has a deadline.  The ``/proc``
readings of a live process's memory are here too, since they need its pid.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import task

from taskbench.common import BenchError, say

T = TypeVar("T")

#: The scheduler options of each store.  SQLite is the scheduler's default
#: (``taskmesh.sqlite`` in its folder), so it is measured as a user gets it:
#: without any option.  PostgreSQL's ``--store`` is a new database for each
#: scheduler, in a throwaway cluster the benchmark starts (``store_options``).
STORES: dict[str, list[str]] = {
    "memory": ["--store", "memory"],
    "sqlite": [],
    "postgresql": ["--store", "postgresql://taskmesh@127.0.0.1:PORT/DATABASE"],
}
#: The throwaway PostgreSQL cluster, started at the first PostgreSQL measurement.
_postgres: list[Any] = []


def available_stores() -> list[str]:
    """The stores this machine can measure: PostgreSQL only where its binaries are installed."""
    from taskmesh.testing_postgres import missing_reason

    return [store for store in STORES if store != "postgresql" or missing_reason() is None]


def store_options(store: str) -> list[str]:
    """A scheduler's store options: for PostgreSQL, a new database in the benchmark's cluster."""
    if store != "postgresql":
        return STORES[store]
    from taskmesh.testing_postgres import PostgresCluster, missing_reason

    if not _postgres:
        reason = missing_reason()
        if reason is not None:
            raise BenchError(f"cannot measure the PostgreSQL store: {reason}")
        say("starting a throwaway PostgreSQL cluster (initdb, fsync on)")
        cluster = PostgresCluster()
        _postgres.append(cluster)
        cluster.start()
    return ["--store", _postgres[0].create_database("bench")]


def stop_postgres() -> None:
    """Stop the throwaway cluster (by pid) and remove its folder; again is harmless."""
    while _postgres:
        _postgres.pop().destroy()


#: The scheduler picks its own free port (port 0) and logs it; reading the
#: port back from this line avoids the race of probing for a free port first.
LISTENING = re.compile(r"scheduler listening on (?P<host>\S+):(?P<port>\d+) ")
JOINED = re.compile(r"worker (?P<name>bench-worker-\d+)@\S+ joined")
WORKER_CONNECTED = "connected to scheduler"

#: Seconds between two looks at a log file while waiting for a process.
POLL_INTERVAL = 0.05
#: Seconds a process gets to exit after SIGTERM before SIGKILL.
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
    """How to start a twistd of this Python (the profiled launcher replaces it under ``--profile``)."""
    return [installed_command("twistd")]


def measured_command(result: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run under the MEASURED_COMMAND wrapper, which writes its figures to ``result``."""
    return [sys.executable, "-I", "-S", "-c", MEASURED_COMMAND, str(result), *argv]


@dataclass
class Process:
    """One subprocess and the files it writes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path  # twistd's log file; a command's stderr
    output: Path  # stdout and stderr of twistd: tracebacks before its log is open

    def log_text(self) -> str:
        """The log so far; empty before the process has opened it."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        """The end of the log and of the output, indented: what an error message shows of a failure."""
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
    live: set[Cluster] = set()

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
        """Start one ``twistd -n`` (under cProfile with ``--profile``), logging to ``NAME.log``."""
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
        """The pid of a process by name (``scheduler``, ``worker-1``), for reading its /proc files."""
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
                    "--connect",
                    self.address,
                    "--concurrency",
                    str(self.concurrency),
                    "--name",
                    f"bench-worker-{n}",
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
                reactor,
                worker,
                deadline,
                f"{worker.name} to connect",
                lambda text: WORKER_CONNECTED in text or None,
            )

    def _port_of(self, text: str) -> int | None:
        """The port the scheduler chose, from its "listening on" line; None until it is logged."""
        match = LISTENING.search(text)
        return int(match["port"]) if match else None

    def _all_joined(self, text: str) -> bool | None:
        """True once the scheduler's log shows every worker joined; None (keep waiting) before."""
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
                    f"{self.label}: timed out waiting for {what} ({process.log.name}):\n{process.tail()}"
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
        """Stop every cluster still running: the end, a failure, Ctrl-C, SIGTERM and atexit all call it."""
        for cluster in list(cls.live):
            cluster.stop()


def _signal(process: Process, signum: int) -> None:
    """Send a signal by pid; a process that has already exited is not an error."""
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


@dataclass
class ClusterFactory:
    """
    The clusters of one benchmark run, made alike: each in a folder of its own
    in the run's workspace, named after its store and its measurement
    (``sqlite-map-1``), with the store's scheduler options and the run's own.
    """

    workspace: Path
    concurrency: int
    scheduler_args: list[str]
    worker_args: list[str]
    profile_dir: Path | None

    def __call__(self, label: str, store: str, workers: int, scheduler_args: Sequence[str] = ()) -> Cluster:
        return Cluster(
            f"{store}-{label}",
            self.workspace / f"{store}-{label}",
            workers,
            self.concurrency,
            [*store_options(store), *self.scheduler_args, *scheduler_args],
            self.worker_args,
            self.profile_dir,
        )
