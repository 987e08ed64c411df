"""
Jobs (maps) in the scheduler core, driven with a Clock: chunking, adaptive
chunk sizes, answers by index, splitting lost chunks, priorities, and a
submitter that leaves.
"""

from __future__ import annotations

from typing import Any

from test_scheduler_core import FakeChannel, Rig

from taskmesh.core.chunking import FIRST_CHUNK, MAX_CHUNK, TARGET_SECONDS, ChunkSizer
from taskmesh.core.scheduler import Job
from taskmesh.wire import STATUS_FAILED, STATUS_OK


class JobRig(Rig):
    def __init__(self, **policy: Any) -> None:
        super().__init__(**policy)
        self.answers: dict[int, tuple[int, bytes]] = {}

    def open(self, task_type: str = "sha256", **options: Any) -> Job:
        def report(job: Job, records: list[tuple[int, int, bytes]]) -> None:
            for index, status, value in records:
                assert index not in self.answers, f"item {index} answered twice"
                self.answers[index] = (status, value)

        return self.core.open_job(task_type, report, **options)

    def items(self, job: Job, count: int, first: int = 0) -> None:
        self.core.add_job_items(job, first, [b"item-%d" % i for i in range(first, first + count)])

    def answer(self, worker: Any, channel: FakeChannel, status: int = STATUS_OK) -> int:
        """The worker answers every chunk it holds; returns how many items."""
        records = [
            (chunk_id, 0, [(status, b"r:" + payload) for payload in payloads])
            for chunk_id, _, payloads in channel.chunks
            if chunk_id in worker.leases
        ]
        self.core.complete_chunks(worker, records)
        return sum(len(outcomes) for _, _, outcomes in records)


def test_items_travel_in_chunks_of_the_fixed_size_and_are_answered_by_index() -> None:
    rig = JobRig()
    channel, worker = rig.join(slots=1)  # capacity 2 with prefetch 1
    job = rig.open(chunk_size=10)
    rig.items(job, 35)
    rig.core.end_job(job)
    assert [len(payloads) for _, _, payloads in channel.chunks] == [10, 10]
    while rig.answer(worker, channel):
        pass
    assert sorted(rig.answers) == list(range(35))
    assert rig.answers[17] == (STATUS_OK, b"r:item-17")
    assert [len(p) for _, _, p in channel.chunks] == [10, 10, 10, 5]  # the last one short


def test_a_short_chunk_goes_at_once_to_an_idle_worker_but_not_to_a_busy_one() -> None:
    rig = JobRig(prefetch=0)
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=100)
    rig.items(job, 3)
    assert [len(p) for _, _, p in channel.chunks] == [3]  # idle: don't hold items back
    rig.items(job, 5, first=3)
    assert len(channel.chunks) == 1  # busy: wait for a full chunk or for room
    rig.answer(worker, channel)
    assert [len(p) for _, _, p in channel.chunks] == [3, 5]  # room again: the rest goes


def test_one_items_failure_is_its_own_and_nothing_runs_twice() -> None:
    rig = JobRig()
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=3)
    rig.items(job, 3)
    rig.core.end_job(job)
    ((chunk_id, _, _),) = channel.chunks
    rig.core.complete_chunks(
        worker, [(chunk_id, 0, [(STATUS_OK, b"a"), (STATUS_FAILED, b"E"), (STATUS_OK, b"c")])]
    )
    assert rig.answers == {0: (STATUS_OK, b"a"), 1: (STATUS_FAILED, b"E"), 2: (STATUS_OK, b"c")}
    assert len(channel.chunks) == 1


def test_a_lost_chunk_comes_back_as_single_items_ahead_of_later_chunks() -> None:
    rig = JobRig()
    lost, lost_worker = rig.join(slots=1, name="lost")
    job = rig.open(chunk_size=4)
    rig.items(job, 12)
    rig.core.end_job(job)
    assert [p for _, _, p in lost.chunks][0] == [b"item-0", b"item-1", b"item-2", b"item-3"]
    rig.core.remove_worker(lost_worker, "killed")
    survivor, worker = rig.join(slots=1, name="survivor")
    assert [p for _, _, p in survivor.chunks[:2]] == [[b"item-0"], [b"item-1"]]
    while rig.answer(worker, survivor):
        pass
    assert sorted(rig.answers) == list(range(12))


def test_items_that_keep_losing_their_worker_fail_as_poison() -> None:
    rig = JobRig(max_losses=2)
    job = rig.open(chunk_size=2)
    rig.items(job, 2)
    rig.core.end_job(job)
    for attempt in range(2):
        channel, worker = rig.join(slots=1, name=f"w{attempt}")
        rig.core.remove_worker(worker, "killed")
    assert set(rig.answers) == {0, 1}
    status, reason = rig.answers[0]
    assert status == STATUS_FAILED and b"poison" in reason


def test_a_high_priority_task_overtakes_a_long_low_priority_job() -> None:
    rig = JobRig(prefetch=0)
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=1)
    rig.items(job, 100)
    urgent = rig.submit(priority=10)
    rig.answer(worker, channel)  # the one chunk it held
    assert channel.ids() == [urgent.id]  # next, before the other 99 chunks


def test_faster_workers_take_more_chunks() -> None:
    rig = JobRig(prefetch=0)
    fast, fast_worker = rig.join(slots=1, name="fast")
    slow, slow_worker = rig.join(slots=1, name="slow")
    job = rig.open(chunk_size=1)
    rig.items(job, 20)
    for _ in range(10):
        rig.answer(fast_worker, fast)  # the fast one answers ten times ...
    rig.answer(slow_worker, slow)  # ... while the slow one answers once
    assert len(fast.chunks) == 11 and len(slow.chunks) == 2


def test_a_submitter_that_leaves_takes_its_job_with_it() -> None:
    rig = JobRig(prefetch=0)
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=1)
    rig.items(job, 5)
    rig.core.close_job(job)
    ((chunk_id, _, _),) = channel.chunks
    assert channel.cancelled == [chunk_id]
    assert rig.core.stats()["tasks"]["queued"] == 0
    rig.core.complete_chunks(worker, [(chunk_id, 0, [(STATUS_OK, b"late")])])  # dropped
    assert rig.answers == {}


def test_a_job_for_a_type_nobody_runs_waits_for_a_worker_that_does() -> None:
    rig = JobRig()
    rig.join(types=("sleep",), name="sleeper")
    job = rig.open("pbkdf2", chunk_size=2)
    rig.items(job, 4)
    rig.core.end_job(job)
    assert rig.core.stats()["waiting_by_type"]["pbkdf2"]["no_worker_runs_it"]
    channel, worker = rig.join(types=("pbkdf2",), name="hasher")
    while rig.answer(worker, channel):
        pass
    assert sorted(rig.answers) == [0, 1, 2, 3]


def test_the_chunk_size_follows_the_jobs_speed() -> None:
    sizer = ChunkSizer()
    assert sizer.size == FIRST_CHUNK
    sizer.observe(16, 16 * 0.0001)  # 0.1 ms an item
    assert sizer.size == round(TARGET_SECONDS / 0.0001)
    for _ in range(20):
        sizer.observe(sizer.size, sizer.size * 1.0)  # now 1 s an item
    assert sizer.size == 1
    for _ in range(40):
        sizer.observe(sizer.size, sizer.size * 1e-7)
    assert sizer.size == MAX_CHUNK


def test_a_fixed_chunk_size_is_kept_and_a_size_hint_starts_small() -> None:
    fixed = ChunkSizer(fixed=7)
    fixed.observe(7, 100.0)
    assert fixed.size == 7
    assert ChunkSizer(size_hint=20, slots=2).size == 2  # an even share: 20 / (4 x 2)
    assert ChunkSizer(size_hint=10**6, slots=2).size == FIRST_CHUNK


def test_a_group_of_tasks_never_swallows_a_jobs_chunk_of_the_same_type() -> None:
    from test_scheduler_core import learn_speed

    rig = JobRig(prefetch=1)
    learn_speed(rig, 0.001)
    plain = [rig.submit() for _ in range(3)]
    job = rig.open(chunk_size=2)
    rig.items(job, 2)
    channel, worker = rig.join(slots=1)
    group, chunk = channel.chunks
    assert group[2] == [t.payload for t in plain] and chunk[2] == [b"item-0", b"item-1"]


def test_groups_and_chunks_stay_under_the_byte_budget() -> None:
    from test_scheduler_core import learn_speed

    rig = JobRig(prefetch=0, max_chunk_bytes=120)
    learn_speed(rig, 0.001)
    for _ in range(10):
        rig.submit(payload=b"p" * 40)
    channel, worker = rig.join(slots=1)
    # the record's own 19 bytes (id, "sha256", count), then 45 an item: 2 fit, 3 do not
    assert len(channel.chunks[0][2]) == 2


def test_a_jobs_chunks_queue_at_the_jobs_priority() -> None:
    rig = JobRig(prefetch=0)
    low = rig.submit(priority=0)
    job = rig.open(chunk_size=1, priority=5)
    rig.items(job, 1)
    channel, worker = rig.join(slots=1)
    assert channel.chunks and channel.assigned == []  # the job's chunk went first
    rig.answer(worker, channel)
    assert channel.ids() == [low.id]


def test_a_chunk_answered_in_parts_frees_its_slot_after_the_last() -> None:
    rig = JobRig(prefetch=0)
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=4)
    rig.items(job, 8)
    ((chunk_id, _, _),) = channel.chunks
    rig.core.complete_chunks(worker, [(chunk_id, 0, [(STATUS_OK, b"a"), (STATUS_OK, b"b")])])
    assert sorted(rig.answers) == [0, 1] and len(channel.chunks) == 1
    rig.core.complete_chunks(worker, [(chunk_id, 2, [(STATUS_OK, b"c"), (STATUS_OK, b"d")])])
    assert sorted(rig.answers) == [0, 1, 2, 3] and len(channel.chunks) == 2


def test_a_part_out_of_order_is_refused() -> None:
    import pytest

    rig = JobRig(prefetch=0)
    channel, worker = rig.join(slots=1)
    job = rig.open(chunk_size=4)
    rig.items(job, 4)
    ((chunk_id, _, _),) = channel.chunks
    with pytest.raises(ValueError, match="does not fit"):
        rig.core.complete_chunks(worker, [(chunk_id, 2, [(STATUS_OK, b"c")])])


def test_a_half_answered_chunk_lost_with_its_worker_reruns_only_the_rest() -> None:
    rig = JobRig(prefetch=0)
    lost, lost_worker = rig.join(slots=1, name="lost")
    job = rig.open(chunk_size=4)
    rig.items(job, 4)
    rig.core.end_job(job)
    ((chunk_id, _, _),) = lost.chunks
    rig.core.complete_chunks(lost_worker, [(chunk_id, 0, [(STATUS_OK, b"a"), (STATUS_OK, b"b")])])
    rig.core.remove_worker(lost_worker, "killed")
    survivor, worker = rig.join(slots=1, name="survivor")
    while rig.answer(worker, survivor):
        pass
    assert [p for _, _, p in survivor.chunks] == [[b"item-2"], [b"item-3"]]
    assert sorted(rig.answers) == [0, 1, 2, 3]


def test_with_no_size_announced_the_first_chunks_are_split_among_the_slots() -> None:
    """Issue 16: 16 piped lines (total unknown) used to go as one chunk of 16, run one by one."""
    rig = JobRig()
    channel, worker = rig.join(slots=3)  # capacity 4 with prefetch 1
    job = rig.open()  # no size_hint: a map from a pipe
    rig.items(job, 16)
    assert [len(p) for _, _, p in channel.chunks] == [1, 1, 1, 1]  # every slot busy at once
    rig.core.end_job(job)
    while rig.answer(worker, channel):
        pass
    assert sorted(rig.answers) == list(range(16))


def test_a_large_buffer_still_starts_with_first_chunks_and_a_measured_size_wins() -> None:
    sizer = ChunkSizer()
    assert sizer.guessing
    assert sizer.first_size(2000, 3) == FIRST_CHUNK  # quick big maps keep their first chunk size
    assert sizer.first_size(16, 3) == 1
    assert sizer.first_size(16, 0) == 4  # no worker yet: as if one slot
    sizer.observe(1, 0.25)
    assert not sizer.guessing and sizer.size == 1
    assert not ChunkSizer(size_hint=16).guessing and not ChunkSizer(fixed=5).guessing
