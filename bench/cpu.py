"""
CPU cost per task of each process on the hot path (submit -> assign ->
result), robust to other load on the machine.

Wall time on a shared 2-core machine says as much about the neighbours as
about taskmesh; the CPU time a process spent (utime + stime in
``/proc/<pid>/stat``) does not depend on them nearly as much.  So this starts
a scheduler (memory store by default) and two workers, then a client in a
process of its own that warms up and submits ``--batches`` batches of
``--tasks`` tasks (one ``submit()`` each, all results gathered with
``gatherResults``, every digest checked outside the measured part), and
reads the CPU time of the scheduler, of each worker and of itself around the
measured batches.  It prints CPU seconds per 10,000 tasks for each process,
the median over ``--runs`` runs, each run on fresh processes.

The processes are started by the ``bench/`` launcher of the taskmesh being
measured (found beside its ``src/``), so the same script measures another
checkout, for example a baseline worktree, run with that checkout's Python:

    .venv/bin/python bench/cpu.py
    /work/wt-base/.venv/bin/python bench/cpu.py --json base.json

Progress goes to stderr, the table to stdout, and with ``--json`` every
run's numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Clock ticks per second of utime and stime in /proc/<pid>/stat.
TICKS = os.sysconf("SC_CLK_TCK")
PER = 10_000


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stream:
        text = stream.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int | str) -> list[int]:
    """The live children of a process (of every thread of it)."""
    found: list[int] = []
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/children") as stream:
                found.extend(int(child) for child in stream.read().split())
    except FileNotFoundError:
        pass
    return found


def tree_cpu_seconds(pid: int) -> float:
    """
    CPU seconds of a process and its live descendants: a worker runs its
    tasks in a pool of processes, whose time is the worker's cost too.
    """
    total = 0.0
    pending = [pid]
    while pending:
        each = pending.pop()
        try:
            total += cpu_seconds(each)
        except FileNotFoundError:
            continue
        pending.extend(children(each))
    return total


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_source() -> Path:
    """The bench/ folder of the taskmesh checkout the running Python imports."""
    import taskmesh

    return Path(taskmesh.__file__).resolve().parents[2] / "bench"


# -- the client, in a process of its own -------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    """Warm up, then time the batches; print one JSON line of CPU seconds by process."""
    import hashlib

    from twisted.internet import defer, reactor, task, threads

    from taskmesh import Client

    pids: dict[str, int] = json.loads(args.pids)
    outcome: dict[str, Any] = {}

    def digests(texts: list[str]) -> list[bytes]:
        return [hashlib.sha256(t.encode()).hexdigest().encode("ascii") for t in texts]

    async def batch(client: Any, texts: list[str]) -> list[bytes]:
        gathered = defer.gatherResults([client.submit(t) for t in texts], consumeErrors=True)
        gathered.addTimeout(args.timeout, reactor)
        return list(await gathered)

    def readings() -> dict[str, float]:
        values = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        values["client"] = cpu_seconds("self")
        values["wall"] = time.monotonic()
        return values

    async def main() -> None:
        client = await Client.connect(args.client, reactor, timeout=30)
        warm = [f"warmup-{i}" for i in range(args.warmup)]
        if await batch(client, warm) != digests(warm):
            raise SystemExit("wrong digests in the warm-up")
        texts = [f"task-{i}" for i in range(args.tasks)]
        want = digests(texts)
        spent = {name: 0.0 for name in [*pids, "client", "wall"]}
        if args.interactive:
            # One batch per "batch" line on stdin, its CPU seconds as a JSON line.
            print("ready", flush=True)
            while (await threads.deferToThread(sys.stdin.readline)).strip() == "batch":
                before = readings()
                got = await batch(client, texts)
                after = readings()
                if got != want:
                    raise SystemExit("wrong digests")
                print(json.dumps({name: after[name] - before[name] for name in spent}), flush=True)
        for _ in range(0 if args.interactive else args.batches):
            before = readings()
            got = await batch(client, texts)
            after = readings()
            if got != want:
                raise SystemExit("wrong digests")
            for name in spent:
                spent[name] += after[name] - before[name]
        closing = client.close()
        closing.addTimeout(5, reactor)
        try:
            await closing
        except Exception:
            pass
        outcome.update(spent)

    def run() -> None:
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: outcome.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    if not args.interactive:
        task.deferLater(reactor, args.timeout * (args.batches + 1), lambda: None).addCallback(
            lambda _: outcome.setdefault("error", "timed out") and reactor.stop()
        )
    reactor.run()
    print(json.dumps(outcome), flush=True)
    return 0 if "error" not in outcome else 1


# -- the processes under test --------------------------------------------------------


def one_run(args: argparse.Namespace, folder: Path, n: int) -> dict[str, float]:
    """A fresh scheduler and workers, the client process against them; CPU s per 10k tasks."""
    sys.path.insert(0, str(bench_source()))
    try:
        from taskbench.processes import Cluster  # the package layout
    except ImportError:
        from bench import Cluster  # type: ignore[no-redef]  # the older single file

    from twisted.internet import defer, reactor

    scheduler_args = ["--store", args.store]
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "taskmesh-scheduler", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    if "--web" in help_text:
        # On, as a user gets it, but on a port of its own: other runs share the machine.
        scheduler_args += ["--web", "tcp:0:interface=127.0.0.1"]
    cluster = Cluster(f"cpu-{n}", folder / f"run-{n}", args.workers, 1, scheduler_args)
    result: dict[str, Any] = {}

    async def main() -> None:
        await cluster.start(reactor, 60)
        pids = {name: cluster.pid(name) for name in cluster.twistd_names()}
        if args.interactive:
            relay(cluster.address, pids)
            return
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--client",
                cluster.address,
                "--pids",
                json.dumps(pids),
                "--tasks",
                str(args.tasks),
                "--batches",
                str(args.batches),
                "--warmup",
                str(args.warmup),
                "--timeout",
                str(args.timeout),
            ],
            capture_output=True,
            text=True,
            timeout=args.timeout * (args.batches + 2),
        )
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            raise SystemExit(f"client failed ({child.returncode}):\n{child.stdout}\n{child.stderr}")
        result.update(json.loads(lines[-1]))

    def relay(address: str, pids: dict[str, int]) -> None:
        """Our stdin to an interactive client, its lines to our stdout (blocking: the cluster is up)."""
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                address,
                "--pids",
                json.dumps(pids),
                "--tasks",
                str(args.tasks),
                "--warmup",
                str(args.warmup),
                "--timeout",
                str(args.timeout),
                "--interactive",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            print(child.stdout.readline().strip(), flush=True)  # "ready"
            for line in sys.stdin:
                child.stdin.write(line)
                child.stdin.flush()
                if line.strip() != "batch":
                    break
                print(child.stdout.readline().strip(), flush=True)
        finally:
            child.stdin.close()
            child.wait(60)
        result["relayed"] = True

    def go() -> None:
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: result.update(error=f.getTraceback()))
        d.addBoth(lambda _: (cluster.stop(), reactor.stop()))

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in result:
        raise SystemExit(result["error"])
    if args.interactive:
        return {}
    total = args.tasks * args.batches
    return {name: value * PER / total for name, value in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, each on fresh processes (median)")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per batch")
    parser.add_argument("--batches", type=int, default=5, help="measured batches per run")
    parser.add_argument("--warmup", type=int, default=2_000, help="tasks run before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default="memory", help="the scheduler's --store")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for one batch")
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    parser.add_argument(
        "--against",
        metavar="PYTHON",
        help="compare with the taskmesh of this Python (another checkout's .venv/bin/python): "
        "both clusters run side by side, their batches alternate, so both see the same load",
    )
    parser.add_argument("--rounds", type=int, default=10, help="with --against: batches per side")
    parser.add_argument("--interactive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--pids", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    if args.against:
        return compare(args)
    if args.run is not None:
        # One run per process: a Twisted reactor cannot be started twice.
        print(json.dumps(one_run(args, args.folder, args.run)), flush=True)
        return 0
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="taskmesh-cpu-") as tmp:
        for n in range(1, args.runs + 1):
            argv_run = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
            child = subprocess.run(
                [sys.executable, __file__, *argv_run, "--run", str(n), "--folder", tmp],
                capture_output=True,
                text=True,
                timeout=args.timeout * (args.batches + 4),
            )
            lines = child.stdout.strip().splitlines()
            if child.returncode != 0 or not lines:
                say(child.stderr)
                raise SystemExit(f"run {n} failed ({child.returncode})")
            run = json.loads(lines[-1])
            runs.append(run)
            say(
                f"run {n}/{args.runs}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in run.items())
                + " (s per 10k tasks)"
            )
    names = list(runs[0])
    median = {name: statistics.median(r[name] for r in runs) for name in names}
    print(f"CPU seconds per {PER:,} tasks, median of {args.runs} runs ({args.store} store):")
    for name in names:
        label = "wall (s)" if name == "wall" else name
        print(f"  {label:10} {median[name]:.3f}   runs: " + " ".join(f"{r[name]:.3f}" for r in runs))
    if args.json:
        args.json.write_text(json.dumps({"median": median, "runs": runs, "config": vars(args)}, default=str))
    return 0


def compare(args: argparse.Namespace) -> int:
    """
    Two checkouts side by side: a cluster and a client of each, their
    batches alternating (who goes first alternates too), so that both see
    the same load; per process, the median of the per-batch ratio.
    """
    sides = {"this": sys.executable, "against": args.against}
    common = ["--tasks", str(args.tasks), "--warmup", str(args.warmup), "--timeout", str(args.timeout)]
    common += ["--store", args.store, "--workers", str(args.workers), "--interactive"]
    with tempfile.TemporaryDirectory(prefix="taskmesh-cpu-") as tmp:
        runners: dict[str, subprocess.Popen[str]] = {}
        try:
            for n, (side, python) in enumerate(sides.items(), 1):
                folder = Path(tmp) / side
                folder.mkdir()
                runners[side] = subprocess.Popen(
                    [python, __file__, *common, "--run", str(n), "--folder", str(folder)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            for side, runner in runners.items():
                assert runner.stdout is not None
                if runner.stdout.readline().strip() != "ready":
                    raise SystemExit(f"{side}: the cluster or its client did not start")
            batches: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for side in order:
                    runner = runners[side]
                    assert runner.stdin is not None and runner.stdout is not None
                    runner.stdin.write("batch\n")
                    runner.stdin.flush()
                    line = runner.stdout.readline()
                    if not line.strip():
                        raise SystemExit(f"{side}: no answer for batch {round_ + 1}")
                    batches[side].append({k: v * PER / args.tasks for k, v in json.loads(line).items()})
                say(
                    f"round {round_ + 1}/{args.rounds}: "
                    + "; ".join(
                        f"{side} scheduler {batches[side][-1]['scheduler']:.3f} client "
                        f"{batches[side][-1]['client']:.3f}"
                        for side in sides
                    )
                )
        finally:
            for runner in runners.values():
                if runner.stdin is not None and not runner.stdin.closed:
                    try:
                        runner.stdin.write("quit\n")
                        runner.stdin.close()
                    except OSError:
                        pass
            for runner in runners.values():
                try:
                    runner.wait(120)
                except subprocess.TimeoutExpired:
                    runner.kill()
    names = list(batches["this"][0])
    print(f"CPU seconds per {PER:,} tasks, {args.rounds} alternating batches a side ({args.store} store):")
    print(f"  {'process':10} {'this':>8} {'against':>8} {'ratio':>7}  (median of the per-batch ratios)")
    report: dict[str, Any] = {}
    for name in names:
        this = statistics.median(b[name] for b in batches["this"])
        other = statistics.median(b[name] for b in batches["against"])
        ratios = [a[name] / b[name] for a, b in zip(batches["this"], batches["against"]) if b[name] > 0]
        ratio = statistics.median(ratios) if ratios else float("nan")
        label = "wall (s)" if name == "wall" else name
        print(f"  {label:10} {this:8.3f} {other:8.3f} {ratio:7.3f}")
        report[name] = {"this": this, "against": other, "ratio": ratio}
    if args.json:
        args.json.write_text(
            json.dumps({"summary": report, "batches": batches, "config": vars(args)}, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
