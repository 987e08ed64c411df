"""
The scheduler core's operator decisions, with a Clock and a real SQLite
store: listing with live states and reasons, retrying a failed task under its
id with fresh attempts (durable across a restart), refusing what cannot be
retried, purging a queued type; and the new messages' bounds on the wire.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_core import Rig
from twisted.internet.task import Clock

from taskmesh import wire
from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.store import State
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import STATUS_FAILED, STATUS_OK


def failed_task(rig: Rig, payload: bytes = b"x", **options: object) -> int:
    channel, worker = rig.join(name=f"w{len(rig.core.stats()['workers'])}")
    task = rig.submit(payload=payload, **options)
    rig.core.complete(worker, [(task.id, STATUS_FAILED, b"ValueError: bad input\nmore")])
    rig.turn()
    rig.core.remove_worker(worker)
    return task.id


def test_retry_runs_a_failed_task_again_under_its_id_durably(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sqlite")
    rig = Rig(store=SqliteStore(path))
    task_id = failed_task(rig, b"payload", priority=5, max_attempts=4, key="k1")
    listed = rig.core.list_tasks("failed", None, 10, None)["tasks"]
    assert [(row["id"], row["state"], row["reason"]) for row in listed] == [
        (task_id, "failed", "ValueError: bad input")
    ]

    answer = rig.core.retry([task_id])
    assert answer == {"retried": [task_id], "refused": [], "more": False}
    live = rig.core.task(task_id)
    assert live is not None and live.payload == b"payload" and live.attempts == 0
    assert live.options.priority == 5 and live.options.max_attempts == 4 and live.options.key == "k1"
    rig.turn()  # committed: a restarted scheduler has it unfinished, with fresh attempts
    rig.core.stop()
    rig.store.close()
    store = SqliteStore(path)
    (again,) = list(store.unfinished())
    assert (again.id, again.payload, again.attempts, again.key) == (task_id, b"payload", 0, "k1")
    assert store.outcome(task_id) is None
    core = Scheduler(Clock(), store, Policy())
    assert core.start() == 1
    # A second retry of the now queued task is refused with the reason.
    refused = core.retry([task_id])["refused"]
    assert refused == [[task_id, f"task {task_id} is queued: nothing to retry"]]
    core.stop()
    store.close()


def test_what_cannot_be_retried_is_refused_with_a_reason(tmp_path: Path) -> None:
    rig = Rig(store=SqliteStore(str(tmp_path / "t.sqlite")))
    channel, worker = rig.join()
    done = rig.submit(payload=b"ok")
    rig.core.complete(worker, [(done.id, STATUS_OK, b"fine")])
    running = rig.submit(payload=b"running")
    rig.turn()
    reasons = dict(map(tuple, rig.core.retry([done.id, running.id, 424242])["refused"]))
    assert reasons[done.id] == f"task {done.id} succeeded: nothing to retry"
    assert reasons[running.id] == f"task {running.id} is running: nothing to retry"
    assert reasons[424242].startswith("no task 424242 in the store")


def test_retry_every_failed_task_of_a_type(tmp_path: Path) -> None:
    rig = Rig(store=SqliteStore(str(tmp_path / "t.sqlite")))
    ids = [failed_task(rig, b"%d" % i) for i in range(3)]
    answer = rig.core.retry([], every_failed=True, task_type="sha256")
    assert sorted(answer["retried"]) == ids and not answer["more"]
    assert rig.core.retry([], every_failed=True, task_type="other")["retried"] == []


def test_purge_cancels_queued_tasks_of_a_type_and_leaves_running_ones() -> None:
    rig = Rig()
    channel, worker = rig.join(slots=1)  # with prefetch 1: holds two
    tasks = [rig.submit(payload=b"%d" % i) for i in range(5)]
    other = rig.submit(task_type="other")
    assert rig.core.purge("sha256", "purged by ops") == 3
    rig.turn()
    for task in tasks[2:]:
        assert rig.failed_with(task, error=wire_cancelled()) == "purged by ops"
    assert tasks[0].state is State.RUNNING and other.state is State.QUEUED
    assert rig.core.stats()["tasks"]["queued"] == 1


def wire_cancelled() -> type:
    from taskmesh.errors import TaskCancelled

    return TaskCancelled


def test_retry_while_the_store_cannot_commit_is_refused() -> None:
    rig = Rig()
    rig.core._store_error = "database or disk is full"  # as _commit_failed leaves it
    with pytest.raises(StoreUnavailable):
        rig.core.retry([1])


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (struct.pack(">BIBHQB", wire.KIND_LIST_TASKS, 1, 0, 0, 0, 0), "1 to 1000 may be asked for"),
        (struct.pack(">BIBHQB", wire.KIND_LIST_TASKS, 1, 0, 1001, 0, 0), "1 to 1000 may be asked for"),
        (
            bytes([wire.KIND_LIST_TASKS]) + b"\x00\x00\x00\x01\x09\x00\x01" + bytes(9),
            "unknown task list state",
        ),
        (bytes([wire.KIND_RETRY_TASKS]) + b"\x00\x00\x00\x01\x02\x00" + b"\x00\x00\x00\x00", "retry flags"),
        (bytes([wire.KIND_PURGE_TASKS]) + b"\x00\x00\x00\x01\x00", "needs a task type"),
        (
            bytes([wire.KIND_RETRY_TASKS])
            + b"\x00\x00\x00\x01\x00\x00"
            + (wire.MAX_RETRY_IDS + 1).to_bytes(4, "big"),
            "the most is",
        ),
        (
            bytes([wire.KIND_ANSWER]) + b"\x00\x00\x00\x01" + (wire.MAX_ANSWER + 1).to_bytes(4, "big"),
            "the most",
        ),
        (wire.encode(wire.Drain([1]))[:-1], "frame"),
    ],
)
def test_the_operator_messages_are_range_checked(frame: bytes, complaint: str) -> None:
    with pytest.raises(wire.ProtocolError, match=complaint):
        wire.decode(frame)


def test_the_operator_messages_round_trip() -> None:
    for message in (
        wire.ListTasks(7, 3, wire.MAX_LIST_LIMIT, wire.MAX_ID, "add"),
        wire.RetryTasks(8, [1, wire.MAX_ID], True, "add"),
        wire.RetryTasks(9, [], True, None),
        wire.PurgeTasks(10, "ü" * 127),
        wire.Answer(11, '{"purged": 3}'),
        wire.Drain([]),
    ):
        assert wire.decode(wire.encode(message)) == message


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(
        [
            wire.KIND_DRAIN,
            wire.KIND_LIST_TASKS,
            wire.KIND_RETRY_TASKS,
            wire.KIND_PURGE_TASKS,
            wire.KIND_ANSWER,
        ]
    ),
    body=st.binary(max_size=64),
)
def test_untrusted_bytes_decode_to_a_message_that_round_trips_or_a_protocol_error(
    kind: int, body: bytes
) -> None:
    frame = bytes([kind]) + body
    try:
        message = wire.decode(frame)
    except wire.ProtocolError:
        return
    assert wire.encode(message) == frame
