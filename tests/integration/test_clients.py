"""
The blocking and asyncio clients against real scheduler and worker
processes, each in a process of its own (``client_scripts.py``): submit,
enqueue, result by id, cancel, status, a map in order, bounded waits, many
threads at once (blocking), a scheduler restart survived with reconnect on,
a clean exit with no thread left, a forked child told why it cannot use its
parent's blocking client, and no Twisted reactor in the asyncio one.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Mesh

HERE = Path(__file__).resolve().parent
TASKS: dict[str, Any] = dict(options=("--tasks", "sample_tasks"), extra_path=HERE)


def run_script(mesh: Mesh, kind: str) -> dict[str, Any]:
    script = mesh.start(
        kind,
        [sys.executable, str(HERE / "client_scripts.py"), kind, mesh.address, str(mesh.folder)],
        extra_path=HERE,
    )
    assert script.wait(TIMEOUT * 2) == 0, script.describe()
    return json.loads(script.stdout.strip().splitlines()[-1])


def check_common(seen: dict[str, Any]) -> None:
    assert seen["submit"] == 5
    assert seen["result"] == 9
    assert seen["map"] == [2 * i for i in range(50)]
    assert seen["bounded"] is True
    assert seen["cancel"] == "cancelled"
    assert seen["cancelled"] is True
    assert seen["status"] is True


@pytest.mark.integration
def test_the_blocking_client_against_real_processes(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=4, **TASKS)
    seen = run_script(mesh, "blocking")
    check_common(seen)
    assert seen["threads"] == [i + 1 for i in range(200)]  # 16 threads at once
    assert seen["pipelined"] == sum(2 * i for i in range(1000))
    assert seen["threads_left"] == ["MainThread"]


@pytest.mark.integration
def test_a_forked_child_is_told_it_cannot_use_its_parent_s_blocking_client(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=2, **TASKS)  # one slot for the gated task, one for the rest
    seen = run_script(mesh, "blocking-fork")
    assert seen == {"before": 3, "accepted": True, "child_exit": 0, "after": 7, "pending": "through"}


@pytest.mark.integration
def test_the_asyncio_client_on_uvloop(mesh: Mesh) -> None:
    pytest.importorskip("uvloop")  # the optional extra: pip install taskmesh[uvloop]
    mesh.scheduler()
    mesh.workers("w1", concurrency=4, **TASKS)
    seen = run_script(mesh, "aio-uvloop")
    check_common(seen)
    assert seen["loop"].startswith("uvloop")
    assert seen["gather"] == sum(2 * i for i in range(1000))
    assert seen["reactor_imported"] is False


@pytest.mark.integration
def test_a_blocking_map_read_slowly_stops_sending_items_at_its_buffer(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=4, **TASKS)
    seen = run_script(mesh, "blocking-backpressure")
    assert seen["first"] == 1
    assert seen["received_while_held"] == seen["settled_at"]  # held: nothing more sent
    assert seen["received_while_held"] <= seen["limit"]  # of 5000 items
    assert seen["all"] is True  # then read to the end, every result in order


@pytest.mark.integration
def test_the_asyncio_client_against_real_processes_without_a_reactor(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=4, **TASKS)
    seen = run_script(mesh, "aio")
    check_common(seen)
    assert seen["gather"] == sum(2 * i for i in range(1000))
    assert seen["wait_timeout"] is True
    assert seen["reactor_imported"] is False


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["blocking-restart", "aio-restart"])
def test_a_client_with_reconnect_survives_a_scheduler_restart(mesh: Mesh, kind: str) -> None:
    first = mesh.scheduler("scheduler1")
    mesh.workers("w1", concurrency=2, **TASKS)
    script = mesh.start(
        kind,
        [sys.executable, str(HERE / "client_scripts.py"), kind, mesh.address, str(mesh.folder)],
        extra_path=HERE,
    )
    script.wait_for(r"accepted \d+", source="stdout")
    first.kill()
    mesh.scheduler("scheduler2")  # the same port and store
    (mesh.folder / "gate-restart").touch()
    assert script.wait(TIMEOUT * 2) == 0, script.describe() + mesh.describe()
    seen = json.loads(script.stdout.strip().splitlines()[-1])
    assert seen["result"] == "through"
    assert seen["after"] == 2
    assert re.search(r"accepted \d+", script.stdout)
    if kind == "aio-restart":
        assert seen["reactor_imported"] is False


@pytest.mark.integration
def test_the_asyncio_client_delays_a_task_and_schedules_ticks(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=2, **TASKS)
    seen = run_script(mesh, "aio-time")
    assert seen["pending"] == ["scheduled", True]
    assert seen["delayed"] == 7
    assert seen["added"] == ["aio-beat", 0.5]
    assert seen["tick"] == 10
    assert seen["paused"] is True
    assert "unknown time zone 'Mars/Olympus'" in seen["refused"]
    assert seen["left"] == []
    assert seen["reactor_imported"] is False


@pytest.mark.integration
def test_the_asyncio_client_sends_again_what_was_not_accepted_before_a_restart(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    mesh.workers("w1", concurrency=2, **TASKS)
    script = mesh.start(
        "aio-resubmit",
        [sys.executable, str(HERE / "client_scripts.py"), "aio-resubmit", mesh.address, str(mesh.folder)],
        extra_path=HERE,
    )
    script.wait_for(r"connected", source="stdout")
    first.kill()
    (mesh.folder / "killed").touch()
    script.wait_for(r"submitted", source="stdout")
    mesh.scheduler("scheduler2")  # the same port and store
    assert script.wait(TIMEOUT * 2) == 0, script.describe() + mesh.describe()
    seen = json.loads(script.stdout.strip().splitlines()[-1])
    assert seen["first"] == seen["again"] == 3  # the keyed one: answered by the first task
    assert seen["results"] == [i + 10 for i in range(20)]
    assert seen["enqueued"] == 10
    assert seen["resubmissions"] >= 21
    assert seen["reactor_imported"] is False
