"""
The operator's commands against real processes: ``taskmesh tasks`` lists
failed tasks with their reason (the worker logged the traceback),
``taskmesh retry`` runs a failed one again under its id with fresh
attempts, ``taskmesh purge`` cancels a queued type (asking first on a
terminal), and ``taskmesh config`` / TASKMESH_* reach real processes.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from conftest import TIMEOUT, Mesh

from taskmesh.testing import TASKMESH, child_env

HERE = Path(__file__).resolve().parent
OPS = dict(options=("--tasks", "ops_tasks"), extra_path=HERE)


def run(mesh: Mesh, *argv: str) -> subprocess.CompletedProcess[str]:
    """One ``taskmesh`` command against the mesh, to its end (bounded)."""
    command, rest = argv[0], argv[1:]
    return subprocess.run(
        [TASKMESH, command, "--connect", mesh.address, *rest],
        cwd=mesh.folder,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def rows(mesh: Mesh, *argv: str) -> list[dict[str, object]]:
    listed = run(mesh, "tasks", "--json", *argv)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


@pytest.mark.integration
def test_list_a_failed_task_retry_it_under_its_id_and_see_it_succeed(mesh: Mesh) -> None:
    mesh.scheduler()
    (worker,) = mesh.workers("w1", **OPS)
    flag = mesh.folder / "flag"
    submitted = run(mesh, "submit", "--no-wait", "--type", "fails_unless", "--json", json.dumps([str(flag)]))
    assert submitted.returncode == 0, submitted.stderr
    task_id = int(submitted.stdout)
    assert run(mesh, "result", "--wait", str(task_id)).returncode == 1  # it failed

    # The worker logged the failure with its traceback.
    worker.wait_for(rf"task {task_id} \(fails_unless\) failed: RuntimeError: no flag yet")
    assert "Traceback" in worker.log and "raise RuntimeError" in worker.log

    (row,) = rows(mesh, "--state", "failed")
    assert row["id"] == task_id and row["type"] == "fails_unless" and row["state"] == "failed"
    assert "RuntimeError: no flag yet" in str(row["reason"])
    table = run(mesh, "tasks")
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "TYPE", "STATE"]
    assert table.stdout.splitlines()[1].split()[:3] == [str(task_id), "fails_unless", "failed"]

    flag.touch()
    retried = run(mesh, "retry", str(task_id))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.split() == [str(task_id)]
    waited = run(mesh, "result", "--wait", str(task_id))
    assert (waited.returncode, waited.stdout.strip()) == (0, '"fixed"')
    (row,) = rows(mesh, "--state", "succeeded")
    assert row["id"] == task_id and row["attempts"] == 0

    again = run(mesh, "retry", str(task_id))
    assert again.returncode == 1 and f"task {task_id} not retried: task {task_id} succeeded" in again.stderr
    unknown = run(mesh, "retry", "999999999")
    assert unknown.returncode == 1 and "no task 999999999 in the store" in unknown.stderr


@pytest.mark.integration
def test_retry_every_failed_task_of_a_type(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", **OPS)
    flag = mesh.folder / "flag"
    ids = []
    for _ in range(3):
        done = run(mesh, "submit", "--no-wait", "--type", "fails_unless", "--json", json.dumps([str(flag)]))
        ids.append(int(done.stdout))
    for task_id in ids:
        assert run(mesh, "result", "--wait", str(task_id)).returncode == 1
    flag.touch()
    retried = run(mesh, "retry", "--failed", "--type", "fails_unless")
    assert retried.returncode == 0, retried.stderr
    assert sorted(int(line) for line in retried.stdout.split()) == ids
    for task_id in ids:
        assert run(mesh, "result", "--wait", str(task_id)).stdout.strip() == '"fixed"'
    nothing = run(mesh, "retry", "--failed")
    assert nothing.returncode == 0 and "no failed tasks to retry" in nothing.stderr


@pytest.mark.integration
def test_purge_cancels_the_queued_tasks_of_a_type_and_asks_first_on_a_terminal(mesh: Mesh) -> None:
    mesh.scheduler()
    ids = [int(run(mesh, "submit", "--no-wait", "--type", "nobody-runs", str(i)).stdout) for i in range(3)]
    kept = int(run(mesh, "submit", "--no-wait", "--type", "other", "x").stdout)

    # On a terminal it asks; "n" purges nothing.
    controller, terminal = pty.openpty()
    try:
        asking = subprocess.Popen(
            [TASKMESH, "purge", "--connect", mesh.address, "--type", "nobody-runs"],
            cwd=mesh.folder,
            env=child_env(),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, b"n\n")
        _, stderr = asking.communicate(timeout=TIMEOUT)
    finally:
        os.close(controller)
        os.close(terminal)
    assert asking.returncode == 1 and "Cancel every queued 'nobody-runs' task" in stderr
    assert "nothing purged" in stderr
    assert {row["state"] for row in rows(mesh, "--type", "nobody-runs")} == {"queued"}

    purged = run(mesh, "purge", "--type", "nobody-runs", "--yes")
    assert (purged.returncode, purged.stdout.strip()) == (0, "purged 3 queued nobody-runs tasks")
    cancelled = rows(mesh, "--state", "cancelled")
    assert sorted(int(str(row["id"])) for row in cancelled) == ids
    assert all("purged by" in str(row["reason"]) for row in cancelled)
    assert [row["id"] for row in rows(mesh, "--state", "unfinished")] == [kept]
    waited = run(mesh, "result", str(ids[0]))
    assert waited.returncode == 1 and "cancelled" in waited.stderr and "purged by" in waited.stderr
    # A purged task can be brought back.
    assert run(mesh, "retry", str(ids[0])).returncode == 0
    assert [row["id"] for row in rows(mesh, "--state", "unfinished")] == [kept, ids[0]]  # newest first


@pytest.mark.integration
def test_settings_from_the_environment_and_a_file_reach_real_processes(mesh: Mesh) -> None:
    (mesh.folder / "taskmesh.toml").write_text(
        f'[worker]\nconnect = "{mesh.address}"\nconcurrency = 3\n[client]\nconnect = "{mesh.address}"\n'
    )
    mesh.scheduler()
    # No --connect and no --concurrency: both come from ./taskmesh.toml.
    worker = mesh.twistd("w1", "taskmesh-worker", "--name", "w1")
    mesh.wait_joined("w1", slots=3, worker=worker)
    status = subprocess.run(
        [TASKMESH, "status", "--json"],
        cwd=mesh.folder,
        env={**child_env(), "TASKMESH_CONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["workers"][0]["slots"] == 3
    # The environment beats the file: a worker pointed elsewhere by TASKMESH_CONNECT.
    wrong = subprocess.run(
        [TASKMESH, "status"],
        cwd=mesh.folder,
        env={**child_env(), "TASKMESH_CONNECT": "127.0.0.1:1", "TASKMESH_CONNECT_TIMEOUT": "0.5"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert wrong.returncode == 3 and "127.0.0.1:1" in wrong.stderr
