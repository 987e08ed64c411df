"""
Task functions on real workers started with ``--tasks sample_tasks``: sync,
async, thread-pool and process-pool functions; an exception and its
traceback; a retry asked for from inside; progress seen while a task runs;
the worker's folder on the import path; ``taskmesh map --json``; and
handlers that misbehave without costing the worker its connection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sample_tasks
from conftest import TIMEOUT, Mesh, bounded, wait_until
from twisted.internet import reactor, threads
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

import taskmesh

HERE = Path(__file__).resolve().parent
#: Workers that run sample_tasks.py (from this folder), with a process pool.
TASKS: dict[str, Any] = dict(options=("--tasks", "sample_tasks", "--pool", "process"), extra_path=HERE)


async def connect(mesh: Mesh) -> taskmesh.Client:
    return await bounded(taskmesh.Client.connect(mesh.address, reactor))


async def until_progress(client: taskmesh.Client, task_id: int) -> taskmesh.TaskProgress:
    """Poll an unfinished task until it has reported progress (bounded)."""
    deadline = reactor.seconds() + TIMEOUT
    while True:
        try:
            await bounded(client.result(task_id, wait=False))
        except taskmesh.TaskPending as e:
            if e.progress is not None:
                assert e.state == "running"
                return e.progress
        else:
            raise AssertionError(f"task {task_id} finished before it was seen running")
        assert reactor.seconds() < deadline, f"task {task_id} never reported progress"
        await deferLater(reactor, 0.05, lambda: None)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_sync_async_thread_and_process_functions(mesh: Mesh) -> None:
    mesh.scheduler()
    (worker,) = mesh.workers("w1", concurrency=2, **TASKS)
    client = await connect(mesh)
    try:
        sums = await bounded(
            gatherResults(
                [
                    client.submit(sample_tasks.add, 2, 3),
                    client.submit(sample_tasks.inline_add, 2, 3),
                    client.submit(sample_tasks.async_add, 2, 3, delay=0.01),
                    client.submit(sample_tasks.cpu_add, 2, 3),
                ],
                consumeErrors=True,
            )
        )
        inline = await bounded(client.submit(sample_tasks.where_inline))
        thread = await bounded(client.submit(sample_tasks.where_blocking))
        process = await bounded(client.submit(sample_tasks.where_cpu))
        mapped = await bounded(client.map(sample_tasks.add, [(1, 2), (3, 4), (5, 6)]))
        context = await bounded(client.submit(sample_tasks.context.options(timeout=30, max_attempts=4)))
        task_id = await bounded(client.enqueue(sample_tasks.add, 20, 22))
        later = await bounded(client.result(task_id, json=True))
    finally:
        await bounded(client.close())

    assert sums == [5, 5, 5, 5]
    assert inline == {"pid": worker.pid, "thread": "MainThread"}  # in the reactor
    assert thread["pid"] == worker.pid and thread["thread"] != "MainThread"  # in the thread pool
    assert process["pid"] != worker.pid  # in the process pool
    assert mapped == [3, 7, 11]
    assert (context["type"], context["attempt"], context["max_attempts"]) == ("context", 1, 4)
    assert isinstance(context["id"], int) and 0 < context["time_left"] <= 30
    assert later == 42


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_an_exception_arrives_with_its_type_message_and_traceback(mesh: Mesh) -> None:
    mesh.scheduler()
    (worker,) = mesh.workers("w1", **TASKS)
    client = await connect(mesh)
    try:
        with pytest.raises(taskmesh.TaskFailed) as caught:
            await bounded(client.submit(sample_tasks.pay, 42))
        task_id = await bounded(client.enqueue(sample_tasks.pay, 7))
        with pytest.raises(taskmesh.TaskFailed):
            await bounded(client.result(task_id))
    finally:
        await bounded(client.close())

    error = caught.value
    assert str(error) == "sample_tasks.PaymentDeclined: card declined for 42"
    assert (error.type, error.message) == ("sample_tasks.PaymentDeclined", "card declined for 42")
    trace = error.traceback
    assert trace is not None and trace.startswith("Traceback (most recent call last):")
    assert "in pay" in trace and "in charge" in trace and "raise PaymentDeclined" in trace
    assert "taskmesh" not in trace.split("sample_tasks.py", 1)[0]  # starts at the task's own frame

    # kept with the result by id: the command line shows it, traceback included
    result = mesh.command("result", "--connect", mesh.address, str(task_id))
    assert result.wait() == 1
    assert "failed: sample_tasks.PaymentDeclined: card declined for 7" in result.stderr
    assert "in charge" in result.stderr

    # and the worker logged each failure with its traceback
    worker.wait_for(r"\(pay\) failed: sample_tasks.PaymentDeclined: card declined for 42")
    assert "raise PaymentDeclined" in worker.log


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_task_asks_for_a_retry_from_inside(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", **TASKS)
    client = await connect(mesh)
    try:
        attempt = await bounded(client.submit(sample_tasks.flaky, 3))
        with pytest.raises(taskmesh.TaskFailed) as caught:
            await bounded(client.submit(sample_tasks.flaky.options(max_attempts=2), 5))
    finally:
        await bounded(client.close())
    assert attempt == 3  # two retries asked for, the third attempt succeeded
    assert caught.value.type == "taskmesh.errors.Retry"
    assert str(caught.value) == "taskmesh.errors.Retry: attempt 2 is too early (attempt 2 of 2; giving up)"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_progress_is_seen_while_the_task_runs(mesh: Mesh, tmp_path: Path) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=3, **TASKS)
    gates = {name: tmp_path / f"gate-{name}" for name in ("thread", "process", "async")}
    client = await connect(mesh)
    try:
        ids = {
            "thread": await bounded(client.enqueue(sample_tasks.gated, str(gates["thread"]), 3)),
            "process": await bounded(client.enqueue(sample_tasks.gated_cpu, str(gates["process"]), 4)),
            "async": await bounded(client.enqueue(sample_tasks.gated_async, str(gates["async"]))),
        }
        seen = {name: await until_progress(client, task_id) for name, task_id in ids.items()}
        assert seen == {
            "thread": taskmesh.TaskProgress(1.0, 3.0, "waiting for the gate"),
            "process": taskmesh.TaskProgress(2.0, 4.0, "in a process"),
            "async": taskmesh.TaskProgress(7.0, None, "async"),
        }

        # the command line shows it too: taskmesh result, and taskmesh status
        # (Waited for in a thread: blocking the reactor would keep this
        # client from its heartbeats, and a loaded machine can make the
        # commands take longer than the scheduler's tolerance.)
        result = mesh.command("result", "--connect", mesh.address, str(ids["thread"]))
        assert await threads.deferToThread(result.wait) == 4
        assert result.stdout == "running 1/3 waiting for the gate\n"
        status = mesh.command("status", "--connect", mesh.address)
        assert await threads.deferToThread(status.wait) == 0
        assert f"task {ids['process']} (gated_cpu) at 2/4 in a process" in status.stdout
        status_json = mesh.command("status", "--json", "--connect", mesh.address)
        assert await threads.deferToThread(status_json.wait) == 0
        assert {entry["id"] for entry in json.loads(status_json.stdout)["progress"]} == set(ids.values())

        for gate in gates.values():
            gate.touch()
        results = [await bounded(client.result(task_id, json=True)) for task_id in ids.values()]
    finally:
        await bounded(client.close())
    assert results == ["through"] * 3


@pytest.mark.integration
def test_the_worker_s_folder_is_on_the_import_path(mesh: Mesh) -> None:
    package = mesh.folder / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("import taskmesh\n\n@taskmesh.task\ndef double(x):\n    return 2 * x\n")
    (package / "handlers.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    mesh.scheduler()
    # no PYTHONPATH: the worker runs from the folder that holds myapp/
    mesh.workers("w1", options=("--tasks", "myapp.tasks", "--handler", "myapp.handlers:shout"))
    double = mesh.run_submit("--type", "double", "--json", "[21]")
    shout = mesh.run_submit("--type", "shout", "--json", '{"args": ["hey"]}')
    assert (double.popen.returncode, double.stdout) == (0, "42\n")
    assert (shout.popen.returncode, shout.stdout) == (0, '"HEY!"\n')
    refused = mesh.run_submit("--type", "double", "--json", "[21")
    assert refused.popen.returncode == 2 and "--json" in refused.stderr


@pytest.mark.integration
def test_taskmesh_map_reads_json_arguments_one_array_a_line(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", **TASKS)
    source = mesh.folder / "arguments.jsonl"
    source.write_text('[1, 2]\n[3, 4]\nnot json\n{"args": [5], "kwargs": {"y": 6}}\n[1, "x"]\n')
    mapped = mesh.command("map", "--connect", mesh.address, "--type", "add", "--json", str(source))
    assert mapped.wait() == 1  # two lines failed
    assert mapped.stdout.splitlines() == ["3", "7", "\\!", "11", "\\!"]  # a failed line is \!
    assert "line 3: the arguments are not JSON" in mapped.stderr
    assert "line 5: TypeError: unsupported operand type(s)" in mapped.stderr


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_misbehaving_handlers_fail_their_task_and_the_worker_stays_connected(mesh: Mesh) -> None:
    """Issue 10: these used to drop the worker's connection (inline) or hang the task (blocking)."""
    scheduler = mesh.scheduler()
    (worker,) = mesh.workers("w1", concurrency=2, **TASKS)
    hostile = [
        sample_tasks.exits_inline,
        sample_tasks.interrupts_inline,
        sample_tasks.surrogate_inline,
        sample_tasks.unprintable_blocking,
        sample_tasks.exits_blocking,
        sample_tasks.exits_in_process,
    ]
    client = await connect(mesh)
    reasons = []
    try:
        for function in hostile:
            with pytest.raises(taskmesh.TaskFailed) as caught:
                await bounded(client.submit(function))
            reasons.append(str(caught.value))
        assert await bounded(client.submit(sample_tasks.add, 1, 1)) == 2
    finally:
        await bounded(client.close())
    assert reasons == [
        "SystemExit: 3",
        "KeyboardInterrupt",
        "ValueError: lone \\udc80 surrogate",
        "sample_tasks.Unprintable: <str() of the exception raised RuntimeError>",
        "SystemExit: from a thread",
        "SystemExit: from a process",
    ]
    assert worker.running()
    assert scheduler.count(r"worker w1@.* joined") == 1 and scheduler.count(r"worker w1@.* left") == 0
    wait_until(lambda: worker.count(r"failed: SystemExit: from a process") == 1, TIMEOUT, "the log line")
    assert len(re.findall(r"Traceback \(most recent call last\)", worker.log)) >= len(hostile)
