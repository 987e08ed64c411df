"""
Time with real processes: an every-second schedule across a scheduler
SIGKILL and restart enqueues each tick once (no duplicate, and nothing
missing beyond the run-once policy); a delayed task from the CLI is
scheduled, shown in status and result with its due time, runs once due,
and one far ahead is cancelled from the store.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT, Mesh, wait_until


def run(mesh: Mesh, *argv: str) -> tuple[int, str, str]:
    """``taskmesh COMMAND [SUBCOMMAND] --connect ADDRESS OPTIONS... ARGUMENTS...`` to its end."""
    words = 2 if argv[0] == "schedule" else 1
    process = mesh.command(*argv[:words], "--connect", mesh.address, *argv[words:])
    code = process.wait(TIMEOUT)
    return code, process.stdout, process.stderr


def schedule_list(mesh: Mesh) -> list[dict]:  # type: ignore[type-arg]
    code, out, err = run(mesh, "schedule", "list", "--json")
    assert code == 0, err
    found: list[dict] = json.loads(out)  # type: ignore[type-arg]
    return found


def tick_dues(mesh: Mesh, name: str) -> list[int]:
    """The due times (ms) of every tick task of a schedule, from the store itself."""
    db = sqlite3.connect(str(mesh.folder / mesh.store))
    try:
        rows = db.execute("SELECT key FROM tasks WHERE key LIKE ?", (f"schedule:{name}@%",)).fetchall()
    finally:
        db.close()
    return sorted(int(key.rsplit("@", 1)[1]) for (key,) in rows)


@pytest.mark.integration
def test_an_every_second_schedule_across_a_sigkill_ticks_once_each(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    code, out, err = run(mesh, "schedule", "add", "--every", "1s", "tick", HELLO)
    assert code == 0, err
    assert out.startswith("schedule tick: next run ")

    def ticks_at_least(count: int) -> bool:
        (found,) = schedule_list(mesh)
        return found["last_task"] is not None and len(tick_dues(mesh, "tick")) >= count

    wait_until(lambda: ticks_at_least(3), TIMEOUT, "three ticks")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    killed_at = time.time()
    before = tick_dues(mesh, "tick")
    # Down for over two seconds: two ticks or more are missed, and the policy runs one of them.
    wait_until(lambda: time.time() > killed_at + 2.5, TIMEOUT, "the scheduler's downtime")
    mesh.scheduler("scheduler2")
    restarted_at = time.time()
    wait_until(lambda: ticks_at_least(len(before) + 4), TIMEOUT, "ticks after the restart")
    mesh.scheduler_process.stop()  # type: ignore[union-attr]
    dues = tick_dues(mesh, "tick")
    assert len(dues) == len(set(dues)), dues  # no tick twice
    gaps = [b - a for a, b in zip(dues, dues[1:])]
    # Every step is one second, except one: the missed ticks, run once, as the latest one missed.
    big = [gap for gap in gaps if gap != 1000]
    assert len(big) == 1 and big[0] > 2000, gaps
    catch_up = dues[gaps.index(big[0]) + 1]
    assert dues[: gaps.index(big[0]) + 1] == before[: gaps.index(big[0]) + 1]
    assert catch_up / 1000 <= restarted_at and catch_up / 1000 > killed_at
    assert "running its missed tick" in mesh.scheduler_process.log  # type: ignore[union-attr]


@pytest.mark.integration
def test_a_delayed_task_from_the_cli_is_scheduled_then_runs_and_a_far_one_is_cancelled(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1")
    code, out, err = run(mesh, "submit", "--delay", "2s", HELLO)
    assert code == 0, err
    near = int(out)
    code, out, err = run(mesh, "submit", "--at", "2099-12-24T18:00:00Z", HELLO)
    assert code == 0, err
    far = int(out)
    code, out, _ = run(mesh, "result", str(far))
    assert (code, out) == (4, "scheduled 2099-12-24T18:00:00Z\n")
    code, out, _ = run(mesh, "status", "--json")
    assert json.loads(out)["tasks"]["scheduled"] >= 1
    code, out, _ = run(mesh, "status")
    assert "scheduled" in out
    code, out, _ = run(mesh, "cancel", str(far))
    assert (code, out) == (0, "cancelled\n")
    code, out, err = run(mesh, "result", "--wait", str(near))
    assert (code, out) == (0, HELLO_DIGEST + "\n"), err
    code, out, _ = run(mesh, "status", "--json")
    assert json.loads(out)["tasks"]["scheduled"] == 0
