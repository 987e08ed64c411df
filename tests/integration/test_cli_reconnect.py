"""
The ``taskmesh`` command rides out a scheduler restart through the Twisted
Client's reconnect, within --connect-timeout; past it, exit status 3.

No worker runs while the scheduler restarts, so the tasks are surely still
waiting when it goes away (no sleep-and-hope); one joins afterwards.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT, Mesh

import taskmesh.aio
from taskmesh.errors import SchedulerGone

LOST = "taskmesh: warning: lost the scheduler while waiting for task 1; reconnecting"


@pytest.mark.integration
def test_submit_waits_through_a_scheduler_restart_and_says_so(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    submit = mesh.submit(HELLO, "--connect-timeout", "60")
    submit.wait_for("no connected worker runs task type 'sha256' yet", source="stderr")
    first.kill()
    submit.wait_for(re.escape(LOST), source="stderr")
    mesh.scheduler("scheduler2")  # the same port and store: task 1 is still there
    submit.wait_for(rf"reconnected to the scheduler at {re.escape(mesh.address)}$", source="stderr")
    mesh.workers("w1")
    assert submit.wait() == 0, submit.describe()
    assert submit.stdout == HELLO_DIGEST + "\n"
    assert submit.count(re.escape(LOST), source="stderr") == 1


@pytest.mark.integration
def test_a_scheduler_away_past_connect_timeout_ends_the_wait_with_status_3(mesh: Mesh) -> None:
    first = mesh.scheduler()
    submit = mesh.submit(HELLO, "--connect-timeout", "2")
    submit.wait_for("no connected worker runs task type 'sha256' yet", source="stderr")
    first.kill()
    assert submit.wait(TIMEOUT) == 3, submit.describe()
    last = submit.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"taskmesh: the scheduler at {re.escape(mesh.address)}: lost the connection and could not "
        r"reconnect within 2 seconds \(last: .*\)",
        last,
    ), last
    assert submit.stdout == ""


@pytest.mark.integration
def test_map_goes_on_through_a_scheduler_restart(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    (mesh.folder / "in.txt").write_text("".join(f"line {n}\n" for n in range(50)))
    run = mesh.command("map", "--connect", mesh.address, "--connect-timeout", "60", "in.txt")
    run.wait_for("no connected worker runs task type 'sha256' yet", source="stderr")
    first.kill()
    run.wait_for("lost the scheduler during the map; reconnecting", source="stderr")
    mesh.scheduler("scheduler2")
    run.wait_for("reconnected to the scheduler at", source="stderr")
    mesh.workers("w1")
    assert run.wait() == 0, run.describe()
    assert len(run.stdout.splitlines()) == 50 and all(len(line) == 64 for line in run.stdout.splitlines())


@pytest.mark.integration
def test_the_asyncio_clients_reconnect_has_the_same_bound(mesh: Mesh) -> None:
    scheduler = mesh.scheduler()

    async def main() -> str:
        client = await taskmesh.aio.connect(mesh.address, reconnect=True, reconnect_timeout=1, timeout=10)
        task_id = await client.enqueue(HELLO)  # no worker: it stays queued
        waiting = asyncio.ensure_future(client.result(task_id))
        await asyncio.sleep(0)  # the query is sent
        scheduler.kill()
        try:
            async with asyncio.timeout(TIMEOUT):
                await waiting
        except SchedulerGone as e:
            return str(e)
        finally:
            await client.close()
        return "answered"

    assert "could not reconnect within 1 seconds" in asyncio.run(main())
