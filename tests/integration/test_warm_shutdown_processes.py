"""
Warm shutdown of a real worker (``twistd -n taskmesh-worker``), by signal:
SIGTERM hands the held tasks back at once (another worker runs them while
the first still finishes its own), delivers the running task's result and
exits; a second signal exits at once and the scheduler runs the abandoned
task again; so does the end of ``--grace``.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ops_tasks
import pytest
import pytest_twisted
from conftest import TIMEOUT, Mesh, bounded
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

import taskmesh
from taskmesh.testing import free_port

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
OPS: dict[str, Any] = dict(options=("--tasks", "ops_tasks"), extra_path=HERE)


async def eventually(condition: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll without blocking the reactor; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)
    return value


def runs(mark: Path) -> int:
    """How many times the task with this mark has started."""
    return len(mark.read_text().splitlines()) if mark.exists() else 0


def waiting(port: int) -> float | None:
    """The worker's own count of tasks received and waiting for a slot (its /metrics), None if not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "taskmesh_worker_process_waiting":
            return float(family.samples[0].value)
    return None


async def held_by(client: taskmesh.Client, name: str, count: int) -> None:
    async def holding() -> bool:
        status = await bounded(client.status())
        return any(w["name"].startswith(name + "@") and w["held"] == count for w in status["workers"])

    deadline = time.monotonic() + TIMEOUT
    while not await holding():
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never held {count} tasks")
        await deferLater(reactor, 0.05, lambda: None)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_sigterm_hands_back_held_tasks_and_delivers_the_running_one(mesh: Mesh, tmp_path: Path) -> None:
    scheduler = mesh.scheduler()
    metrics = free_port()
    # One slot, and the scheduler's prefetch of 2; its /metrics says what it has received.
    (first,) = mesh.workers(
        "first", options=(*OPS["options"], "--metrics", f"tcp:{metrics}:interface=127.0.0.1"), extra_path=HERE
    )
    gates = {name: tmp_path / f"gate-{name}" for name in "abc"}
    marks = {name: tmp_path / f"mark-{name}" for name in "abc"}
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        a = client.submit(ops_tasks.hold, str(gates["a"]), str(marks["a"]))
        await eventually(lambda: runs(marks["a"]), "task a to start on the first worker")
        b = client.submit(ops_tasks.hold, str(gates["b"]), str(marks["b"]))
        c = client.submit(ops_tasks.hold, str(gates["c"]), str(marks["c"]))
        await held_by(client, "first", 3)  # a runs, b and c are prefetched
        # Assigned is not yet received: wait until the worker itself holds b and c.
        await eventually(lambda: waiting(metrics) == 2, "the first worker to have received b and c")

        first.signal(signal.SIGTERM)
        # (From a thread: the reactor, and the client's heartbeats, run meanwhile.)
        await deferToThread(
            first.wait_for, r"shutting down: handed 2 held tasks back to the scheduler; 1 still run"
        )
        await deferToThread(
            scheduler.wait_for, r"worker first@\S+ is shutting down: it finishes 1 running, hands back 2"
        )
        (second,) = mesh.workers("second", **OPS)
        # b runs on the second worker while the first still runs a.
        await eventually(lambda: runs(marks["b"]), "task b to start on the second worker")
        assert first.running() and runs(marks["a"]) == 1
        gates["b"].touch()
        gates["c"].touch()
        assert await bounded(b) == "through mark-b"
        assert await bounded(c) == "through mark-c"

        gates["a"].touch()
        assert await bounded(a) == "through mark-a"  # delivered by the stopping worker
    finally:
        await bounded(client.close())
    # twistd ends a run that a signal stopped by that signal, once shut down cleanly.
    assert first.wait() == -signal.SIGTERM
    assert "Server Shut Down." in first.log
    assert [runs(marks[name]) for name in "abc"] == [1, 1, 1]  # each ran once: nothing rerun
    scheduler.wait_for(r"worker first@\S+ left \(.*\); 0 tasks to requeue")
    assert "lost its worker" not in scheduler.log and "attempt" not in scheduler.log
    assert second.running()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["second signal", "grace"])
async def test_a_second_signal_or_the_grace_exits_at_once_and_the_task_runs_again(
    mesh: Mesh, tmp_path: Path, how: str
) -> None:
    scheduler = mesh.scheduler()
    grace = ("--grace", "1") if how == "grace" else ()
    (first,) = mesh.workers("first", options=(*OPS["options"], *grace), extra_path=HERE)
    gate, mark = tmp_path / "gate", tmp_path / "mark"
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        task = client.submit(ops_tasks.hold, str(gate), str(mark))
        await eventually(lambda: runs(mark), "the task to start")
        first.signal(signal.SIGTERM)
        first.wait_for(r"waiting up to \S+ s for 1 running tasks to finish")
        if how == "second signal":
            first.signal(signal.SIGINT)
            expected = r"a second signal \(SIGINT\): exiting now; 1 running tasks are abandoned"
        else:
            expected = r"the 1 s grace is over: exiting now; 1 running tasks are abandoned"
        # It exits with its task still in its thread (the gate is closed).
        first.wait(TIMEOUT)
        assert not gate.exists()
        assert re.search(expected, first.log), first.log
        scheduler.wait_for(r"worker first@\S+ left \(.*\); 1 tasks to requeue")
        mesh.workers("second", **OPS)
        await eventually(lambda: runs(mark) == 2, "the task to run again on the second worker")
        gate.touch()
        assert await bounded(task) == "through mark"
    finally:
        await bounded(client.close())
