"""
The scheduler core, driven directly with a Clock: assignment, leases,
heartbeats, timeouts, retries and backoff, cancel, deduplication,
backpressure, durability order and recovery.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import IWorkerChannel, Policy, Scheduler, Task, TaskCancelled, TaskFailed
from taskmesh.store import ITaskStore, MemoryStore, State
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import STATUS_FAILED, STATUS_OK, TaskOptions


@implementer(IWorkerChannel)
class FakeChannel:
    """Records what the core tells one worker."""

    def __init__(self) -> None:
        self.assigned: list[tuple[int, str, bytes]] = []
        #: task id -> (attempt, max attempts, timeout) it was last assigned with
        self.contexts: dict[int, tuple[int, int, float | None]] = {}
        self.chunks: list[tuple[int, str, list[bytes]]] = []
        self.groups: dict[int, list[tuple[int, int, int, bytes]]] = {}
        self.cancelled: list[int] = []
        self.heartbeats = 0
        self.dropped: str | None = None

    def assign(
        self,
        task_id: int,
        task_type: str,
        payload: bytes,
        attempt: int,
        max_attempts: int,
        timeout: float | None,
    ) -> None:
        self.assigned.append((task_id, task_type, payload))
        self.contexts[task_id] = (attempt, max_attempts, timeout)

    def assign_group(self, group_id: int, task_type: str, members: list[tuple[int, int, int, bytes]]) -> None:
        # A group is answered as a chunk: recorded with them, by its payloads.
        self.chunks.append((group_id, task_type, [payload for _, _, _, payload in members]))
        self.groups[group_id] = members

    def assign_chunk(self, chunk_id: int, task_type: str, payloads: list[bytes]) -> None:
        self.chunks.append((chunk_id, task_type, payloads))

    def cancel(self, task_id: int) -> None:
        self.cancelled.append(task_id)

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def drop(self, reason: str) -> None:
        self.dropped = reason

    def ids(self) -> list[int]:
        return [task_id for task_id, _, _ in self.assigned]


@implementer(ITaskStore)
class SpyStore(MemoryStore):
    """A memory store that remembers what was committed, to check the order."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[int] = []
        self.durable: set[int] = set()

    def add(self, task: Any) -> None:
        super().add(task)
        self.pending.append(task.id)

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        super().finish(task_id, state, value, finished_at)
        self.pending.append(-task_id)

    def commit(self) -> bool:
        self.durable.update(self.pending)
        self.pending.clear()
        return True


def killed(store: Any) -> None:
    """What the kernel does for a SQLite store whose process is killed: nothing committed, lock released."""
    store._closed.set()
    store._checkpointer.join()
    store._db.close()
    store._lock.release()


class Rig:
    def __init__(self, store: ITaskStore | None = None, **policy: Any) -> None:
        self.clock = Clock()
        self.store = store if store is not None else SpyStore()
        # Workers here never send heartbeats: keep the heartbeat round out of
        # the way unless a test is about it.
        defaults = {"prefetch": 1, "heartbeat_interval": 1000.0}
        self.core = Scheduler(self.clock, self.store, Policy(**{**defaults, **policy}))
        self.core.start()
        #: What each task's Deferred fired with, recorded as a client would see it.
        self.outcomes: dict[int, object] = {}

    def submit(self, task_type: str = "sha256", payload: bytes = b"x", **options: Any) -> Task:
        task_id, duplicate = self.core.submit(task_type, payload, TaskOptions(**options))
        assert not duplicate
        task = self.core.task(task_id)
        assert task is not None

        def record(result: object) -> object:
            self.outcomes[task_id] = result
            return result

        task.deferred.addBoth(record)
        return task

    def result(self, task: Task) -> object:
        return self.outcomes.get(task.id, "pending")

    def failed_with(self, task: Task, error: type = TaskFailed) -> str:
        found = self.result(task)
        assert isinstance(found, Failure) and found.check(error), found
        return str(found.value)

    def join(self, slots: int = 1, types: tuple[str, ...] = ("sha256",), name: str = "w"):  # type: ignore[no-untyped-def]
        channel = FakeChannel()
        return channel, self.core.add_worker(channel, name, slots, frozenset(types))

    def turn(self) -> None:
        """End the reactor turn: the group commit runs."""
        self.clock.advance(0)


def test_fake_channel_provides_the_interface() -> None:
    verifyObject(IWorkerChannel, FakeChannel())
    verifyObject(ITaskStore, SpyStore())


# -- assignment -------------------------------------------------------------


def test_tasks_wait_without_workers_then_go_fifo_up_to_slots_plus_prefetch() -> None:
    rig = Rig()
    tasks = [rig.submit(payload=b"%d" % i) for i in range(5)]
    assert not rig.core.has_worker_for("sha256")
    channel, _ = rig.join(slots=2)
    assert channel.ids() == [t.id for t in tasks[:3]]  # 2 slots + 1 prefetch, oldest first
    assert rig.core.stats()["tasks"]["queued"] == 2


def test_new_tasks_go_to_the_worker_with_most_room() -> None:
    rig = Rig()
    a, _ = rig.join(slots=1, name="a")
    b, _ = rig.join(slots=3, name="b")
    for _ in range(4):
        rig.submit()
    assert (len(a.assigned), len(b.assigned)) == (1, 3)


def test_a_worker_never_holds_more_than_slots_plus_prefetch() -> None:
    rig = Rig()
    channel, _ = rig.join(slots=2)
    for _ in range(10):
        rig.submit()
    assert len(channel.assigned) == 3


def test_tasks_only_go_to_workers_that_run_their_type() -> None:
    rig = Rig()
    sleeper, _ = rig.join(types=("sleep",), name="sleeper")
    hashed = rig.submit("sha256")
    slept = rig.submit("sleep")
    assert sleeper.ids() == [slept.id]
    assert rig.core.stats()["waiting_by_type"] == {"sha256": {"queued": 1, "no_worker_runs_it": True}}
    hasher, _ = rig.join(types=("sha256",), name="hasher")
    assert hasher.ids() == [hashed.id]


def test_higher_priority_first_then_fifo() -> None:
    rig = Rig()
    low = [rig.submit(priority=0) for _ in range(3)]
    high = [rig.submit(priority=5) for _ in range(2)]
    channel, _ = rig.join(slots=10)
    assert channel.ids() == [t.id for t in high + low]


# -- outcomes and durability ------------------------------------------------


def test_a_result_fires_once_durable_and_refills_the_worker() -> None:
    rig = Rig()
    tasks = [rig.submit() for _ in range(3)]
    channel, worker = rig.join(slots=1)
    rig.core.complete(worker, [(tasks[0].id, STATUS_OK, b"digest")])
    assert channel.ids() == [t.id for t in tasks]  # refilled at once
    assert rig.result(tasks[0]) == "pending"  # not before the commit
    rig.turn()
    assert rig.result(tasks[0]) == b"digest"
    assert -tasks[0].id in rig.store.durable
    assert rig.core.watch(tasks[0].id).value == b"digest"  # type: ignore[union-attr]


def test_acknowledgements_wait_for_the_commit() -> None:
    rig = Rig()
    seen: list[bool] = []
    task = rig.submit()
    rig.core.after_commit(lambda: seen.append(task.id in rig.store.durable))
    assert seen == []
    rig.turn()
    assert seen == [True]


def test_a_handler_error_fails_at_once_with_its_reason() -> None:
    rig = Rig()
    task = rig.submit()
    _, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_FAILED, b"ValueError: nope")])
    rig.turn()
    assert rig.failed_with(task) == "ValueError: nope"


def test_a_result_from_a_worker_without_the_lease_is_dropped() -> None:
    rig = Rig()
    task = rig.submit()
    _, old = rig.join(name="old")
    rig.core.remove_worker(old)
    _, new = rig.join(name="new")
    rig.core.complete(old, [(task.id, STATUS_OK, b"late")])
    rig.core.complete(new, [(task.id, STATUS_OK, b"right")])
    rig.core.complete(new, [(task.id, STATUS_OK, b"duplicate")])
    rig.turn()
    assert rig.result(task) == b"right"
    assert rig.core.stats()["tasks"]["succeeded"] == 1


# -- losing workers ---------------------------------------------------------


def test_lost_worker_tasks_keep_their_place_and_run_elsewhere() -> None:
    rig = Rig()
    first, first_worker = rig.join(slots=1, name="first")
    tasks = [rig.submit(payload=b"%d" % i) for i in range(4)]
    rig.core.remove_worker(first_worker)
    second, _ = rig.join(slots=1, name="second")
    assert second.ids() == [tasks[0].id, tasks[1].id]


def test_a_task_that_loses_its_worker_three_times_fails_as_poison() -> None:
    rig = Rig()
    task = rig.submit()
    for attempt in range(3):
        channel, worker = rig.join(name=f"w{attempt}")
        assert channel.ids() == [task.id]
        rig.core.remove_worker(worker, "killed")
    rig.turn()
    reason = rig.failed_with(task)
    assert "poison" in reason and "lost its worker 3 times" in reason and "w2" in reason


def test_a_silent_worker_loses_its_leases_and_a_live_one_is_greeted() -> None:
    rig = Rig(heartbeat_interval=1.0, heartbeat_tolerance=3)
    task = rig.submit()
    silent, silent_worker = rig.join(name="silent")
    chatty, chatty_worker = rig.join(name="chatty")
    assert silent.ids() == [task.id]
    for _ in range(3):
        rig.clock.advance(1)
        rig.core.heard_from(chatty_worker)
    assert silent.dropped is None and silent.heartbeats == 3
    rig.clock.advance(1)
    assert silent.dropped is not None and "no heartbeat" in silent.dropped
    assert chatty.dropped is None and chatty.heartbeats == 4
    assert chatty.ids() == [task.id]  # ran elsewhere


# -- timeouts and retries ---------------------------------------------------


def test_a_timed_out_attempt_is_cancelled_and_retried_with_exponential_backoff() -> None:
    rig = Rig(retry_delay=2.0, retry_max_delay=60.0)
    task = rig.submit(timeout=5.0, max_attempts=3)
    channel, worker = rig.join()
    rig.clock.advance(5)
    assert channel.cancelled == [task.id]
    assert rig.core.stats()["tasks"]["waiting_to_retry"] == 1
    rig.clock.advance(1.5)
    assert channel.ids() == [task.id]
    rig.clock.advance(0.5)  # first retry after 2 s
    assert channel.ids() == [task.id, task.id]
    rig.clock.advance(5)  # second timeout
    rig.clock.advance(3.5)
    assert len(channel.assigned) == 2
    rig.clock.advance(0.5)  # second retry after 4 s
    assert len(channel.assigned) == 3
    rig.clock.advance(5)  # third timeout: attempts spent
    rig.turn()
    reason = rig.failed_with(task)
    assert "timed out after 5 s" in reason and "attempt 3 of 3" in reason


def test_a_result_in_time_cancels_the_timeout() -> None:
    rig = Rig()
    task = rig.submit(timeout=5.0)
    channel, worker = rig.join()
    rig.clock.advance(4)
    rig.core.complete(worker, [(task.id, STATUS_OK, b"ok")])
    rig.clock.advance(10)
    assert rig.result(task) == b"ok"
    assert channel.cancelled == []


def test_retry_on_error_retries_then_fails_with_the_last_error() -> None:
    rig = Rig(retry_delay=0.5)
    task = rig.submit(retry_on_error=True, max_attempts=2)
    channel, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_FAILED, b"IOError: flaky")])
    rig.clock.advance(0.5)
    assert channel.ids() == [task.id, task.id]
    rig.core.complete(worker, [(task.id, STATUS_FAILED, b"IOError: still flaky")])
    rig.turn()
    assert rig.failed_with(task) == "IOError: still flaky (attempt 2 of 2; giving up)"


def test_backoff_is_capped() -> None:
    rig = Rig(retry_delay=1.0, retry_max_delay=3.0, max_attempts=10)
    task = rig.submit(retry_on_error=True)
    channel, worker = rig.join()
    for expected_delay in (1, 2, 3, 3):
        rig.core.complete(worker, [(task.id, STATUS_FAILED, b"E")])
        before = len(channel.assigned)
        rig.clock.advance(expected_delay - 0.5)
        assert len(channel.assigned) == before
        rig.clock.advance(0.5)
        assert len(channel.assigned) == before + 1


# -- cancel -----------------------------------------------------------------


def test_cancel_a_queued_task() -> None:
    rig = Rig()
    task = rig.submit()
    assert rig.core.cancel(task.id, "changed my mind")
    rig.turn()
    assert rig.failed_with(task, TaskCancelled) == "changed my mind"
    channel, _ = rig.join()
    assert channel.ids() == []
    assert rig.core.watch(task.id).state is State.CANCELLED  # type: ignore[union-attr]


def test_cancel_a_running_task_tells_its_worker_and_drops_its_late_result() -> None:
    rig = Rig()
    task = rig.submit()
    channel, worker = rig.join()
    assert rig.core.cancel(task.id)
    assert channel.cancelled == [task.id]
    rig.core.complete(worker, [(task.id, STATUS_OK, b"too late")])
    rig.turn()
    rig.failed_with(task, TaskCancelled)
    assert not rig.core.cancel(task.id)  # already finished


def test_cancel_a_task_waiting_to_retry() -> None:
    rig = Rig()
    task = rig.submit(retry_on_error=True)
    channel, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_FAILED, b"E")])
    assert rig.core.cancel(task.id)
    rig.clock.advance(100)
    assert channel.ids() == [task.id]
    assert rig.core.stats()["tasks"]["waiting_to_retry"] == 0


# -- deduplication ----------------------------------------------------------


def test_a_key_returns_the_first_task_live_or_finished() -> None:
    rig = Rig()
    first = rig.submit(key="k")
    assert rig.core.submit("sha256", b"other", TaskOptions(key="k")) == (first.id, True)
    _, worker = rig.join()
    rig.core.complete(worker, [(first.id, STATUS_OK, b"r")])
    rig.turn()
    assert rig.core.submit("sha256", b"again", TaskOptions(key="k")) == (first.id, True)
    assert rig.core.stats()["tasks"]["succeeded"] == 1


# -- backpressure -----------------------------------------------------------


def test_submitters_are_paused_at_the_bound_and_resumed_with_room() -> None:
    rig = Rig(max_queued=10)
    signals: list[bool] = []
    rig.core.on_queue_full = signals.append
    for _ in range(10):
        rig.submit()
    assert signals == []  # at the bound, not beyond
    rig.submit()
    assert signals == [True]
    rig.join(slots=2)  # takes 3: 8 left, under 90 % of the bound
    assert signals == [True, False]


# -- retention and recovery -------------------------------------------------


def test_results_are_pruned_after_the_retention_time() -> None:
    rig = Rig(result_ttl=100.0)
    task = rig.submit()
    _, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_OK, b"r")])
    rig.turn()
    rig.clock.advance(60)
    assert rig.core.watch(task.id) is not None
    rig.clock.advance(60)
    assert rig.core.watch(task.id) is None


def test_a_restart_on_the_same_store_resumes_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "store.sqlite")
    first = Rig(SqliteStore(path))
    done, running, queued = (
        first.submit(payload=b"a"),
        first.submit(payload=b"b"),
        first.submit(payload=b"c", key="k"),
    )
    first.turn()
    channel, worker = first.join(slots=1)  # holds done and running (prefetch 1)
    first.core.complete(worker, [(done.id, STATUS_OK, b"digest-a")])
    first.turn()
    # The process dies here: no stop(), no close().  A new one opens the file.
    killed(first.store)
    second = Rig(SqliteStore(path))
    assert second.core.watch(done.id).value == b"digest-a"  # type: ignore[union-attr]
    assert second.core.state_of(running.id) is State.QUEUED
    assert second.core.state_of(queued.id) is State.QUEUED
    assert second.core.submit("sha256", b"dup", TaskOptions(key="k")) == (queued.id, True)
    fresh = second.submit()
    assert fresh.id > queued.id
    channel, worker = second.join(slots=5)
    assert channel.ids()[:2] == [running.id, queued.id]


def test_invalid_policies_are_refused() -> None:
    for bad in ({"prefetch": -1}, {"max_losses": 0}, {"heartbeat_interval": 0}, {"max_queued": 0}):
        with pytest.raises(ValueError):
            Policy(**bad)
    with pytest.raises(ValueError):
        Rig().join(slots=0)


# -- groups: quick single tasks travel together ------------------------------


def learn_speed(rig: Rig, seconds: float, task_type: str = "sha256") -> None:
    """Run one task of the type taking ``seconds``, so the core learns its speed."""
    channel, worker = rig.join(types=(task_type,), name=f"teacher-{seconds}")
    task = rig.submit(task_type)
    rig.clock.advance(seconds)
    rig.core.complete(worker, [(task.id, STATUS_OK, b"r")])
    rig.core.remove_worker(worker)


def test_queued_quick_tasks_travel_as_one_chunk_and_finish_one_by_one() -> None:
    rig = Rig(prefetch=0)
    learn_speed(rig, 0.001)  # 1 ms a task: groups of 50 hold 50 ms of work
    tasks = [rig.submit(payload=b"%d" % i) for i in range(120)]
    channel, worker = rig.join(slots=1)
    ((group_id, _, payloads),) = channel.chunks
    assert payloads == [t.payload for t in tasks[:50]] and channel.assigned == []
    outcomes = [(STATUS_OK, b"ok")] * 49 + [(STATUS_FAILED, b"E")]
    rig.core.complete_chunks(worker, [(group_id, 0, outcomes)])
    rig.turn()
    assert rig.result(tasks[0]) == b"ok"
    assert rig.failed_with(tasks[49]) == "E"
    assert len(channel.chunks) == 2  # refilled with the next group


def test_slow_tasks_are_never_grouped() -> None:
    rig = Rig(prefetch=0)
    learn_speed(rig, 2.0)
    tasks = [rig.submit() for _ in range(5)]
    channel, _ = rig.join(slots=2)
    assert channel.chunks == [] and channel.ids() == [tasks[0].id, tasks[1].id]


def test_a_lost_group_requeues_each_task_on_its_own() -> None:
    rig = Rig(prefetch=0)
    learn_speed(rig, 0.001)
    tasks = [rig.submit() for _ in range(10)]
    lost, lost_worker = rig.join(slots=1, name="lost")
    assert len(lost.chunks[0][2]) == 10
    rig.core.remove_worker(lost_worker, "killed")
    assert all(t.losses == 1 and t.state is State.QUEUED for t in tasks)
    survivor, worker = rig.join(slots=1, name="survivor")
    ((group_id, _, payloads),) = survivor.chunks
    rig.core.complete_chunks(worker, [(group_id, 0, [(STATUS_OK, b"x")] * len(payloads))])
    rig.turn()
    assert all(rig.result(t) == b"x" for t in tasks)


def test_a_task_cancelled_inside_a_group_keeps_its_cancellation() -> None:
    rig = Rig(prefetch=0)
    learn_speed(rig, 0.001)
    tasks = [rig.submit() for _ in range(3)]
    channel, worker = rig.join(slots=1)
    ((group_id, _, _),) = channel.chunks
    assert rig.core.cancel(tasks[1].id)
    rig.core.complete_chunks(worker, [(group_id, 0, [(STATUS_OK, b"x")] * 3)])
    rig.turn()
    assert rig.result(tasks[0]) == b"x" and rig.result(tasks[2]) == b"x"
    rig.failed_with(tasks[1], TaskCancelled)


def test_tasks_with_a_timeout_are_not_grouped() -> None:
    rig = Rig(prefetch=0)
    learn_speed(rig, 0.001)
    timed = rig.submit(timeout=5.0)
    plain = [rig.submit() for _ in range(3)]
    channel, worker = rig.join(slots=2)
    assert channel.ids() == [timed.id]
    assert channel.chunks[0][2] == [t.payload for t in plain]


# -- what a task knows about itself, asks for, and reports (task functions) -----


def retry(delay: float | None, reason: bytes = b"Retry: not yet") -> bytes:
    from taskmesh.wire import retry_value

    return retry_value(delay, reason)


def test_a_worker_is_told_each_attempt_s_number_attempts_and_timeout() -> None:
    rig = Rig(retry_delay=1.0, max_attempts=4)
    task = rig.submit(timeout=5.0)
    other = rig.submit(max_attempts=7)
    channel, worker = rig.join(slots=2)
    assert channel.contexts[task.id] == (1, 4, 5.0)
    assert channel.contexts[other.id] == (1, 7, None)
    rig.clock.advance(5)  # times out
    rig.clock.advance(1)
    assert channel.contexts[task.id] == (2, 4, 5.0)  # the second attempt knows it is


def test_a_task_that_asks_for_a_retry_runs_again_after_its_delay_without_retry_on_error() -> None:
    from taskmesh.wire import STATUS_RETRY

    rig = Rig(retry_delay=30.0)
    task = rig.submit(max_attempts=3)
    channel, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_RETRY, retry(2.0))])
    assert rig.core.stats()["tasks"]["waiting_to_retry"] == 1
    rig.clock.advance(1.9)
    assert channel.ids() == [task.id]
    rig.clock.advance(0.1)  # the delay it asked for, not the backoff
    assert channel.ids() == [task.id, task.id]
    assert channel.contexts[task.id][0] == 2
    rig.core.complete(worker, [(task.id, STATUS_RETRY, retry(None))])
    rig.clock.advance(59.9)
    assert len(channel.assigned) == 2  # None: the backoff (30 s doubled)
    rig.clock.advance(0.1)
    assert len(channel.assigned) == 3
    rig.core.complete(worker, [(task.id, STATUS_RETRY, retry(0.0))])  # third attempt: spent
    rig.turn()
    assert rig.failed_with(task) == "Retry: not yet (attempt 3 of 3; giving up)"


def test_a_structured_failure_keeps_its_structure_with_the_scheduler_s_note() -> None:
    from taskmesh.codec import encode_failure, parse_failure
    from taskmesh.wire import STATUS_RETRY

    rig = Rig()
    task = rig.submit(max_attempts=1)
    channel, worker = rig.join()
    rig.core.complete(worker, [(task.id, STATUS_RETRY, retry(0, encode_failure(KeyError("k"), 1 << 20)))])
    rig.turn()
    failure = parse_failure(rig.core.watch(task.id).value)  # type: ignore[union-attr]
    assert failure is not None and failure.type == "KeyError" and failure.note == "attempt 1 of 1; giving up"


def test_a_group_tells_each_task_its_attempt() -> None:
    rig = Rig(prefetch=0)
    channel, worker = rig.join(slots=1)
    # Teach the core that sha256 is quick, so queued ones travel as groups.
    warm = rig.submit()
    rig.core.complete(worker, [(warm.id, STATUS_OK, b"d")])
    blocker = rig.submit()
    tasks = [rig.submit() for _ in range(3)]
    rig.core.complete(worker, [(blocker.id, STATUS_OK, b"d")])
    (group_id, members), *_ = channel.groups.items()
    assert [(task_id, attempt) for task_id, attempt, _, _ in members] == [(t.id, 1) for t in tasks]


def test_progress_is_kept_for_a_running_task_and_dropped_when_it_leaves() -> None:
    rig = Rig(prefetch=0)
    task = rig.submit()
    queued = rig.submit()
    channel, worker = rig.join(slots=1, name="w")
    other_channel, other = rig.join(slots=1, types=("sleep",), name="other")
    rig.core.progress(worker, [(task.id, 3.0, 10.0, "three")])
    rig.core.progress(other, [(task.id, 9.0, 10.0, "not its task")])
    rig.core.progress(worker, [(queued.id, 1.0, 1.0, "not running")])
    assert rig.core.progress_of(task.id) == (3.0, 10.0, "three")
    assert rig.core.progress_of(queued.id) is None
    assert rig.core.stats()["progress"] == [
        {"id": task.id, "type": "sha256", "done": 3.0, "total": 10.0, "note": "three"}
    ]
    rig.core.complete(worker, [(task.id, STATUS_OK, b"d")])
    assert rig.core.progress_of(task.id) is None
    rig.core.progress(worker, [(task.id, 4.0, 10.0, "late")])
    assert rig.core.progress_of(task.id) is None and rig.core.stats()["progress"] == []


def test_progress_is_forgotten_when_the_worker_is_lost() -> None:
    rig = Rig()
    task = rig.submit()
    channel, worker = rig.join()
    rig.core.progress(worker, [(task.id, 1.0, 0.0, "")])
    rig.core.remove_worker(worker, "gone")
    assert rig.core.progress_of(task.id) is None


def test_a_map_item_that_asks_for_a_retry_fails() -> None:
    from taskmesh.wire import STATUS_RETRY

    rig = Rig()
    answers: list[tuple[int, int, bytes]] = []
    job = rig.core.open_job("sha256", lambda job, records: answers.extend(records), chunk_size=1)
    channel, worker = rig.join()
    rig.core.add_job_items(job, 0, [b"a"])
    ((chunk_id, _, _),) = channel.chunks
    rig.core.complete_chunks(worker, [(chunk_id, 0, [(STATUS_RETRY, retry(1.0))])])
    assert answers == [(0, STATUS_FAILED, b"Retry: not yet (a map's items are not retried)")]


def test_notify_tells_on_outcome_once_durable_without_a_deferred() -> None:
    clock = Clock()
    core = Scheduler(clock, MemoryStore(), Policy())
    core.start()
    told: list[tuple[int, State, bytes]] = []
    core.on_outcome = lambda task_id, state, value: told.append((task_id, state, value))
    worker = core.add_worker(FakeChannel(), "w", 2, frozenset({"echo"}))
    ok, _ = core.submit("echo", b"a")
    bad, _ = core.submit("echo", b"b")
    quiet, _ = core.submit("echo", b"c")  # nobody notified: nothing told
    for task_id in (ok, bad):
        found = core.notify(task_id)
        assert isinstance(found, Task) and found.watched and found.fired is None  # no Deferred made
    core.complete(worker, [(ok, STATUS_OK, b"digest"), (bad, STATUS_FAILED, b"no good")])
    assert told == []  # not durable yet
    clock.advance(0)
    assert told == [(ok, State.SUCCEEDED, b"digest"), (bad, State.FAILED, b"no good")]
    core.complete(worker, [(quiet, STATUS_OK, b"x")])
    clock.advance(0)
    assert len(told) == 2
    outcome = core.notify(ok)  # finished: the outcome, answered by the caller now
    assert not isinstance(outcome, Task) and outcome is not None and outcome.value == b"digest"
    assert core.notify(10_000) is None
