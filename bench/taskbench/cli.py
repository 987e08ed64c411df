"""
The command: its options, the order of the measurements, and the guarantees
around them (the exit status, and every process stopped on any way out).
"""

from __future__ import annotations

import argparse
import atexit
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from taskbench.backlog import run_backlog
from taskbench.common import BenchError, say
from taskbench.environment import environment
from taskbench.mapping import command_startup_s, run_map
from taskbench.processes import STORES, Cluster, ClusterFactory, available_stores, stop_postgres
from taskbench.report import report, write_json
from taskbench.results import StoreResults
from taskbench.scaling import run_scaling
from taskbench.session import run_main
from taskbench.table import table

#: The folder of bench.py, which the package is in: the results go beside it.
BENCH_DIR = Path(__file__).resolve().parent.parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"


def worker_counts(text: str) -> list[int]:
    """``--scaling``: worker counts such as ``1,2,4``, each at least 1."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected worker counts such as 1,2,4")
    return counts


def store_names(text: str) -> list[str]:
    """``--stores``: known store names, each once, in the order given (the order they run in)."""
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
    """The options, checked here so that a mistake ends the run before any process starts."""
    parser = argparse.ArgumentParser(
        description="Benchmark taskmesh: a real scheduler and workers, driven through the Python "
        "API and the taskmesh map command, with each store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--stores",
        type=store_names,
        default=",".join(available_stores()),
        help="the scheduler stores to measure, side by side: memory, sqlite, postgresql "
        "(a throwaway cluster the benchmark starts; the default has it where PostgreSQL is installed)",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument(
        "--no-throughput", action="store_true", help="skip the throughput measurement (not the scaling one)"
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=500,
        help="sequential round trips per latency run (0: skip latency)",
    )
    parser.add_argument("--map-lines", type=int, default=1_000_000, help="lines per map run")
    parser.add_argument(
        "--map-runs",
        type=int,
        default=0,
        help="map runs per store, each on fresh processes (0: as many as --runs)",
    )
    parser.add_argument("--no-map", action="store_true", help="skip the map measurement")
    parser.add_argument("--backlog-tasks", type=int, default=1_000_000, help="tasks queued per backlog run")
    parser.add_argument(
        "--backlog-runs",
        type=int,
        default=1,
        help="backlog runs per store, each on a fresh scheduler (slow: about 25 s a run at a million tasks)",
    )
    parser.add_argument(
        "--backlog-batch",
        type=int,
        default=10_000,
        help="enqueue() calls sent before awaiting their acknowledgements",
    )
    parser.add_argument("--no-backlog", action="store_true", help="skip the backlog measurement")
    parser.add_argument("--warmup", type=int, default=500, help="tasks run before measuring")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers for the throughput, latency and map measurements"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker")
    parser.add_argument(
        "--scheduler-args",
        type=shlex.split,
        default=[],
        metavar="ARGS",
        help="more options for taskmesh-scheduler, e.g. --scheduler-args='--prefetch 16' "
        "(not --store: see --stores)",
    )
    parser.add_argument(
        "--worker-args",
        type=shlex.split,
        default=[],
        metavar="ARGS",
        help="more options for every taskmesh-worker",
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument(
        "--scaling", type=worker_counts, default=[1, 2, 4], help="worker counts for the scaling measurement"
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling measurement")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for the processes to be ready"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the results of one run"
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the temporary folder with the twistd logs (kept anyway on failure)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="write cProfile stats of the scheduler, the workers, the client's "
        "throughput runs and the map command to DIR (slows everything: "
        "numbers are not comparable)",
    )
    args = parser.parse_args(argv)
    for name in (
        "tasks",
        "workers",
        "concurrency",
        "runs",
        "map_lines",
        "backlog_tasks",
        "backlog_runs",
        "backlog_batch",
    ):
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
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix="taskmesh-bench-"))
    outcome.workspace = workspace
    env = environment(workspace)
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    new_cluster = ClusterFactory(
        workspace, args.concurrency, args.scheduler_args, args.worker_args, profile_dir
    )
    stores = {store: StoreResults(store, [*STORES[store], *args.scheduler_args]) for store in args.stores}
    extra: dict[str, Any] = {}

    if not args.no_throughput or args.latency_rounds > 0:
        await run_main(reactor, args, stores, new_cluster, profile_dir)
    if not args.no_map:
        extra["command_startup_s"] = command_startup_s()
        await run_map(reactor, args, stores, new_cluster, workspace)
    if not args.no_backlog:
        await run_backlog(reactor, args, stores, new_cluster)
    if not args.no_scaling:
        await run_scaling(reactor, args, stores, new_cluster)
    if profile_dir is not None:
        say(f"profiles written to {profile_dir} (read them with python -m pstats)")

    data = report(args, env, list(stores.values()), extra, started_at, time.monotonic() - started)
    write_json(args.json, data)
    outcome.succeeded = True
    print(table(data))
    print(f"\nJSON: {args.json}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and exit: 0 if all went well, 1 if it failed, 130 if interrupted."""
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
    atexit.register(stop_postgres)

    def on_shutdown() -> None:
        # Runs before the reactor stops, also after Ctrl-C or SIGTERM, when
        # the coroutine below is abandoned mid-await and its finally never runs.
        if not outcome.finished:
            outcome.interrupted = True
        Cluster.stop_all()

    async def guarded(reactor: Any) -> None:
        """The run, with its failure turned into the exit status and its processes stopped."""
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
        stop_postgres()
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
