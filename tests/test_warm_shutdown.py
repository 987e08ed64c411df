"""
Warm shutdown, in the cores and the protocols in memory: a draining worker
hands back what it holds and has not started, the scheduler requeues it at
once without counting an attempt or a loss, sends the draining worker
nothing more, and takes the running tasks' results as usual.
"""

from __future__ import annotations

from test_scheduler_core import Rig
from test_worker_core import Harness

from taskmesh import wire
from taskmesh.store import State
from taskmesh.wire import STATUS_OK


def test_a_draining_worker_core_hands_back_what_it_has_not_started() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "blocking", b"a"), (2, "blocking", b"b"), (3, "sha256", b"c")])
    assert h.worker.running == 1 and h.worker.waiting == 2
    handed: list[list[int]] = []
    idle: list[bool] = []
    assert h.worker.drain(handed.append, lambda: idle.append(True)) == [2, 3]
    assert h.worker.busy == 1 and not idle
    # Work the scheduler sent before it read the drain goes straight back, unstarted.
    h.worker.assign([(4, "sha256", b"d")])
    assert handed == [[4]] and h.reports == []
    _, _, running = h.blocking_calls[0]
    running.callback((STATUS_OK, b"ran a", None))
    assert h.reports == [(1, STATUS_OK, b"ran a")]  # the running task's result is delivered
    assert idle == [True]
    assert len(h.blocking_calls) == 1  # nothing else started


def test_a_cancelled_task_is_not_waited_for() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "blocking", b"a")])
    idle: list[bool] = []
    h.worker.drain(lambda ids: None, lambda: idle.append(True))
    h.worker.cancel([1])
    assert idle == [True]


def test_the_scheduler_requeues_handed_back_tasks_at_once_without_counting() -> None:
    rig = Rig(prefetch=2)
    leaving, leaving_state = rig.join(slots=1, name="leaving")
    tasks = [rig.submit(payload=b"%d" % i) for i in range(4)]
    assert leaving.ids() == [t.id for t in tasks[:3]]  # 1 slot + 2 prefetched
    staying, _ = rig.join(slots=1, name="staying")
    assert staying.ids() == [tasks[3].id]

    rig.core.drain(leaving_state, [tasks[1].id, tasks[2].id])
    assert rig.core.stats()["workers"][0]["draining"] is True
    # At once, to the worker with room (its prefetch), oldest first, no attempt or loss counted.
    assert staying.ids() == [tasks[3].id, tasks[1].id, tasks[2].id]
    assert [(t.attempts, t.losses) for t in tasks[1:3]] == [(0, 0), (0, 0)]
    assert staying.contexts[tasks[1].id][0] == 1  # told it is still its first attempt
    # Nothing new goes to the draining worker, however much is queued.
    more = rig.submit(payload=b"more")
    assert more.id not in leaving.ids()
    # Its running task's result is taken as usual.
    rig.core.complete(leaving_state, [(tasks[0].id, STATUS_OK, b"done")])
    rig.turn()
    assert rig.result(tasks[0]) == b"done"
    # Leaving afterwards loses nothing: no task counts a loss.
    rig.core.remove_worker(leaving_state, "connection closed")
    assert all(t.losses == 0 for t in tasks)


def test_a_handed_back_group_requeues_each_member_and_unknown_ids_are_ignored() -> None:
    rig = Rig(prefetch=1)
    channel, worker = rig.join(slots=1)
    first = rig.submit(payload=b"first")
    rig.core.drain(worker, [first.id + 1000])  # not held: ignored
    assert first.state is State.RUNNING and worker.draining
    rig.core.drain(worker, [first.id])
    assert first.state is State.QUEUED and rig.core.stats()["tasks"]["queued"] == 1
    other, _ = rig.join(slots=1, name="other")
    assert other.ids() == [first.id]


def test_drain_travels_in_a_bounded_frame() -> None:
    message = wire.Drain([1, 2, wire.MAX_ID])
    assert wire.decode(wire.encode(message)) == message
    too_many = wire.encode(wire.Drain(list(range(wire.MAX_RETRY_IDS + 1))))
    try:
        wire.decode(too_many)
    except wire.ProtocolError as e:
        assert "the most is" in str(e)
    else:
        raise AssertionError("an oversized drain was accepted")
