"""
Hot standby on a real PostgreSQL (the throwaway cluster of
``taskmesh.testing_postgres``) with real twistd processes:

- two schedulers on one store: one leads, the other answers as a standby
  and points to it; workers and the ``taskmesh`` command given both
  addresses find the leader whichever they try first;
- the leader SIGKILLed under load: the standby leads, every task has
  exactly one stored, right result (bench/chaos.py --standby, which also
  cuts the leader's lock session at random);
- a leader whose lock session is terminated on the server stops serving at
  once (its port closes, it exits with status 75), and the standby takes
  over; its dashboard address answered /health with 503 "standby" until
  then, and serves the dashboard (200 "serving") from then on.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT

from taskmesh.service import EXIT_LOST_LEADERSHIP
from taskmesh.testing import Mesh, Process, child_env, free_port, wait_until

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def start(mesh: Mesh, name: str, port: int, url: str, web: int | None = None) -> Process:
    process = mesh.twistd(
        name,
        "taskmesh-scheduler",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--store",
        url,
        "--hot-standby",
        "--web",
        "none" if web is None else f"tcp:{web}:interface=127.0.0.1",
        "--heartbeat",
        "1",
    )
    process.wait_for(rf"scheduler listening on 127\.0\.0\.1:{port}\b")
    return process


def two_schedulers(mesh: Mesh, url: str, standby_web: int | None = None) -> tuple[Process, Process, int, int]:
    first, second = mesh.port, free_port()
    leader = start(mesh, "s1", first, url)
    leader.wait_for(r"leading: serving on ")
    standby = start(mesh, "s2", second, url, web=standby_web)
    standby.wait_for(rf"standby: the leader is at 127\.0\.0\.1:{first}\b")
    # Peers get both addresses, the standby's first: they must follow its pointer.
    mesh.address = f"127.0.0.1:{second},127.0.0.1:{first}"
    mesh.scheduler_process = leader
    return leader, standby, first, second


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode().strip()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_peers_given_the_standby_first_find_the_leader(tmp_path: Path, postgres_url: str) -> None:
    with Mesh(tmp_path, store=postgres_url) as mesh:
        leader, standby, _, second = two_schedulers(mesh, postgres_url)
        mesh.workers("w1")
        submitted = mesh.run_submit(HELLO)
        assert submitted.popen.returncode == 0, submitted.describe()
        assert submitted.stdout.strip() == HELLO_DIGEST
        assert "is a standby; the leader is at" in mesh.processes[2].log  # the worker followed it
        # Asked alone, the standby's address still gets the work done: its pointer is followed.
        alone = mesh.run_submit("alone", address=f"127.0.0.1:{second}")
        assert alone.popen.returncode == 0, alone.describe()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_leader_killed_under_load_loses_nothing_and_records_each_result_once() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(CHAOS),
            "--standby",
            "--tasks",
            "600",
            "--workers",
            "2",
            "--worker-kills",
            "1",
            "--scheduler-kills",
            "2",
            "--store-faults",
            "1",
            "--task-seconds",
            "0.2",
            "--pace",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=230,
        env=child_env(),
    )
    print(run.stdout)
    print(run.stderr)
    counts = dict(re.findall(r"^([a-z ]+?)\s{2,}(\d+(?:\.\d+)?)$", run.stdout, re.MULTILINE))
    assert run.returncode == 0, run.stderr
    assert counts["tasks"] == "600"
    assert int(counts["scheduler kills"]) >= 1, "no leader was killed while the tasks ran"
    for name in ("lost", "duplicated", "wrong", "failed", "never executed"):
        assert counts[name] == "0", name
    assert int(counts["executions"]) >= 600
    failover = re.search(
        r"^failover seconds \(min/median/max\)\s+([\d.]+)/([\d.]+)/([\d.]+)$", run.stdout, re.M
    )
    assert failover is not None, run.stdout


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_leader_whose_lock_session_is_cut_stops_serving_and_the_standby_leads(
    tmp_path: Path, postgres_url: str
) -> None:
    with Mesh(tmp_path, store=postgres_url) as mesh:
        web = free_port()
        leader, standby, first, _ = two_schedulers(mesh, postgres_url, standby_web=web)
        # A probe asking the standby's dashboard address hears "standby", not a refused connection.
        standby.wait_for(r"standby's /health on .* answers 503 until this scheduler is elected")
        assert health(web) == (503, "standby: not the leader")
        mesh.workers("w1")
        with psycopg.connect(postgres_url, autocommit=True) as db:
            (cut,) = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted"
            ).fetchone()
        assert cut == 1
        cut_at = time.monotonic()
        status = leader.wait(TIMEOUT)
        assert status == EXIT_LOST_LEADERSHIP, leader.describe()
        assert re.search(
            r"stopped serving: leadership not confirmed: .*no longer held by our writer", leader.log
        )
        # It stopped at once: within a poll interval and a half of the cut (bounded generously here).
        standby.wait_for(r"leading: serving on ")
        took_over = time.monotonic() - cut_at
        print(f"lock session cut -> standby leads: {took_over:.2f} s")
        with pytest.raises(OSError):  # the deposed leader's port is closed
            socket.create_connection(("127.0.0.1", first), timeout=2).close()
        mesh.scheduler_process = standby
        # Elected, it serves its dashboard on the same address.
        standby.wait_for(r"dashboard on http://127\.0\.0\.1:\d+/")
        assert health(web) == (200, "serving")
        mesh.wait_joined("w1")  # the worker follows by itself
        submitted = mesh.run_submit(HELLO)
        assert submitted.popen.returncode == 0, submitted.describe()
        assert submitted.stdout.strip() == HELLO_DIGEST
        # Started again, the deposed one is a standby pointing to the new leader.
        again = start(mesh, "s1-again", first, postgres_url)
        again.wait_for(r"standby: the leader is at 127\.0\.0\.1:\d+")
        wait_until(lambda: again.running(), 2, "the restarted scheduler to keep running")
