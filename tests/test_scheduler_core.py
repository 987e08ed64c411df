"""The scheduler core, driven directly with a Clock: every rule of issue 2."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from taskmesh.scheduler import IWorkerChannel, Scheduler, TaskFailed
from taskmesh.wire import STATUS_FAILED, STATUS_OK


@implementer(IWorkerChannel)
class FakeChannel:
    """Records what the core assigns to one worker."""

    def __init__(self) -> None:
        self.assigned: list[tuple[int, str, bytes]] = []

    def assign(self, task_id: int, task_type: str, payload: bytes) -> None:
        self.assigned.append((task_id, task_type, payload))

    def ids(self) -> list[int]:
        return [task_id for task_id, _, _ in self.assigned]


def outcome(deferred):  # type: ignore[no-untyped-def]
    """The result or failure a Deferred has fired with, or a marker if not yet."""
    box: list[object] = []

    def peek(result: object) -> object:
        box.append(result)
        return result

    deferred.addBoth(peek)
    return box[0] if box else "pending"


@pytest.fixture
def core() -> Scheduler:
    return Scheduler(Clock(), prefetch=1, max_losses=3)


def join(core: Scheduler, slots: int = 1, types: tuple[str, ...] = ("sha256",), name: str = "w"):  # type: ignore[no-untyped-def]
    channel = FakeChannel()
    worker = core.add_worker(channel, name, slots, frozenset(types))
    return channel, worker


def test_fake_channel_provides_the_interface() -> None:
    verifyObject(IWorkerChannel, FakeChannel())


def test_tasks_wait_without_workers_then_go_fifo_up_to_slots_plus_prefetch(core: Scheduler) -> None:
    tasks = [core.submit("sha256", b"%d" % i) for i in range(5)]
    assert not core.has_worker_for("sha256")
    assert core.stats()["queued"] == 5
    channel, _ = join(core, slots=2)
    # 2 slots + 1 prefetch, oldest first
    assert channel.ids() == [tasks[0].id, tasks[1].id, tasks[2].id]
    assert core.stats()["queued"] == 2
    assert core.has_worker_for("sha256")


def test_result_fires_the_deferred_once_and_refills_the_worker(core: Scheduler) -> None:
    tasks = [core.submit("sha256", b"x") for _ in range(3)]
    channel, worker = join(core, slots=1)
    assert channel.ids() == [tasks[0].id, tasks[1].id]
    core.complete(worker, [(tasks[0].id, STATUS_OK, b"digest")])
    assert outcome(tasks[0].deferred) == b"digest"
    assert channel.ids() == [tasks[0].id, tasks[1].id, tasks[2].id]
    assert core.stats()["completed"] == 1


def test_a_failed_outcome_fails_the_task_with_the_workers_reason(core: Scheduler) -> None:
    task = core.submit("sha256", b"x")
    _, worker = join(core)
    core.complete(worker, [(task.id, STATUS_FAILED, b"ValueError: nope")])
    failure = outcome(task.deferred)
    assert failure.check(TaskFailed)
    assert str(failure.value) == "ValueError: nope"


def test_new_tasks_go_to_the_worker_with_most_room(core: Scheduler) -> None:
    a, _ = join(core, slots=1, name="a")
    b, _ = join(core, slots=3, name="b")
    for _ in range(4):
        core.submit("sha256", b"x")
    # b has 4 free, a has 2: b, b, then a and b alternate by free room
    assert len(a.assigned) + len(b.assigned) == 4
    assert len(b.assigned) == 3 and len(a.assigned) == 1


def test_a_worker_never_holds_more_than_slots_plus_prefetch(core: Scheduler) -> None:
    channel, _ = join(core, slots=2)
    for _ in range(10):
        core.submit("sha256", b"x")
    assert len(channel.assigned) == 3
    assert core.stats()["queued"] == 7


def test_lost_worker_tasks_go_back_to_the_front_and_run_elsewhere(core: Scheduler) -> None:
    first, first_worker = join(core, slots=1, name="first")
    tasks = [core.submit("sha256", b"%d" % i) for i in range(4)]
    assert first.ids() == [tasks[0].id, tasks[1].id]
    core.remove_worker(first_worker)
    assert core.stats()["queued"] == 4
    second, second_worker = join(core, slots=1, name="second")
    # the requeued tasks keep their place ahead of later submissions
    assert second.ids() == [tasks[0].id, tasks[1].id]
    core.complete(second_worker, [(tasks[0].id, STATUS_OK, b"ok")])
    assert outcome(tasks[0].deferred) == b"ok"


def test_a_task_that_loses_its_worker_three_times_fails_as_poison(core: Scheduler) -> None:
    task = core.submit("sha256", b"x")
    for attempt in range(3):
        channel, worker = join(core, name=f"w{attempt}")
        assert channel.ids() == [task.id]
        assert outcome(task.deferred) == "pending"
        core.remove_worker(worker, "killed")
    failure = outcome(task.deferred)
    assert failure.check(TaskFailed)
    assert "lost its worker 3 times" in str(failure.value)
    assert "w2" in str(failure.value)
    assert core.stats()["failed"] == 1 and core.stats()["queued"] == 0


def test_a_result_from_a_worker_without_the_lease_is_dropped(core: Scheduler) -> None:
    task = core.submit("sha256", b"x")
    _, old = join(core, name="old")
    core.remove_worker(old)
    channel, new = join(core, name="new")
    core.complete(old, [(task.id, STATUS_OK, b"late")])
    assert outcome(task.deferred) == "pending"
    core.complete(new, [(task.id, STATUS_OK, b"right")])
    core.complete(new, [(task.id, STATUS_OK, b"duplicate")])
    assert outcome(task.deferred) == b"right"
    assert core.stats()["completed"] == 1


def test_tasks_only_go_to_workers_that_run_their_type(core: Scheduler) -> None:
    sleeper, _ = join(core, types=("sleep",), name="sleeper")
    hashed = core.submit("sha256", b"x")
    slept = core.submit("sleep", b"1")
    assert sleeper.ids() == [slept.id]
    assert core.stats()["waiting_by_type"] == {"sha256": 1}
    hasher, _ = join(core, types=("sha256",), name="hasher")
    assert hasher.ids() == [hashed.id]


def test_a_worker_of_several_types_takes_the_oldest_first(core: Scheduler) -> None:
    order = [core.submit(t, b"x") for t in ("sleep", "sha256", "sleep", "sha256")]
    channel, worker = join(core, slots=4, types=("sha256", "sleep"))
    assert channel.ids() == [task.id for task in order]


def test_a_waiting_type_does_not_block_other_types(core: Scheduler) -> None:
    join(core, types=("sleep",), name="sleeper")
    core.submit("sha256", b"x")
    slept = core.submit("sleep", b"1")
    assert slept.worker is not None


def test_the_core_reads_time_from_its_clock() -> None:
    clock = Clock()
    clock.advance(42)
    task = Scheduler(clock).submit("sha256", b"x")
    assert task.submitted_at == 42


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler(Clock(), prefetch=-1)
    with pytest.raises(ValueError):
        Scheduler(Clock(), max_losses=0)
    with pytest.raises(ValueError):
        join(Scheduler(Clock()), slots=0)
