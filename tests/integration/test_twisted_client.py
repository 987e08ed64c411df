"""
The Twisted client's one rule and its new powers, against real processes:
every method returns a Deferred, ``submit`` a TaskHandle with the task's id,
``wait_timeout`` bounds any wait, and ``reconnect=True`` survives a
scheduler restart, re-attaching an accepted task by its id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sample_tasks
from conftest import Mesh, bounded
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred

import taskmesh
from taskmesh.client.twisted_client import TaskHandle

HERE = Path(__file__).resolve().parent
TASKS: dict[str, Any] = dict(options=("--tasks", "sample_tasks"), extra_path=HERE)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_every_method_returns_a_deferred_and_every_wait_is_bounded(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=4, **TASKS)
    connecting = taskmesh.Client.connect(mesh.address, reactor)
    assert isinstance(connecting, Deferred)
    client = await bounded(connecting)
    try:
        handle = client.submit(sample_tasks.add, 2, 3)
        assert isinstance(handle, TaskHandle) and isinstance(handle, Deferred)
        task_id = await bounded(handle.id())
        assert await bounded(handle) == 5
        assert handle.task_id == task_id
        assert await bounded(client.result(task_id, json=True)) == 5

        for call in (client.result(task_id), client.status(), client.map(sample_tasks.add, [(1, 2)])):
            assert isinstance(call, Deferred)
            await bounded(call)
        assert await bounded(client.map(sample_tasks.add, [(i, 1) for i in range(30)])) == [
            i + 1 for i in range(30)
        ]

        gate = mesh.folder / "gate"
        gated = client.submit(sample_tasks.gated, str(gate), 2)
        gated_id = await bounded(gated.id())
        with pytest.raises(TimeoutError):
            await bounded(client.result(gated_id, wait_timeout=0.2))
        assert await bounded(client.cancel(gated_id, wait_timeout=10)) == "cancelled"
        with pytest.raises(taskmesh.TaskCancelled):
            await bounded(gated)
        gate.touch()
        assert isinstance(await bounded(client.status(wait_timeout=10)), dict)
    finally:
        await bounded(client.close())


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_default_wait_timeout_bounds_submit_too(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=2, **TASKS)
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor, wait_timeout=0.3))
    gate = mesh.folder / "gate"
    try:
        handle = client.submit(sample_tasks.gated, str(gate), 2)
        with pytest.raises(TimeoutError):
            await bounded(handle)
        # Giving up waiting does not lose the task: its id is known, its result fetched later.
        task_id = await bounded(handle.id())
        gate.touch()
        assert await bounded(client.result(task_id, json=True, wait_timeout=30)) == "through"
    finally:
        gate.touch()
        await bounded(client.close())


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_reconnect_survives_a_scheduler_restart(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    mesh.workers("w1", concurrency=2, **TASKS)
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor, reconnect=True))
    gate = mesh.folder / "gate"
    try:
        handle = client.submit(sample_tasks.gated, str(gate), 2)
        await bounded(handle.id())
        first.kill()
        # The same port and store; started from a thread, so the reactor (and the client) runs meanwhile.
        await bounded(threads.deferToThread(mesh.scheduler, "scheduler2"))
        gate.touch()
        assert await bounded(handle) == "through"
        assert await bounded(client.submit(sample_tasks.add, 1, 1)) == 2
        assert client.reconnections >= 1
    finally:
        gate.touch()
        await bounded(client.close())


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_submissions_not_accepted_when_the_scheduler_went_away_are_sent_again(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    mesh.workers("w1", concurrency=2, **TASKS)
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor, reconnect=True))
    keyed = sample_tasks.add.options(key="only-once")
    try:
        assert await bounded(client.submit(keyed, 1, 2)) == 3
        first.kill()  # gone: what is submitted now cannot be accepted before it is back
        handles = [client.submit(sample_tasks.add, i, 10) for i in range(20)]
        again = client.submit(keyed, 1, 2)
        enqueued = client.enqueue(sample_tasks.add, 5, 5)
        # The same port and store; started from a thread, so the reactor (and the client) runs meanwhile.
        await bounded(threads.deferToThread(mesh.scheduler, "scheduler2"))
        assert [await bounded(handle) for handle in handles] == [i + 10 for i in range(20)]
        assert await bounded(again) == 3
        assert await bounded(client.result(await bounded(enqueued), json=True)) == 10
        assert client.resubmissions >= 21
        # The keyed one was not run again: the scheduler answered it with the first task.
        assert again.task_id == (await bounded(client.submit(keyed, 1, 2).id()))
    finally:
        await bounded(client.close())
