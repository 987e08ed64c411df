"""A worker SIGKILLed in the middle of a task: the scheduler requeues it and the other worker runs it."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import pytest_twisted
from conftest import TIMEOUT, TRACED, Mesh, Process, bounded
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

import taskmesh

T = TypeVar("T")
LONG, SHORT = "5.0", "1.0"  # seconds; the worker running the long task is killed


async def eventually(condition: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll without blocking the reactor; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (value := condition()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)
    return value


def started(worker: Process, seconds: str) -> bool:
    return f"traced-sleep {seconds} started" in worker.log


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_task_of_a_killed_worker_reruns_on_the_other(mesh: Mesh) -> None:
    scheduler = mesh.scheduler()
    workers = mesh.workers("w1", "w2", **TRACED)
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        # One frame, one reactor turn in the scheduler: each task goes to the
        # worker with the most free room, so each worker gets one.
        results = gatherResults(
            [client.submit(LONG, "traced-sleep"), client.submit(SHORT, "traced-sleep")],
            consumeErrors=True,
        )
        victim = await eventually(
            lambda: next((w for w in workers if started(w, LONG)), None), f"the {LONG} s task to start"
        )
        survivor = next(w for w in workers if w is not victim)
        await eventually(lambda: started(survivor, SHORT) or None, f"the {SHORT} s task to start")
        victim.signal(signal.SIGKILL)

        assert await bounded(results) == [f"slept {LONG}".encode(), f"slept {SHORT}".encode()]
    finally:
        await bounded(client.close())

    assert victim.wait() == -signal.SIGKILL
    scheduler.wait_for(rf"worker {victim.name}@\S+ left \(.*\); 1 tasks to requeue")
    survivor.wait_for(rf"traced-sleep {re.escape(LONG)} started")  # it ran again, there
    assert not started(victim, SHORT)
