"""
``taskmesh map`` over real processes: every result in input order, a worker
SIGKILLed midway, a high priority overtaking a long job, and a task type
that waits for a worker that runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import TRACED, Mesh, wait_until

BENCH = Path(__file__).resolve().parents[2] / "bench"


def write_lines(path: Path, count: int) -> list[bytes]:
    lines = [b"map-line-%d" % i for i in range(count)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def check_digests(output: Path, lines: list[bytes]) -> None:
    results = output.read_bytes().split(b"\n")
    assert results[-1] == b"" and len(results) == len(lines) + 1
    wrong = [
        i
        for i, (line, result) in enumerate(zip(lines, results))
        if hashlib.sha256(line).hexdigest().encode() != result
    ]
    assert wrong == [], f"{len(wrong)} results wrong or out of order, first at line {wrong[0] + 1}"


@pytest.mark.integration
def test_a_20000_line_map_returns_every_digest_in_order(mesh: Mesh) -> None:
    lines = write_lines(mesh.folder / "in.txt", 20_000)
    mesh.scheduler()
    mesh.workers("w1", "w2")
    run = mesh.command("map", "--connect", mesh.address, "--output", "out.txt", "in.txt")
    assert run.wait() == 0, run.describe()
    check_digests(mesh.folder / "out.txt", lines)
    assert run.stderr == ""  # stderr is not a terminal: no progress bar, nothing to say


@pytest.mark.integration
def test_a_map_survives_a_worker_killed_midway(mesh: Mesh) -> None:
    lines = write_lines(mesh.folder / "in.txt", 20_000)
    journal = mesh.folder / "executions.journal"
    os.environ["TASKMESH_CHAOS_JOURNAL"] = str(journal)
    os.environ["TASKMESH_CHAOS_TASK_SECONDS"] = "0"  # one reactor turn an item
    try:
        mesh.scheduler()
        slow = dict(options=("--handler", "chaos_handler:JournaledSha256"), extra_path=BENCH)
        victim, survivor = mesh.workers("victim", "survivor", **slow)
    finally:
        del os.environ["TASKMESH_CHAOS_JOURNAL"], os.environ["TASKMESH_CHAOS_TASK_SECONDS"]
    run = mesh.command(
        "map", "--connect", mesh.address, "--output", "out.txt", "--chunk-size", "50", "in.txt"
    )
    wait_until(lambda: journal.exists() and journal.stat().st_size > 16_000, 30, "the map to be under way")
    victim.kill()
    ran_before_the_kill = journal.read_bytes().count(b"\n")
    assert ran_before_the_kill < 20_000 and run.running(), "the map ended before the kill: it proves nothing"
    assert run.wait(timeout=120) == 0, run.describe()
    check_digests(mesh.folder / "out.txt", lines)
    assert run.running() is False
    mesh.scheduler_process.wait_for(r"worker victim@\S+ left")  # type: ignore[union-attr]
    executed = set(journal.read_bytes().split(b"\n")) - {b""}
    assert len(executed) == 20_000


@pytest.mark.integration
def test_a_high_priority_task_overtakes_a_long_job(mesh: Mesh) -> None:
    (mesh.folder / "slow.txt").write_text("0.05\n" * 400)  # 20 s of sleeps for one slot
    mesh.scheduler()
    mesh.workers("w1")
    long_job = mesh.command(
        "map", "--connect", mesh.address, "--type", "sleep", "--chunk-size", "1", "slow.txt"
    )
    mesh.scheduler_process.wait_for(r"worker w1@")  # type: ignore[union-attr]
    wait_until(lambda: long_job.stdout.count("slept") >= 3 or None, 30, "the long job to be running")
    urgent = mesh.run_submit("--priority", "10", "Hello, World!")
    assert urgent.popen.returncode == 0, urgent.describe()
    # The urgent task did not wait for the job's 400 items: the job still runs.
    assert long_job.running(), "the long job finished first: the test proves nothing"
    done = long_job.stdout.count("slept")
    assert done < 200, f"{done} of the job's items ran before the urgent task"


@pytest.mark.integration
def test_a_type_no_worker_runs_waits_for_a_worker_that_runs_it(mesh: Mesh) -> None:
    (mesh.folder / "in.txt").write_text("0.1\n0.2\n")
    mesh.scheduler()
    mesh.workers("plain")
    run = mesh.command("map", "--connect", mesh.address, "--type", "traced-sleep", "in.txt")
    run.wait_for("no connected worker runs task type 'traced-sleep' yet", source="stderr")
    status = mesh.command("status", "--connect", mesh.address, "--json")
    assert status.wait() == 0
    report = json.loads(status.stdout)
    assert report["jobs"] and report["jobs"][0]["type"] == "traced-sleep"
    assert run.running()
    mesh.workers("traced", **TRACED)
    assert run.wait() == 0, run.describe()
    assert run.stdout == "slept 0.1\nslept 0.2\n"


@pytest.mark.integration
def test_cpu_bound_work_runs_in_a_pool_of_processes(mesh: Mesh) -> None:
    lines = [b"2000:secret-%d" % i for i in range(40)]
    (mesh.folder / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    mesh.scheduler()
    (worker,) = mesh.workers("pool", concurrency=2, options=("--pool", "process"))
    run = mesh.command("map", "--connect", mesh.address, "--type", "pbkdf2", "--chunk-size", "4", "in.txt")
    assert run.wait() == 0, run.describe()
    expected = [
        hashlib.pbkdf2_hmac("sha256", line.split(b":", 1)[1], b"taskmesh", 2000).hex() for line in lines
    ]
    assert run.stdout.split() == expected
    # The work ran in the pool: processes whose parent is the worker ...
    pool = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == worker.pid]
    assert pool, "the worker started no pool processes"
    # ... and they end with it.
    worker.stop()
    wait_until(lambda: not any(p.exists() for p in pool), 10, "the pool's processes to end")


def _parent(proc: Path) -> int:
    try:
        status = (proc / "status").read_text()
    except OSError:
        return -1
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
