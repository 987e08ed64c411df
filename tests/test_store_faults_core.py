"""
The scheduler core when its store cannot commit, driven with a Clock over a
real SQLite store and genuine faults (another connection holding the write
lock, a database that is full): nothing acknowledged or reported before its
commit, nothing lost, refusals after the grace time, recovery without a
restart, one log line per episode; and the protocol's side of it in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handshakes import SECRETS, frame, frames, shake
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from zope.interface import implementer

from taskmesh import wire
from taskmesh.core.scheduler import PRUNE_BATCH, IWorkerChannel, Policy, Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.net.scheduler_protocol import SchedulerFactory
from taskmesh.store import ITaskStore, MemoryStore, State
from taskmesh.store.sqlite import SqliteStore
from taskmesh.testing import fill_store, free_store, write_lock
from taskmesh.wire import STATUS_OK, TaskOptions

LOCKED = "store unavailable: database is locked (another process holds the store's write lock)"


@implementer(IWorkerChannel)
class Channel:
    def __init__(self) -> None:
        self.assigned: list[int] = []
        self.chunks: list[tuple[int, list[bytes]]] = []
        self.cancelled: list[int] = []

    def assign(
        self,
        task_id: int,
        task_type: str,
        payload: bytes,
        attempt: int,
        max_attempts: int,
        timeout: float | None,
    ) -> None:
        self.assigned.append(task_id)

    def assign_group(self, group_id: int, task_type: str, members: list[tuple[int, int, int, bytes]]) -> None:
        self.chunks.append((group_id, [payload for _, _, _, payload in members]))

    def assign_chunk(self, chunk_id: int, task_type: str, payloads: list[bytes]) -> None:
        self.chunks.append((chunk_id, payloads))

    def cancel(self, task_id: int) -> None:
        self.cancelled.append(task_id)

    def heartbeat(self) -> None:
        pass

    def drop(self, reason: str) -> None:
        pass


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Every log event while the test runs."""
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def lines(events: list[LogEvent], text: str) -> list[LogEvent]:
    return [event for event in events if text in event.get("log_format", "")]


class Rig:
    """A core over a real SQLite store, with acknowledgements recorded as a connection sees them."""

    def __init__(self, path: Path, store: ITaskStore | None = None, **policy: Any) -> None:
        self.path = path
        self.clock = Clock()
        self.store = store if store is not None else SqliteStore(str(path))
        self.core = Scheduler(self.clock, self.store, Policy(**{"heartbeat_interval": 1000.0, **policy}))
        self.core.start()
        self.answers: list[tuple[str, object]] = []

    def submit(self, payload: bytes = b"x", **options: Any) -> int:
        """Submit and ask to be acknowledged, as the protocol does."""
        task_id, _ = self.core.submit("sha256", payload, TaskOptions(**options))
        self.core.after_commit_or_refuse(
            lambda: self.answers.append(("accepted", task_id)),
            lambda reason: self.answers.append(("refused", reason)),
        )
        return task_id

    def advance(self, seconds: float) -> None:
        """Let time pass in small steps, so every timer due runs in order."""
        for _ in range(round(seconds / 0.01)):
            self.clock.advance(0.01)

    def stored_ids(self) -> list[int]:
        import sqlite3

        db = sqlite3.connect(str(self.path))
        try:
            return [row[0] for row in db.execute("SELECT id FROM tasks ORDER BY id")]
        finally:
            db.close()


def test_nothing_is_acknowledged_before_its_commit_and_all_is_once_the_lock_is_free(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    rig = Rig(tmp_path / "s.sqlite")
    path = tmp_path / "s.sqlite"
    with write_lock(path):
        first = rig.submit()
        rig.clock.advance(0)
        assert rig.answers == []
        assert rig.core.store_error is not None and "database is locked" in rig.core.store_error
        second = rig.submit()  # within the grace time: held back too, not refused
        rig.advance(0.5)
        assert rig.answers == []
        store = rig.core.stats()["store"]
        assert store["available"] is False and store["error"] == LOCKED
        assert store["held_back_submissions"] == 2 and store["refusing_submissions"] is False
    rig.advance(0.5)  # the next retry commits: no restart, no new write needed
    assert rig.answers == [("accepted", first), ("accepted", second)]
    assert rig.stored_ids() == [first, second]
    assert rig.core.stats()["store"]["available"] is True
    assert len(lines(events, "the store cannot commit")) == 1
    assert len(lines(events, "the store commits again")) == 1


def test_held_submissions_are_refused_after_the_grace_time_and_new_ones_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "s.sqlite", prefetch=0, store_grace=1.0)
    channel = Channel()
    worker = rig.core.add_worker(channel, "w", 1, frozenset({"sha256"}))
    with write_lock(tmp_path / "s.sqlite"):
        running = rig.submit(b"a", key="ka")  # leased at once: the worker runs it
        queued = rig.submit(b"b")
        rig.clock.advance(0)
        assert channel.assigned == [running]
        rig.advance(0.9)
        assert rig.answers == []
        rig.advance(0.2)
        assert rig.answers == [("refused", LOCKED), ("refused", LOCKED)]
        # Withdrawn: nothing refused runs or is stored.
        assert channel.cancelled == [running]
        assert rig.core.task(running) is None and rig.core.task(queued) is None
        assert rig.core.stats()["tasks"]["queued"] == 0 and worker.leases == {}
        assert rig.core.stats()["store"]["refusing_submissions"] is True
        with pytest.raises(StoreUnavailable, match="database is locked"):
            rig.core.submit("sha256", b"c")
        refused: list[str] = []
        rig.core.after_commit_or_refuse(lambda: None, refused.append)
        assert refused == [LOCKED]  # at once, not after another grace time
        # The refused task's late result is dropped, not recorded.
        rig.core.complete(worker, [(running, STATUS_OK, b"late")])
    rig.advance(2.0)
    assert rig.core.store_error is None
    again = rig.submit(b"a", key="ka")  # the key is free again: nothing was stored
    rig.clock.advance(0)
    assert rig.answers[-1] == ("accepted", again)
    assert rig.stored_ids() == [again]


def test_results_are_held_back_never_refused_and_reported_after_recovery(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "s.sqlite", prefetch=0)
    channel = Channel()
    worker = rig.core.add_worker(channel, "w", 1, frozenset({"sha256"}))
    task_id = rig.submit()
    rig.clock.advance(0)
    assert rig.answers == [("accepted", task_id)]
    task = rig.core.task(task_id)
    assert task is not None
    outcome: list[object] = []
    task.deferred.addBoth(outcome.append)
    with write_lock(tmp_path / "s.sqlite"):
        rig.core.complete(worker, [(task_id, STATUS_OK, b"digest")])
        rig.advance(5.0)  # far past the grace time
        assert outcome == []
        assert rig.core.stats()["store"]["held_back_results"] == 1
        assert rig.core.watch(task_id) is task.deferred  # still waiting, not lost
        assert rig.core.state_of(task_id) is State.RUNNING  # not durable: not told as finished
    rig.advance(2.0)
    assert outcome == [b"digest"]
    outcome_stored = rig.store.outcome(task_id)
    assert outcome_stored is not None and outcome_stored.value == b"digest"


def test_a_locked_store_is_retried_with_backoff_not_in_a_busy_loop(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "s.sqlite", store_retry_max_delay=0.4)
    with write_lock(tmp_path / "s.sqlite"):
        rig.submit()
        rig.clock.advance(0)
        assert rig.core.failed_commits == 1
        rig.advance(3.0)
        # Retries after 0.05, 0.1, 0.2, then every 0.4 s: 0.35 + 6 x 0.4 < 3.
        assert rig.core.failed_commits == 1 + 3 + 6
    rig.advance(0.4)
    assert rig.core.store_error is None


def test_a_full_database_refuses_then_recovers_when_space_returns(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    path = tmp_path / "s.sqlite"
    pages = fill_store(path, rows=30)
    rig = Rig(path, SqliteStore(str(path), max_pages=pages + 8))
    accepted = []
    for _ in range(200):
        rig.submit(b"p" * 2000)
        rig.clock.advance(0)
        if rig.core.store_error is not None:
            break
        accepted.append(rig.answers[-1][1])
    assert rig.core.store_error == "database or disk is full"
    assert accepted and rig.stored_ids() == accepted
    rig.advance(1.1)
    assert rig.answers[-1] == ("refused", "store unavailable: database or disk is full")
    # With the refused task gone, the small writes left (the id counter) fit:
    # the store commits (at the retry after 1.55 s), and fails again with the
    # next large submission.
    rig.advance(0.5)
    assert rig.core.store_error is None
    relapse = rig.submit(b"p" * 2000)
    rig.clock.advance(0)
    assert rig.core.store_error == "database or disk is full"
    rig.advance(1.1)
    assert rig.answers[-1] == ("refused", "store unavailable: database or disk is full")
    # Once per episode with the real cause; the relapse is one summary line.
    assert [event["reason"] for event in lines(events, "the store cannot commit")] == [
        "database or disk is full"
    ]
    assert len(lines(events, "the store commits again")) == 1
    assert len(lines(events, "the store failed again")) == 1
    free_store(path)  # space comes back: the next retry commits, without a restart
    rig.advance(2.0)
    assert rig.core.store_error is None
    late = rig.submit(b"p" * 2000)
    rig.clock.advance(0)
    assert rig.answers[-1] == ("accepted", late)
    assert relapse not in rig.stored_ids()
    assert rig.stored_ids() == [*accepted, late]


def test_a_failing_callback_after_a_commit_never_keeps_the_others_from_running(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    rig = Rig(tmp_path / "s.sqlite")
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug in one connection")

    rig.core.after_commit(seen.append, "before")
    rig.core.after_commit(broken)
    rig.core.after_commit(seen.append, "after")
    rig.clock.advance(0)
    assert seen == ["before", "after"]
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


def test_a_failed_prune_round_is_logged_and_the_next_round_runs(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    rig = Rig(tmp_path / "s.sqlite", result_ttl=10.0, prefetch=0)
    channel = Channel()
    worker = rig.core.add_worker(channel, "w", 1, frozenset({"sha256"}))
    task_id = rig.submit()
    rig.clock.advance(0)
    rig.core.complete(worker, [(task_id, STATUS_OK, b"r")])
    rig.clock.advance(0)
    rig.clock.advance(5)
    with write_lock(tmp_path / "s.sqlite"):
        rig.clock.advance(10)  # the round at 20 s meets the lock
    assert len(lines(events, "pruning failed")) == 1
    assert rig.core.watch(task_id) is not None
    rig.clock.advance(10)
    assert rig.core.watch(task_id) is None


def test_a_large_backlog_is_pruned_a_batch_per_turn(tmp_path: Path) -> None:
    batches: list[int] = []

    class Counting(MemoryStore):
        def prune(self, finished_before: float, limit: int) -> int:
            count = super().prune(finished_before, limit)
            batches.append(count)
            return count

    store = Counting()
    rig = Rig(tmp_path / "unused", store, result_ttl=10.0)
    for task_id in range(1, PRUNE_BATCH * 2 + 11):
        store.finish(task_id, State.SUCCEEDED, b"r", -1.0)
    rig.clock.advance(10.0)
    assert batches == [PRUNE_BATCH, PRUNE_BATCH, 10]
    assert store._outcomes == {}


def test_a_group_member_refused_with_its_submission_is_never_finished(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "s.sqlite", prefetch=0)
    channel = Channel()
    worker = rig.core.add_worker(channel, "w", 1, frozenset({"sha256"}))
    durable = rig.submit(b"first")
    rig.clock.advance(0)
    # Make sha256 a quick type, so that queued tasks travel as a group.
    rig.core.complete(worker, [(durable, STATUS_OK, b"r")])
    rig.clock.advance(0)
    sizer = rig.core._group_size("sha256")
    sizer.size = 4
    blocker = rig.submit(b"blocker")
    rig.clock.advance(0)
    with write_lock(tmp_path / "s.sqlite"):
        members = [rig.submit(b"m%d" % n) for n in range(3)]
        rig.core.complete(worker, [(blocker, STATUS_OK, b"r")])  # frees the slot: the group goes out
        (group_id, payloads), *_ = channel.chunks
        assert payloads == [b"m0", b"m1", b"m2"]
        rig.advance(1.2)
        assert sorted(channel.cancelled) == sorted(members)
        rig.core.complete_chunks(worker, [(group_id, 0, [(0, b"a"), (0, b"b"), (0, b"c")])])
    rig.advance(2.0)
    assert rig.core.store_error is None
    assert rig.stored_ids() == [durable, blocker]
    assert rig.core.stats()["tasks"]["succeeded"] == 2


def test_stop_during_an_outage_says_what_was_never_acknowledged(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    rig = Rig(tmp_path / "s.sqlite")
    with write_lock(tmp_path / "s.sqlite"):
        rig.submit()
        rig.clock.advance(0)
        rig.core.stop()
        assert rig.clock.getDelayedCalls() == []  # no retry outlives stop()
    assert len(lines(events, "stopping with the store still unavailable")) == 1
    assert rig.answers == []


# -- the protocol's side, in memory ---------------------------------------------


def test_a_client_is_refused_with_the_reason_answered_while_degraded_and_told_the_health(
    tmp_path: Path,
) -> None:
    import json

    clock = Clock()
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    core = Scheduler(clock, store, Policy(heartbeat_interval=1000.0))
    core.start()
    factory = SchedulerFactory(core, clock, SECRETS)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    shake(protocol, transport, wire.Hello(role=wire.ROLE_CLIENT, name="c"))

    def received() -> list[wire.Message]:
        clock.advance(0)
        messages = frames(transport.value())
        transport.clear()
        return messages

    protocol.dataReceived(frame(wire.Submit([(1, "sha256", b"kept", wire.DEFAULT_OPTIONS)])))
    (accepted,) = received()
    assert isinstance(accepted, wire.Accepted)
    kept = accepted.records[0][1]
    with write_lock(tmp_path / "s.sqlite"):
        protocol.dataReceived(frame(wire.Submit([(2, "sha256", b"held", wire.DEFAULT_OPTIONS)])))
        assert received() == []
        # Status and queries are answered at once, from what is durable.
        protocol.dataReceived(frame(wire.StatusRequest()))
        protocol.dataReceived(frame(wire.Query([(kept, False)])))
        status, pending = received()
        assert isinstance(status, wire.StatusReport)
        health = json.loads(status.json)["store"]
        assert health["available"] is False and health["error"] == LOCKED
        assert pending == wire.Results([(kept, wire.STATUS_PENDING, b"queued")])
        for _ in range(110):
            clock.advance(0.01)
        assert frames(transport.value()) == [wire.Rejected([(2, LOCKED)])]
        transport.clear()
        protocol.dataReceived(frame(wire.Submit([(3, "sha256", b"new", wire.DEFAULT_OPTIONS)])))
        assert received() == [wire.Rejected([(3, LOCKED)])]
    for _ in range(300):
        clock.advance(0.01)
    protocol.dataReceived(frame(wire.Submit([(4, "sha256", b"back", wire.DEFAULT_OPTIONS)])))
    (accepted,) = received()
    assert isinstance(accepted, wire.Accepted) and accepted.records[0][0] == 4


def test_a_backlog_is_committed_over_several_turns_and_acknowledged_when_all_is_durable(
    tmp_path: Path,
) -> None:
    from taskmesh.store.sqlite import COMMIT_ROWS

    rig = Rig(tmp_path / "s.sqlite")
    ids = [rig.submit() for _ in range(COMMIT_ROWS + 10)]
    rig.core._commit()  # the turn's commit: the first slice only
    assert rig.answers == []
    assert len(rig.stored_ids()) == COMMIT_ROWS
    rig.clock.advance(0)  # the next turn finishes it
    assert rig.answers == [("accepted", task_id) for task_id in ids]
    assert rig.stored_ids() == ids
