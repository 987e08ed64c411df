"""
A real scheduler (``twistd -n taskmesh-scheduler --store postgresql://...``)
on a throwaway PostgreSQL cluster, with real workers and clients: tasks
survive a scheduler killed without warning, a second scheduler on the same
database refuses to start, and a database restarted under load makes the
scheduler degraded (``/health`` 503, refusals with the reason) and then
recover by itself, with nothing acknowledged lost and nothing wrong.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import TIMEOUT, Mesh, free_port, wait_until

from taskmesh.testing_postgres import PostgresCluster

HERE = Path(__file__).resolve().parent
REFUSED = "store unavailable: connection refused (is PostgreSQL running there?)"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def health(port: int) -> int:
    """/health's status code (0: nothing answered)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@pytest.mark.integration
@pytest.mark.timeout(300)  # a dozen processes, each a few seconds to start on a loaded machine
def test_tasks_survive_a_scheduler_killed_without_warning(mesh: Mesh, postgres_url: str) -> None:
    mesh.store = postgres_url
    first = mesh.scheduler("scheduler1")
    texts = [f"survivor-{n}" for n in range(6)]  # each a `taskmesh submit` process: few, on a busy machine
    acknowledged = {}
    for text in texts:
        process = mesh.run_submit("--no-wait", text)
        assert process.popen.returncode == 0, process.describe()
        acknowledged[int(process.stdout)] = text
    first.kill()  # no shutdown at all: only what was committed is there
    second = mesh.scheduler("scheduler2")
    second.wait_for(r"recovered 6 unfinished tasks from the store")
    mesh.workers("w1")
    for task_id, text in acknowledged.items():
        process = mesh.command("result", "--connect", mesh.address, "--wait", str(task_id))
        assert process.wait(TIMEOUT) == 0, process.describe()
        assert process.stdout == digest(text) + "\n"
    # And once more, after a polite restart: outcomes are in the database too.
    second.stop()
    mesh.scheduler("scheduler3")
    task_id, text = next(iter(acknowledged.items()))
    process = mesh.command("result", "--connect", mesh.address, str(task_id), name="after-restart")
    assert process.wait(TIMEOUT) == 0, process.describe()
    assert process.stdout == digest(text) + "\n"


@pytest.mark.integration
def test_a_second_scheduler_on_the_same_database_refuses_to_start(mesh: Mesh, postgres_url: str) -> None:
    mesh.store = postgres_url
    first = mesh.scheduler("scheduler1")
    other = Mesh(mesh.folder / "other", store=postgres_url)
    other.folder.mkdir()
    with other:
        second = other.twistd(
            "scheduler2",
            "taskmesh-scheduler",
            "--listen",
            f"tcp:{other.port}:interface=127.0.0.1",
            "--store",
            postgres_url,
            "--web",
            "none",
        )
        assert second.wait(TIMEOUT) != 0
        text = second.stderr + second.log
        assert "cannot open the store: 127.0.0.1:" in text
        assert f"in use by another scheduler: taskmesh-scheduler writer pid {first.pid}" in text
    assert first.running()


@pytest.mark.integration
@pytest.mark.timeout(300)  # three phases of bounded waits, each up to TIMEOUT on a loaded machine
def test_the_database_restarted_under_load_degrades_then_recovers_losing_nothing(
    mesh: Mesh, postgres: PostgresCluster, postgres_url: str
) -> None:
    mesh.store = postgres_url
    web = free_port()
    scheduler = mesh.scheduler("scheduler", "--web", f"tcp:{web}:interface=127.0.0.1")
    mesh.workers("w1", "w2")
    assert health(web) == 200
    load = mesh.start(
        "load",
        [sys.executable, str(HERE / "pg_load.py"), mesh.address, str(mesh.folder), "4"],
        extra_path=HERE,
    )

    def acknowledged() -> int:
        return load.count(r"^ok ", source="stdout")

    wait_until(lambda: acknowledged() >= 100, TIMEOUT, "100 acknowledgements before the restart")
    postgres.stop("immediate")  # the database crashes under load
    wait_until(lambda: health(web) == 503, TIMEOUT, "/health to say degraded")
    # The first failure may meet the server still shutting down; then it refuses connections.
    scheduler.wait_for(r"the store cannot commit: ")
    scheduler.wait_for(r"the store .*connection refused \(is PostgreSQL running there\?\)")
    wait_until(lambda: load.count(r"^refused ", source="stdout") >= 1, TIMEOUT, "a refusal")
    assert f"refused {REFUSED}" in load.stdout
    assert load.count(r"^refused store unavailable: ", source="stdout") == load.count(r"^refused ", "stdout")
    during = acknowledged()
    postgres.start()
    wait_until(lambda: health(web) == 200, TIMEOUT, "/health to say serving again")
    scheduler.wait_for(r"the store commits again after")
    wait_until(lambda: acknowledged() >= during + 100, TIMEOUT, "100 acknowledgements after the restart")
    (mesh.folder / "stop-load").touch()
    assert load.wait(TIMEOUT * 2) == 0, load.describe()
    summary = json.loads(load.stdout.strip().splitlines()[-1])
    assert summary["acknowledged"] >= 200
    assert summary["lost"] == [] and summary["wrong"] == [], summary
    assert summary["errors"] == [], summary
    assert scheduler.running()
    assert scheduler.count(r"the store cannot commit") == 1  # one line for the episode
