"""
The PostgreSQL store on a real server (a throwaway cluster): what it does
when the server goes away, comes back, or ends its sessions; the advisory
lock that keeps one scheduler per database, across a server restart; and
the scheduler core over it, with commits landing from the store's thread
while a Clock drives the core (``Landings`` plays the reactor's
``callFromThread``: the test decides when a landing is run).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from twisted.internet.task import Clock

from taskmesh.core.scheduler import Policy, Scheduler, Task
from taskmesh.errors import StoreUnavailable
from taskmesh.store import State
from taskmesh.store.postgres import READ_RECONNECT_INTERVAL, PostgresStore
from taskmesh.testing import TIMEOUT, free_port, wait_until
from taskmesh.testing_postgres import PostgresCluster
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions

REFUSED = "connection refused (is PostgreSQL running there?)"


def task(task_id: int, key: str | None = None) -> Task:
    options = TaskOptions(key=key) if key else DEFAULT_OPTIONS
    return Task(task_id, "sha256", b"payload-%d" % task_id, options, 100.0 + task_id)


def rows(url: str) -> list[tuple[Any, ...]]:
    """What another client sees: (id, state, result) of every task."""
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute("SELECT id, state, result FROM tasks ORDER BY id").fetchall()


class Landings:
    """The reactor's callFromThread, for a test: landings wait in a queue until the test runs them."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls.put((function, args))

    def run_one(self) -> None:
        function, args = self.calls.get(timeout=TIMEOUT)
        function(*args)


@pytest.fixture
def stores(postgres_url: str) -> Iterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    yield opened
    for store in opened:
        if store._thread.is_alive():
            store.close()


def open_store(url: str, stores: list[PostgresStore], landings: Landings | None = None) -> PostgresStore:
    store = PostgresStore(url, landings)
    stores.append(store)
    return store


# -- the store -------------------------------------------------------------------


def test_a_server_that_is_down_fails_commits_and_reads_with_the_reason_and_loses_nothing(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    store = open_store(postgres_url, stores)
    store.add(task(1))
    store.commit()
    postgres.stop("immediate")
    store.add(task(2))
    store.finish(1, State.SUCCEEDED, b"one", 5.0)
    with pytest.raises(StoreUnavailable) as caught:
        store.commit()
    assert "\n" not in caught.value.reason
    store.add(task(3))
    with pytest.raises(StoreUnavailable) as caught:
        store.commit()
    assert caught.value.reason == REFUSED
    assert str(caught.value) == f"store unavailable: {REFUSED}"
    with pytest.raises(StoreUnavailable):
        store.outcome(1)
    assert store.pending() == 3
    postgres.start()
    assert store.commit() is True
    assert rows(postgres_url) == [(1, int(State.SUCCEEDED), b"one"), (2, 0, None), (3, 0, None)]
    # Reads reconnect too (at most once per interval, so they never hold the reactor for long).
    outcome = wait_until(
        lambda: _try(lambda: store.outcome(1)), READ_RECONNECT_INTERVAL + TIMEOUT, "reads to reconnect"
    )
    assert outcome.value == b"one"


def _try(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except StoreUnavailable:
        return None


def test_a_commit_after_the_server_ended_the_session_reconnects_at_once(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    store = open_store(postgres_url, stores)
    store.add(task(1))
    store.commit()
    assert store.task_for_key("nothing") is None  # the reader connects too
    assert postgres.terminate_sessions(postgres_url) == 2
    store.add(task(2))
    assert store.commit() is True  # the dead session is found, replaced, and the batch written
    assert [row[0] for row in rows(postgres_url)] == [1, 2]


def test_a_read_after_the_server_ended_the_session_reconnects_at_once(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    # A client waiting for a result after a database restart must get it,
    # not a dropped connection: the dead reader session is replaced at once.
    store = open_store(postgres_url, stores)
    store.add(task(1))
    store.finish(1, State.SUCCEEDED, b"one", 5.0)
    store.commit()
    assert store.task_for_key("nothing") is None  # the reader connects
    assert postgres.terminate_sessions(postgres_url) == 2
    outcome = store.outcome(1)
    assert outcome is not None and outcome.value == b"one"


def test_a_second_scheduler_is_refused_and_says_who_holds_the_lock(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    first = open_store(postgres_url, stores)
    with pytest.raises(StoreUnavailable) as caught:
        open_store(postgres_url, stores)
    reason = caught.value.reason
    assert "in use by another scheduler: taskmesh-scheduler writer pid" in reason
    assert "\n" not in reason
    assert first.lock_holder() is not None
    first.close()
    second = open_store(postgres_url, stores)  # the server released it with the session
    assert second.next_id() == 1


def test_after_a_server_restart_the_lock_is_taken_again_before_any_write(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    first = open_store(postgres_url, stores)
    first.add(task(1))
    first.commit()
    postgres.restart("immediate")  # every session ends: so does the lock
    second = open_store(postgres_url, stores)  # another scheduler gets there first
    first.add(task(2))
    with pytest.raises(StoreUnavailable, match="in use by another scheduler"):
        first.commit()
    assert [row[0] for row in rows(postgres_url)] == [1]
    second.close()
    assert first.commit() is True
    assert [row[0] for row in rows(postgres_url)] == [1, 2]


def test_keys_of_tasks_not_yet_durable_are_known(postgres_url: str, stores: list[PostgresStore]) -> None:
    landings = Landings()
    store = open_store(postgres_url, stores, landings)
    store.add(task(1, key="buffered"))
    assert store.task_for_key("buffered") == 1
    outcomes: list[str | None] = []
    assert store.begin_commit(outcomes.append) is True
    store.add(task(2, key="later"))
    assert store.task_for_key("buffered") == 1  # in flight
    assert store.task_for_key("later") == 2
    landings.run_one()
    assert outcomes == [None]
    assert store.task_for_key("buffered") == 1  # durable
    assert store.begin_commit(outcomes.append) is True
    landings.run_one()
    assert store.begin_commit(outcomes.append) is False  # nothing left to write
    assert outcomes == [None, None]


def test_an_unreachable_server_is_refused_at_open_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStore(f"postgresql://me:hunter2@127.0.0.1:{free_port()}/nothing")
    assert caught.value.reason.endswith(f"/nothing: {REFUSED}")
    assert "hunter2" not in caught.value.reason


# -- the core over it --------------------------------------------------------------


class Rig:
    """A core on a Clock over a PostgreSQL store, acknowledgements recorded as a connection sees them."""

    def __init__(self, url: str, stores: list[PostgresStore], **policy: Any) -> None:
        self.landings = Landings()
        self.store = open_store(url, stores, self.landings)
        self.clock = Clock()
        self.core = Scheduler(self.clock, self.store, Policy(**{"heartbeat_interval": 1000.0, **policy}))
        self.core.start()
        self.answers: list[tuple[str, object]] = []

    def submit(self, payload: bytes = b"x") -> int:
        task_id, _ = self.core.submit("sha256", payload)
        self.core.after_commit_or_refuse(
            lambda: self.answers.append(("accepted", task_id)),
            lambda reason: self.answers.append(("refused", reason)),
        )
        return task_id

    def step(self, seconds: float = 0.0) -> None:
        """Let time pass (timers run, commits begin), without running any landing."""
        self.clock.advance(seconds)

    def run(self, seconds: float) -> None:
        """Let time pass in small steps, each commit landing before the next step."""
        for _ in range(max(1, round(seconds / 0.01))):
            self.clock.advance(0.01)
            while self.core._in_flight is not None:
                self.landings.run_one()


def test_acknowledgements_wait_for_their_commit_and_later_ones_for_the_next(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    rig = Rig(postgres_url, stores)
    first = rig.submit()
    rig.step()  # the commit begins in the store's thread; the core serves on
    assert rig.core._in_flight is not None
    second = rig.submit()
    rig.step()
    assert rig.answers == []
    rig.landings.run_one()
    assert rig.answers == [("accepted", first)]  # not the second: it was not in that commit
    assert [row[0] for row in rows(postgres_url)] == [first]
    rig.step()  # the landing began the next commit
    rig.landings.run_one()
    assert rig.answers == [("accepted", first), ("accepted", second)]
    assert [row[0] for row in rows(postgres_url)] == [first, second]


def test_a_database_down_degrades_refuses_after_the_grace_time_and_recovers(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    rig = Rig(postgres_url, stores, store_grace=1.0, store_retry_max_delay=0.2)
    kept = rig.submit(b"kept")
    rig.run(0.01)
    assert rig.answers == [("accepted", kept)]
    postgres.stop("immediate")
    refused = rig.submit(b"refused")
    rig.run(0.5)
    assert rig.core.store_error == REFUSED
    assert rig.core.stats()["store"]["available"] is False
    assert rig.answers == [("accepted", kept)]  # held back, not acknowledged
    rig.run(0.6)
    assert rig.answers[1:] == [("refused", f"store unavailable: {REFUSED}")]
    with pytest.raises(StoreUnavailable):
        rig.core.submit("sha256", b"new")  # refused at once until it commits again
    postgres.start()
    rig.run(0.5)
    assert rig.core.store_error is None
    after = rig.submit(b"after")
    rig.run(0.01)
    assert rig.answers[-1] == ("accepted", after)
    assert [row[0] for row in rows(postgres_url)] == [kept, after]
    assert refused not in [row[0] for row in rows(postgres_url)]


def test_the_grace_time_ending_during_a_commit_refuses_only_if_it_fails(
    postgres: PostgresCluster, postgres_url: str, stores: list[PostgresStore]
) -> None:
    rig = Rig(postgres_url, stores, store_grace=1.0, store_retry_max_delay=0.05)
    postgres.stop("immediate")
    saved = rig.submit(b"saved")
    rig.run(0.01)  # the first commit fails: degraded, the grace time starts
    assert rig.core.store_error == REFUSED
    postgres.start()
    while rig.core._in_flight is None:
        rig.step(0.01)  # the retry begins, against a server that is up again
    rig.step(1.5)  # the grace time ends while that commit is in flight
    assert rig.answers == []
    rig.landings.run_one()
    assert rig.answers == [("accepted", saved)]
    assert rig.core.store_error is None

    postgres.stop("immediate")
    lost = rig.submit(b"lost")
    rig.run(0.01)
    while rig.core._in_flight is None:
        rig.step(0.01)
    rig.step(1.5)  # the grace time ends during a retry that fails too
    assert rig.answers == [("accepted", saved)]
    rig.landings.run_one()
    assert rig.answers[1:] == [("refused", f"store unavailable: {REFUSED}")]
    postgres.start()
    rig.run(1.0)
    assert rig.core.store_error is None
    assert [row[0] for row in rows(postgres_url)] == [saved]
    assert lost != saved


def test_stopping_with_a_commit_in_flight_waits_for_it_and_answers(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    rig = Rig(postgres_url, stores)
    first = rig.submit()
    rig.step()
    assert rig.core._in_flight is not None
    second = rig.submit()
    rig.core.stop()
    assert rig.answers == [("accepted", first), ("accepted", second)]
    rig.store.close()
    assert [row[0] for row in rows(postgres_url)] == [first, second]
    while not rig.landings.calls.empty():
        rig.landings.run_one()  # the taken-over landing changes nothing
    assert rig.answers == [("accepted", first), ("accepted", second)]
