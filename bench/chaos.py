"""
Kill everything, lose nothing: the chaos run of taskmesh's delivery promise.

One scheduler (SQLite store) and several workers run as real ``twistd``
processes; a client submits N sha256 tasks, each with its own deduplication
key, then waits for every result by id.  Meanwhile workers are SIGKILLed and
restarted at random moments, and the scheduler is SIGKILLed and restarted on
the same store.  Meanwhile, too, the store fails the scheduler's commits at
random moments: another connection takes its write lock (``BEGIN
IMMEDIATE``) for a random while, sometimes shorter than the scheduler's
grace time (submissions are held back, then acknowledged), sometimes longer
(they are refused, with the reason), and a scheduler kill may land in the
middle of it.  The client reconnects, resubmits what was not acknowledged or
was refused (the keys make that safe) and waits on by id.

At the end it counts, from the client's results and from the store itself:

- lost: tasks without a successful result;
- duplicated: keys that became more than one task, or a task id the client
  and the store disagree on;
- wrong: results that are not the payload's digest;
- duplicate executions: runs of a task beyond its first (from the workers'
  journal); at-least-once allows these, and they are reported, not failed.

It exits 1 if lost, duplicated or wrong is not 0.

    python bench/chaos.py       # 500 tasks; 6 worker kills, 2 scheduler kills, 4 store faults
    python bench/chaos.py --tasks 10000 --worker-kills 50 --scheduler-kills 20 --store-faults 40

With ``--standby`` the store is PostgreSQL (a throwaway cluster,
``taskmesh.testing_postgres``) and two schedulers run on it, a leader and a
hot standby; workers and the client are given both addresses.  A scheduler
kill SIGKILLs the *leader* (the standby takes over; the killed one is
started again and becomes the standby), and a store fault terminates the
leader's lock session on the server (``pg_terminate_backend``): the leader
must stop serving at once (it exits) and the standby take over.  After each
leader kill it measures the failover: from the kill to the first task a
fresh client gets served (``failover seconds``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# -- the client: its own process, so that the orchestrator can block ---------


#: The client submits this many tasks at a time, a moment apart, so that
#: store faults meet submissions as well as results.
SUBMIT_BATCH = 25


def run_client(address: str, count: int, output: Path) -> None:
    """
    Submit every task (keyed), then wait for every result, reconnecting as
    needed; a submission refused (the store is unavailable) is sent again
    on the next connection.  Prints ``refused N`` when it was refused.
    """
    from twisted.internet import task
    from twisted.internet.defer import Deferred, DeferredList

    from taskmesh import Client, SchedulerGone, TaskFailed, TaskRejected

    async def main(reactor: Any) -> None:
        ids: dict[int, int] = {}
        results: dict[int, str] = {}
        failures: dict[int, str] = {}
        connections = 0
        refusals = 0
        while len(results) + len(failures) < count:
            try:
                client = await Client.connect(address, reactor, timeout=2)
            except Exception:  # the scheduler is down: try again shortly
                await task.deferLater(reactor, 0.2, lambda: None)
                continue
            connections += 1
            try:
                missing = [i for i in range(count) if i not in ids]
                refused = 0
                for first in range(0, len(missing), SUBMIT_BATCH):
                    batch = missing[first : first + SUBMIT_BATCH]
                    submitted = [client.enqueue(f"chaos-{i}", key=f"chaos-{i}") for i in batch]
                    for i, (ok, value) in zip(batch, await DeferredList(submitted, consumeErrors=True)):
                        if ok:
                            ids[i] = value
                        elif value.check(TaskRejected):  # the store is unavailable: submit again later
                            refused += 1
                        elif not value.check(SchedulerGone):
                            value.raiseException()
                    await task.deferLater(reactor, 0.02, lambda: None)
                refusals += refused
                if refused:
                    print(f"refused {refused}", flush=True)
                waiting = [i for i in ids if i not in results and i not in failures]
                answers = [client.result(ids[i]) for i in waiting]
                for i, (ok, value) in zip(waiting, await DeferredList(answers, consumeErrors=True)):
                    if ok:
                        results[i] = value.decode()
                    elif value.check(TaskFailed):
                        failures[i] = str(value.value)
                    elif not value.check(SchedulerGone):
                        value.raiseException()
            finally:
                await client.close()
            if refused:
                await task.deferLater(reactor, 0.2, lambda: None)
        output.write_text(
            json.dumps(
                {
                    "ids": {str(i): v for i, v in ids.items()},
                    "results": {str(i): v for i, v in results.items()},
                    "failures": {str(i): v for i, v in failures.items()},
                    "reconnections": connections - 1,
                    "refusals": refusals,
                }
            )
        )

    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


# -- store faults -------------------------------------------------------------


class StoreFaults(threading.Thread):
    """
    Take the store's write lock from another connection at random moments,
    for a random while: every commit the scheduler tries meanwhile fails
    (SQLITE_BUSY, at once).  Never longer than ``longest`` seconds, so a
    scheduler restarted meanwhile still opens the store (it waits up to 5 s).
    """

    def __init__(self, path: Path, count: int, pace: float, longest: float, seed: int) -> None:
        super().__init__(name="store-faults", daemon=True)
        self.path = path
        self.count = count
        self.pace = pace
        self.longest = longest
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.performed = 0
        self.held = 0.0

    def run(self) -> None:
        from taskmesh.testing import write_lock

        while self.performed < self.count and not self.done.wait(self.rng.uniform(0.1, self.pace)):
            seconds = self.rng.uniform(0.05, self.longest)
            with write_lock(self.path):
                self.done.wait(seconds)
            self.performed += 1
            self.held += seconds


# -- the orchestrator ---------------------------------------------------------


def orchestrate(arguments: argparse.Namespace) -> int:
    from taskmesh.testing import Mesh, Process, wait_until, write_lock

    rng = random.Random(arguments.seed)
    folder = Path(tempfile.mkdtemp(prefix="taskmesh-chaos-"))
    journal = folder / "executions.journal"
    results_path = folder / "client.json"
    os.environ["TASKMESH_CHAOS_JOURNAL"] = str(journal)
    os.environ["TASKMESH_CHAOS_TASK_SECONDS"] = str(arguments.task_seconds)
    scheduler_options = (
        # Kills are the infrastructure's fault, not the tasks': never fail a task as poison here.
        "--max-losses",
        "1000000",
        "--heartbeat",
        "1",
    )
    worker_options = ("--handler", "chaos_handler:JournaledSha256", "--reconnect-max-delay", "0.5")
    started = time.monotonic()
    with Mesh(folder, store=str(folder / "chaos.sqlite")) as mesh:
        incarnations = {"scheduler": 0}
        mesh.scheduler("scheduler-0", *scheduler_options)
        workers: dict[str, Process] = {}
        for n in range(arguments.workers):
            name = f"w{n}"
            incarnations[name] = 0
            workers[name] = mesh.worker(f"{name}-0", arguments.concurrency, worker_options, HERE)
        for name, process in workers.items():
            mesh.wait_joined(f"{name}-0", arguments.concurrency, worker=process)
        store = folder / "chaos.sqlite"
        client_argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--client",
            mesh.address,
            "--tasks",
            str(arguments.tasks),
            "--output",
            str(results_path),
        ]
        performed: dict[str, float] = {"worker": 0, "scheduler": 0, "store": 0, "store seconds": 0.0}
        if arguments.store_faults:
            # The first store fault, for certain: the client starts while
            # another connection holds the store's write lock, which is let go
            # only once the client has been refused (after the grace time).
            held_since = time.monotonic()
            with write_lock(store):
                client = mesh.start("client", client_argv)
                client.wait_for(r"^refused \d+", source="stdout")
            performed["store"] = 1
            performed["store seconds"] = time.monotonic() - held_since
        else:
            client = mesh.start("client", client_argv)
        # Then more, at random moments, while the kills go on.
        faults = StoreFaults(store, arguments.store_faults - 1, arguments.pace * 2, 2.5, rng.randrange(2**32))
        faults.start()
        actions = ["worker"] * arguments.worker_kills + ["scheduler"] * arguments.scheduler_kills
        rng.shuffle(actions)
        for action in actions:
            time.sleep(rng.uniform(arguments.pace / 2, arguments.pace * 1.5))
            if not client.running():
                break
            if action == "worker":
                name = rng.choice(sorted(workers))
                workers[name].kill()
                time.sleep(rng.uniform(0, arguments.pace))
                incarnations[name] += 1
                workers[name] = mesh.worker(
                    f"{name}-{incarnations[name]}", arguments.concurrency, worker_options, HERE
                )
            else:
                assert mesh.scheduler_process is not None
                mesh.scheduler_process.kill()
                time.sleep(rng.uniform(0, arguments.pace))
                incarnations["scheduler"] += 1
                mesh.scheduler(f"scheduler-{incarnations['scheduler']}", *scheduler_options)
            performed[action] += 1
        client.wait(timeout=arguments.timeout)
        faults.done.set()
        faults.join(10)
        performed["store"] += faults.performed
        performed["store seconds"] = round(performed["store seconds"] + faults.held, 1)
        wait_until(lambda: results_path.exists(), 5, "the client's results")
        elapsed = time.monotonic() - started
        if client.popen.returncode != 0:
            print(client.describe(), file=sys.stderr)
            return 1
    return report(arguments, folder, results_path, journal, performed, elapsed)


def leader_of(schedulers: dict[str, Any]) -> Any:
    """The running scheduler that logged it leads (None: none yet)."""
    for process in schedulers.values():
        if process.running() and process.count(r"leading: serving on ") > 0:
            return process
    return None


def probe_failover(address: str, deadline: float) -> float:
    """
    Seconds until a fresh client, given both addresses, gets a task served
    (from now): connected to the new leader, run by a worker that found it.
    """
    import taskmesh

    started = time.monotonic()
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            client = taskmesh.connect(address, timeout=1.0, wait_timeout=5.0)
            try:
                # Ahead of the recovered backlog: this measures the failover, not the queue.
                client.submit(f"probe-{started}-{n}", priority=1_000_000)
            finally:
                client.close()
            return time.monotonic() - started
        except Exception:  # not served yet: the standby has not taken over
            time.sleep(0.05)
    raise TimeoutError("no scheduler served a task before the deadline")


def orchestrate_standby(arguments: argparse.Namespace) -> int:
    """Two schedulers on one PostgreSQL store; kill the leader, cut its lock session."""
    import psycopg

    from taskmesh.testing import Mesh, Process, free_port, wait_until
    from taskmesh.testing_postgres import PostgresCluster

    rng = random.Random(arguments.seed)
    folder = Path(tempfile.mkdtemp(prefix="taskmesh-chaos-standby-"))
    journal = folder / "executions.journal"
    results_path = folder / "client.json"
    os.environ["TASKMESH_CHAOS_JOURNAL"] = str(journal)
    os.environ["TASKMESH_CHAOS_TASK_SECONDS"] = str(arguments.task_seconds)
    scheduler_options = ("--max-losses", "1000000", "--heartbeat", "1", "--web", "none", "--hot-standby")
    worker_options = ("--handler", "chaos_handler:JournaledSha256", "--reconnect-max-delay", "0.5")
    started = time.monotonic()
    failovers: list[float] = []
    with PostgresCluster() as cluster:
        url = cluster.create_database("chaos")
        with Mesh(folder, store=url) as mesh:
            ports = {"a": mesh.port, "b": free_port()}
            mesh.address = ",".join(f"127.0.0.1:{port}" for port in ports.values())
            incarnations = {"a": 0, "b": 0}
            schedulers: dict[str, Process] = {}

            def start_scheduler(which: str) -> None:
                name = f"scheduler-{which}-{incarnations[which]}"
                listen = f"tcp:{ports[which]}:interface=127.0.0.1"
                process = mesh.twistd(
                    name, "taskmesh-scheduler", "--listen", listen, "--store", url, *scheduler_options
                )
                process.wait_for(rf"scheduler listening on 127\.0\.0\.1:{ports[which]}\b")
                schedulers[which] = process

            start_scheduler("a")
            wait_until(lambda: leader_of(schedulers), 30, "a leader")
            start_scheduler("b")
            schedulers["b"].wait_for(r"standby: the leader is at ")
            workers: dict[str, Process] = {}
            for n in range(arguments.workers):
                workers[f"w{n}"] = mesh.worker(f"w{n}-0", arguments.concurrency, worker_options, HERE)
                incarnations[f"w{n}"] = 0
            mesh.scheduler_process = leader_of(schedulers)
            for name, process in workers.items():
                mesh.wait_joined(f"{name}-0", arguments.concurrency, worker=process)
            client_argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--client",
                mesh.address,
                "--tasks",
                str(arguments.tasks),
                "--output",
                str(results_path),
            ]
            client = mesh.start("client", client_argv)
            performed: dict[str, float] = {"worker": 0, "scheduler": 0, "store": 0, "store seconds": 0.0}
            actions = (
                ["worker"] * arguments.worker_kills
                + ["scheduler"] * arguments.scheduler_kills
                + ["store"] * arguments.store_faults
            )
            rng.shuffle(actions)
            for action in actions:
                time.sleep(rng.uniform(arguments.pace / 2, arguments.pace * 1.5))
                if not client.running():
                    break
                for which, process in schedulers.items():
                    if not process.running():  # it stepped down by itself: a supervisor starts it again
                        incarnations[which] += 1
                        start_scheduler(which)
                if action == "worker":
                    name = rng.choice(sorted(workers))
                    workers[name].kill()
                    time.sleep(rng.uniform(0, arguments.pace))
                    incarnations[name] += 1
                    workers[name] = mesh.worker(
                        f"{name}-{incarnations[name]}", arguments.concurrency, worker_options, HERE
                    )
                    performed["worker"] += 1
                    continue
                leader = wait_until(lambda: leader_of(schedulers), 30, "a leader")
                which = next(key for key, process in schedulers.items() if process is leader)
                if action == "scheduler":
                    leader.kill()
                    failovers.append(probe_failover(mesh.address, time.monotonic() + 30))
                else:  # cut the leader's lock session: it must stop serving, by itself
                    with psycopg.connect(url, autocommit=True) as db:
                        db.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND granted"
                        )
                    leader.wait(timeout=10)
                    if "stopped serving: " not in leader.log:
                        raise RuntimeError(f"the leader exited without saying why\n{leader.describe()}")
                incarnations[which] += 1
                start_scheduler(which)
                performed[action] += 1
            client.wait(timeout=arguments.timeout)
            wait_until(lambda: results_path.exists(), 5, "the client's results")
            elapsed = time.monotonic() - started
            if client.popen.returncode != 0:
                print(client.describe(), file=sys.stderr)
                return 1
            with psycopg.connect(url) as db:
                rows = db.execute(
                    "SELECT key, id, state, result FROM tasks WHERE key LIKE 'chaos-%'"
                ).fetchall()
    rows = [
        (key, task_id, state, bytes(result) if result is not None else None)
        for key, task_id, state, result in rows
    ]
    extra: dict[str, Any] = {
        "mode": "standby (scheduler kills: the leader's; store faults: its lock session cut)"
    }
    if failovers:
        extra["failover seconds (min/median/max)"] = "/".join(
            f"{value:.2f}"
            for value in (min(failovers), sorted(failovers)[len(failovers) // 2], max(failovers))
        )
    return report(arguments, folder, results_path, journal, performed, elapsed, rows, extra)


def report(
    arguments: argparse.Namespace,
    folder: Path,
    results_path: Path,
    journal: Path,
    performed: dict[str, float],
    elapsed: float,
    rows: list[tuple[Any, ...]] | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    client = json.loads(results_path.read_text())
    ids = {int(i): v for i, v in client["ids"].items()}
    results = {int(i): v for i, v in client["results"].items()}
    failures = {int(i): v for i, v in client["failures"].items()}
    if rows is None:
        db = sqlite3.connect(str(folder / "chaos.sqlite"))
        rows = db.execute("SELECT key, id, state, result FROM tasks WHERE key LIKE 'chaos-%'").fetchall()
    stored: dict[int, list[tuple[int, int, bytes | None]]] = {}
    for key, task_id, state, result in rows:
        stored.setdefault(int(key.split("-")[1]), []).append((task_id, state, result))

    lost = wrong = duplicated = 0
    for i in range(arguments.tasks):
        expected = hashlib.sha256(f"chaos-{i}".encode()).hexdigest()
        entries = stored.get(i, [])
        if len(entries) > 1 or (entries and ids.get(i) != entries[0][0]):
            duplicated += 1
        if i not in results:
            lost += 1
        elif results[i] != expected:
            wrong += 1
        # the store itself must hold the one right result
        if not entries or entries[0][1] != 2 or (entries[0][2] or b"").decode() != expected:
            if i in results and results[i] == expected:
                lost += 1  # reported to the client but not stored: lost all the same
    executions = (
        [line for line in journal.read_text().splitlines() if line.startswith("chaos-")]
        if journal.exists()
        else []
    )
    duplicate_executions = len(executions) - len(set(executions))
    never_ran = arguments.tasks - len(set(executions))
    table = {
        "tasks": arguments.tasks,
        "workers": arguments.workers,
        "worker kills": performed["worker"],
        "scheduler kills": performed["scheduler"],
        "store faults": performed["store"],
        "store fault seconds": performed["store seconds"],
        "submissions refused": client["refusals"],
        "client reconnections": client["reconnections"],
        "seconds": round(elapsed, 1),
        "lost": lost,
        "duplicated": duplicated,
        "wrong": wrong,
        "failed": len(failures),
        "executions": len(executions),
        "duplicate executions": duplicate_executions,
        "never executed": never_ran,
        **(extra or {}),
    }
    width = max(map(len, table))
    for name, value in table.items():
        print(f"{name:<{width}}  {value}")
    if failures:
        print("failures:", dict(list(failures.items())[:5]), file=sys.stderr)
    short = (
        performed["worker"] < arguments.worker_kills
        or performed["scheduler"] < arguments.scheduler_kills
        or performed["store"] < arguments.store_faults
    )
    if short:
        print("warning: the tasks finished before every kill and store fault was made", file=sys.stderr)
    return 1 if (lost or duplicated or wrong or failures) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--worker-kills", type=int, default=6)
    parser.add_argument("--scheduler-kills", type=int, default=2)
    parser.add_argument(
        "--store-faults",
        type=int,
        default=4,
        help="times another connection holds the store's write lock (0.05 to 2.5 s): the "
        "scheduler's commits fail meanwhile",
    )
    parser.add_argument("--pace", type=float, default=0.6, help="mean seconds between kills")
    parser.add_argument("--task-seconds", type=float, default=0.05, help="how long each task runs")
    parser.add_argument("--timeout", type=float, default=600, help="bound on the whole run")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--standby",
        action="store_true",
        help="PostgreSQL store, two schedulers (leader and hot standby): scheduler kills kill the "
        "leader, store faults cut its lock session",
    )
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.client:
        run_client(arguments.client, arguments.tasks, arguments.output)
        return
    if arguments.seed is None:
        arguments.seed = random.randrange(2**32)
    print(f"seed {arguments.seed}")
    sys.exit(orchestrate_standby(arguments) if arguments.standby else orchestrate(arguments))


if __name__ == "__main__":
    main()
