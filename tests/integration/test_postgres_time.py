"""
Time with real processes on a PostgreSQL store (a throwaway cluster): a
task delayed beyond the scheduler's horizon (so only the database holds it
until the window reaches it) runs once due, and an every-second schedule
keeps ticking across a scheduler SIGKILL and restart, each tick once, its
record and its tasks read back from the database.
"""

from __future__ import annotations

import json
import signal

import psycopg
import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT, Mesh, wait_until


def run(mesh: Mesh, *argv: str) -> tuple[int, str, str]:
    """``taskmesh COMMAND [SUBCOMMAND] --connect ADDRESS OPTIONS... ARGUMENTS...`` to its end."""
    words = 2 if argv[0] == "schedule" else 1
    process = mesh.command(*argv[:words], "--connect", mesh.address, *argv[words:])
    code = process.wait(TIMEOUT)
    return code, process.stdout, process.stderr


def tick_dues(url: str, name: str) -> list[int]:
    """The due times (ms) of every tick task of a schedule, from the database itself."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT key FROM tasks WHERE key LIKE %s", (f"schedule:{name}@%",)).fetchall()
    return sorted(int(key.rsplit("@", 1)[1]) for (key,) in rows)


def finished(url: str, task_id: int) -> bool:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT finished_at IS NOT NULL FROM tasks WHERE id = %s", (task_id,)).fetchone()
    return bool(row and row[0])


@pytest.mark.integration
@pytest.mark.timeout(300)  # CLI processes take seconds each to start on a loaded machine
def test_a_far_delayed_task_runs_and_a_schedule_ticks_across_a_sigkill_on_postgresql(
    mesh: Mesh, postgres_url: str
) -> None:
    mesh.store = postgres_url
    first = mesh.scheduler("scheduler1", "--horizon", "1")
    mesh.workers("w1")
    code, out, err = run(mesh, "submit", "--delay", "4s", HELLO)  # beyond the 1 s window: the database's
    assert code == 0, err
    far = int(out)
    code, out, err = run(mesh, "schedule", "add", "--every", "1s", "tick", HELLO)
    assert code == 0, err
    # Nobody asks for it (a query would load it from the store): the window alone must reach it.
    wait_until(lambda: finished(postgres_url, far), TIMEOUT, "the far task's outcome in the database")
    code, out, err = run(mesh, "result", str(far))
    assert (code, out) == (0, HELLO_DIGEST + "\n"), err
    wait_until(lambda: len(tick_dues(postgres_url, "tick")) >= 2, TIMEOUT, "two ticks in the database")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    before = tick_dues(postgres_url, "tick")

    mesh.scheduler("scheduler2", "--horizon", "1")
    code, out, err = run(mesh, "schedule", "list", "--json")
    assert code == 0, err
    (found,) = json.loads(out)
    assert found["name"] == "tick" and found["last_task"] is not None
    wait_until(lambda: len(tick_dues(postgres_url, "tick")) >= len(before) + 2, TIMEOUT, "ticks after it")
    mesh.scheduler_process.stop()  # type: ignore[union-attr]
    dues = tick_dues(postgres_url, "tick")
    assert len(dues) == len(set(dues)), dues  # no tick twice
    assert dues[: len(before)] == before
    with psycopg.connect(postgres_url, autocommit=True) as db:
        row = db.execute("SELECT state, due_at IS NOT NULL FROM tasks WHERE id = %s", (far,)).fetchone()
    assert row == (2, True)  # SUCCEEDED, and stored with its due time
