"""
Programs the client tests run as processes of their own (each client must
work in a process that is not pytest's: the blocking client starts its own
reactor thread, the asyncio client must never import Twisted's reactor).

``python client_scripts.py KIND ADDRESS FOLDER`` runs one and prints one JSON
line of what it saw; every wait in them is bounded.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sample_tasks

import taskmesh

WAIT = 60.0


def blocking(address: str, folder: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    client = taskmesh.connect(address, wait_timeout=WAIT)
    seen["submit"] = client.submit(sample_tasks.add, 2, 3)
    task_id = client.enqueue(sample_tasks.add, 4, 5)
    seen["result"] = client.result(task_id, json=True)
    seen["map"] = list(client.map(sample_tasks.add, [(i, i) for i in range(50)]))
    gate = folder / "gate-blocking"
    handle = client.start(sample_tasks.gated, str(gate), 2)
    try:
        handle.result(timeout=0.2)
    except TimeoutError:
        seen["bounded"] = True
    seen["cancel"] = client.cancel(handle.task_id)
    gate.touch()
    try:
        client.result(handle.task_id, json=True)
    except taskmesh.TaskCancelled:
        seen["cancelled"] = True
    seen["status"] = isinstance(client.status(), dict)
    with ThreadPoolExecutor(16) as pool:
        seen["threads"] = sorted(pool.map(lambda i: client.submit(sample_tasks.add, i, 1), range(200)))
    handles = [client.start(sample_tasks.add, i, i) for i in range(1000)]
    seen["pipelined"] = sum(handle.result() for handle in handles)
    client.close()
    from taskmesh.client.blocking import shutdown

    shutdown()
    seen["threads_left"] = sorted(thread.name for thread in threading.enumerate())
    return seen


def blocking_fork(address: str, folder: Path) -> dict[str, Any]:
    """
    A process forks after its client started (gunicorn's --preload, say):
    the child is told why it cannot use it, at once; the parent's client
    works on.
    """
    import os

    seen: dict[str, Any] = {}
    client = taskmesh.connect(address, wait_timeout=WAIT)
    seen["before"] = client.submit(sample_tasks.add, 1, 2)
    gate = folder / "gate-fork"
    pending = client.start(sample_tasks.gated, str(gate), 2)  # unanswered when it forks
    seen["accepted"] = pending.task_id > 0  # accepted before the fork
    pid = os.fork()
    if pid == 0:  # the child: report through its exit status (0: refused as it should be)
        try:
            client.submit(sample_tasks.add, 2, 2)
        except RuntimeError as e:
            ok = "was forked from pid" in str(e) and "connect only after forking" in str(e)
        else:
            ok = False
        try:
            pending.result(timeout=30)  # at once, not after 30 s: its answer goes to the parent
        except RuntimeError as e:
            ok = ok and "was forked from pid" in str(e)
        else:
            ok = False
        try:
            taskmesh.connect(address, timeout=5)
        except RuntimeError as e:
            ok = ok and "was forked from pid" in str(e)
        else:
            ok = False
        client.close()  # quietly nothing: the connection is the parent's
        os._exit(0 if ok else 1)
    seen["child_exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    seen["after"] = client.submit(sample_tasks.add, 3, 4)
    gate.touch()
    seen["pending"] = pending.result()
    client.close()
    return seen


def blocking_restart(address: str, folder: Path) -> dict[str, Any]:
    """Submit a gated task, let the test restart the scheduler under it, get its result."""
    client = taskmesh.connect(address, wait_timeout=WAIT, reconnect=True)
    handle = client.start(sample_tasks.gated, str(folder / "gate-restart"), 2)
    print(f"accepted {handle.task_id}", flush=True)
    seen = {"result": handle.result(), "after": client.submit(sample_tasks.add, 1, 1)}
    client.close()
    return seen


def blocking_backpressure(address: str, folder: Path) -> dict[str, Any]:
    """
    A map read slowly: after the first result the reader stops; the map must
    stop sending items once ``buffer`` results wait, not run to the end.
    """
    import time

    total, buffer, window = 5000, 100, 50
    client = taskmesh.connect(address, wait_timeout=WAIT)
    results = client.map(sample_tasks.add, [(i, 1) for i in range(total)], buffer=buffer, window=window)
    seen: dict[str, Any] = {"first": next(results)}

    def job() -> dict[str, Any]:
        jobs = client.status()["jobs"]
        return jobs[0] if jobs else {"items_received": 0, "items_done": 0}

    # Wait (bounded) until everything sent has its answer: the map is then held.
    deadline = time.monotonic() + WAIT
    while True:
        state = job()
        if state["items_received"] and state["items_done"] == state["items_received"]:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the map never settled: {state}")
        time.sleep(0.05)
    time.sleep(0.5)  # and it stays held: nothing more is sent while nobody reads
    seen["received_while_held"] = job()["items_received"]
    seen["settled_at"] = state["items_received"]
    rest = list(results)
    seen["all"] = [seen["first"], *rest] == [i + 1 for i in range(total)]
    seen["limit"] = buffer + 2 * window
    client.close()
    return seen


async def aio(address: str, folder: Path) -> dict[str, Any]:
    import taskmesh.aio

    seen: dict[str, Any] = {}
    client = await taskmesh.aio.connect(address, wait_timeout=WAIT)
    seen["submit"] = await client.submit(sample_tasks.add, 2, 3)
    task_id = await client.enqueue(sample_tasks.add, 4, 5)
    seen["result"] = await client.result(task_id, json=True)
    seen["map"] = await client.map(sample_tasks.add, [(i, i) for i in range(50)])
    seen["gather"] = sum(await asyncio.gather(*(client.submit(sample_tasks.add, i, i) for i in range(1000))))
    gate = folder / "gate-aio"
    handle = client.start(sample_tasks.gated, str(gate), 2)
    try:
        await asyncio.wait_for(asyncio.shield(handle), 0.2)
    except TimeoutError:
        seen["bounded"] = True
    seen["cancel"] = await client.cancel(await handle.id())
    gate.touch()
    try:
        await client.result(await handle.id(), json=True)
    except taskmesh.TaskCancelled:
        seen["cancelled"] = True
    try:
        await client.result(
            await client.enqueue(sample_tasks.gated, str(folder / "never"), 1), wait_timeout=0.2
        )
    except TimeoutError:
        seen["wait_timeout"] = True
    seen["status"] = isinstance(await client.status(), dict)
    await client.close()
    seen["reactor_imported"] = "twisted.internet.reactor" in sys.modules
    return seen


async def aio_restart(address: str, folder: Path) -> dict[str, Any]:
    import taskmesh.aio

    client = await taskmesh.aio.connect(address, wait_timeout=WAIT, reconnect=True)
    handle = client.start(sample_tasks.gated, str(folder / "gate-restart"), 2)
    print(f"accepted {await handle.id()}", flush=True)
    seen = {"result": await handle, "after": await client.submit(sample_tasks.add, 1, 1)}
    await client.close()
    seen["reactor_imported"] = "twisted.internet.reactor" in sys.modules
    return seen


async def aio_time(address: str, folder: Path) -> dict[str, Any]:
    """Delayed tasks and schedules through the asyncio client."""
    import taskmesh.aio

    seen: dict[str, Any] = {}
    client = await taskmesh.aio.connect(address, wait_timeout=WAIT)
    task_id = await client.enqueue(sample_tasks.add.options(delay=1.0), 3, 4)
    try:
        await client.result(task_id, wait=False)
    except taskmesh.TaskPending as pending:
        seen["pending"] = [pending.state, pending.due is not None]
    seen["delayed"] = await client.result(task_id, json=True)
    added = await client.add_schedule("aio-beat", sample_tasks.add, 5, 5, every=0.5)
    seen["added"] = [added["name"], added["every"]]
    for _ in range(200):
        (listed,) = await client.schedules()
        if listed["last_task"] is not None:
            break
        await asyncio.sleep(0.05)
    seen["tick"] = await client.result(listed["last_task"], json=True)
    seen["paused"] = (await client.pause_schedule("aio-beat"))["paused"]
    try:
        await client.add_schedule("bad", sample_tasks.add, 1, 1, cron="0 9 * * *", tz="Mars/Olympus")
    except taskmesh.ScheduleRefused as e:
        seen["refused"] = str(e)
    await client.remove_schedule("aio-beat")
    seen["left"] = await client.schedules()
    await client.close()
    seen["reactor_imported"] = "twisted.internet.reactor" in sys.modules
    return seen


def wait_for_file(path: Path) -> None:
    import time

    deadline = time.monotonic() + WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.02)


async def aio_resubmit(address: str, folder: Path) -> dict[str, Any]:
    """Submit while the scheduler is gone (the test killed it): sent again once it is back."""
    import taskmesh.aio

    client = await taskmesh.aio.connect(address, wait_timeout=WAIT, reconnect=True)
    keyed = sample_tasks.add.options(key="aio-only-once")
    first = await client.submit(keyed, 1, 2)
    print("connected", flush=True)
    await asyncio.to_thread(wait_for_file, folder / "killed")
    handles = [client.submit(sample_tasks.add, i, 10) for i in range(20)]
    again = client.submit(keyed, 1, 2)
    enqueued = asyncio.ensure_future(client.enqueue(sample_tasks.add, 5, 5))
    print("submitted", flush=True)
    seen = {
        "first": first,
        "results": [await handle for handle in handles],
        "again": await again,
        "enqueued": await client.result(await enqueued, json=True),
        "resubmissions": client.resubmissions,
    }
    await client.close()
    seen["reactor_imported"] = "twisted.internet.reactor" in sys.modules
    return seen


def main() -> None:
    kind, address, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if kind == "blocking":
        seen = blocking(address, folder)
    elif kind == "blocking-backpressure":
        seen = blocking_backpressure(address, folder)
    elif kind == "blocking-fork":
        seen = blocking_fork(address, folder)
    elif kind == "blocking-restart":
        seen = blocking_restart(address, folder)
    elif kind == "aio":
        seen = asyncio.run(aio(address, folder))
    elif kind == "aio-uvloop":
        import uvloop

        async def on_uvloop() -> dict[str, Any]:
            seen = await aio(address, folder)
            seen["loop"] = type(asyncio.get_running_loop()).__module__
            return seen

        seen = uvloop.run(on_uvloop())
    elif kind == "aio-resubmit":
        seen = asyncio.run(aio_resubmit(address, folder))
    elif kind == "aio-restart":
        seen = asyncio.run(aio_restart(address, folder))
    elif kind == "aio-time":
        seen = asyncio.run(aio_time(address, folder))
    else:
        raise SystemExit(f"unknown kind {kind}")
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
