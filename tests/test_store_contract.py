"""
What every durable store promises the core (store/interface.py), run on
each of them: SQLite, and PostgreSQL on a throwaway cluster.  A store is
"killed" here as its process would be: nothing more committed, its lock
released, and a new store opened on the same storage sees only what was
committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import Task
from taskmesh.errors import StoreUnavailable
from taskmesh.store import ITaskStore, State
from taskmesh.store.interface import LIST_SCAN_ROWS
from taskmesh.store.postgres import PostgresStore
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


def task(task_id: int, key: str | None = None, payload: bytes | None = None, kind: str = "sha256") -> Task:
    options = TaskOptions(priority=3, timeout=2.5, max_attempts=4, key=key) if key else DEFAULT_OPTIONS
    return Task(task_id, kind, payload or b"payload-%d" % task_id, options, 100.0 + task_id)


def killed(store: Any) -> None:
    """What the kernel (or the server: a lost session) does for a killed process: nothing more is written."""
    if isinstance(store, SqliteStore):
        store._closed.set()
        store._checkpointer.join()
        store._db.close()
        store._lock.release()
    else:
        store._jobs.put(None)  # the writer thread closes its session: the lock goes with it
        store._thread.join(10)
        if store._reader is not None:
            store._reader.close()


class Opener:
    """Opens stores on one storage (a file, a database) and closes them after the test."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.opened: list[Any] = []

    def __call__(self) -> Any:
        store = self._make()
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            try:
                if isinstance(store, SqliteStore):
                    if not store._closed.is_set():
                        store.close()
                elif store._thread.is_alive():
                    store.close()
            except Exception:
                pass


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param == "sqlite":
        path = str(tmp_path / "s.sqlite")
        opener = Opener(lambda: SqliteStore(path))
    else:
        url = request.getfixturevalue("postgres_url")
        opener = Opener(lambda: PostgresStore(url))
    try:
        yield opener
    finally:
        opener.close_all()


def test_provides_the_interface(open_store: Opener) -> None:
    verifyObject(ITaskStore, open_store())


def test_a_new_process_reads_unfinished_tasks_outcomes_and_keys(open_store: Opener) -> None:
    store = open_store()
    assert store.next_id() == 1
    for task_id in (1, 2, 3):
        store.add(task(task_id, key="k3" if task_id == 3 else None))
    store.record_attempts(3, attempts=1, losses=2)
    store.finish(1, State.SUCCEEDED, b"digest", 500.0)
    assert store.commit() is True
    store.add(task(4))  # never committed: as if the process died here
    killed(store)

    reopened = open_store()
    assert reopened.next_id() == 4
    unfinished = list(reopened.unfinished())
    assert [t.id for t in unfinished] == [2, 3]
    third = unfinished[1]
    assert (third.key, third.priority, third.timeout, third.max_attempts) == ("k3", 3, 2.5, 4)
    assert (third.attempts, third.losses, third.payload) == (1, 2, b"payload-3")
    assert third.retry_on_error is False and third.type == "sha256" and third.submitted_at == 103.0
    outcome = reopened.outcome(1)
    assert outcome is not None and (outcome.state, outcome.value, outcome.finished_at) == (
        State.SUCCEEDED,
        b"digest",
        500.0,
    )
    assert reopened.outcome(2) is None and reopened.outcome(99) is None
    assert reopened.task_for_key("k3") == 3
    assert reopened.task_for_key("k4") is None


def test_prune_forgets_old_outcomes_only(open_store: Opener) -> None:
    store = open_store()
    for task_id in (1, 2, 3):
        store.add(task(task_id))
    store.finish(1, State.SUCCEEDED, b"a", 10.0)
    store.finish(2, State.FAILED, b"b", 20.0)
    store.commit()
    assert store.prune(15.0, 100) == 1
    assert store.outcome(1) is None and store.outcome(2) is not None
    assert [t.id for t in store.unfinished()] == [3]


def test_prune_takes_at_most_its_limit_per_call(open_store: Opener) -> None:
    store = open_store()
    for task_id in range(1, 8):
        store.add(task(task_id))
        store.finish(task_id, State.SUCCEEDED, b"r", 10.0)
    store.commit()
    assert [store.prune(20.0, 3) for _ in range(4)] == [3, 3, 1, 0]


def test_ids_are_never_handed_out_twice_even_after_pruning(open_store: Opener) -> None:
    store = open_store()
    for task_id in (1, 2):
        store.add(task(task_id))
        store.finish(task_id, State.SUCCEEDED, b"r", 10.0)
    store.commit()
    assert store.prune(100.0, 100) == 2
    store.close()
    assert open_store().next_id() == 3


def test_discard_takes_back_only_the_uncommitted_writes_of_those_tasks(open_store: Opener) -> None:
    store = open_store()
    store.add(task(1))
    store.commit()
    store.add(task(2, key="two"))
    store.add(task(3))
    store.finish(2, State.SUCCEEDED, b"two", 1.0)
    store.finish(1, State.SUCCEEDED, b"one", 1.0)
    store.discard([2])
    store.commit()
    assert store.task_for_key("two") is None
    outcome = store.outcome(1)
    assert outcome is not None and outcome.value == b"one"
    assert store.outcome(2) is None
    assert [t.id for t in store.unfinished()] == [3]
    killed(store)
    assert open_store().next_id() == 4  # id 2 is never handed out again


def test_a_second_task_with_the_same_key_fails_the_commit_loudly(open_store: Opener) -> None:
    store = open_store()
    store.add(task(1, key="same"))
    store.commit()
    store.add(task(2, key="same"))
    with pytest.raises(StoreUnavailable):
        store.commit()
    store.discard([2])
    assert store.commit() is True
    assert store.task_for_key("same") == 1


def test_a_commit_is_idempotent_by_id(open_store: Opener) -> None:
    """A commit that reached the storage although it reported an error may be written again."""
    store = open_store()
    store.add(task(1))
    store.commit()
    store.add(task(1, payload=b"again"))
    store.finish(1, State.SUCCEEDED, b"r", 5.0)
    assert store.commit() is True
    assert [t.id for t in store.unfinished()] == []
    outcome = store.outcome(1)
    assert outcome is not None and outcome.value == b"r"


def test_the_task_list_filters_pages_and_shows_the_unfinished_as_queued(open_store: Opener) -> None:
    store = open_store()
    for task_id in range(1, 11):
        store.add(task(task_id, kind="even" if task_id % 2 == 0 else "odd"))
    for task_id in (2, 4, 5):
        store.finish(task_id, State.SUCCEEDED if task_id != 5 else State.FAILED, b"x", 300.0 + task_id)
    store.commit()
    rows, more = store.list_tasks(None, None, 4, None)
    assert [row.id for row in rows] == [10, 9, 8, 7] and more == 7
    rows, more = store.list_tasks(None, None, 4, more)
    assert [row.id for row in rows] == [6, 5, 4, 3] and more == 3
    rows, more = store.list_tasks(None, None, 4, more)
    assert [row.id for row in rows] == [2, 1] and more is None
    rows, _ = store.list_tasks(State.SUCCEEDED, None, 10, None)
    assert [(row.id, row.state, row.finished_at) for row in rows] == [
        (4, State.SUCCEEDED, 304.0),
        (2, State.SUCCEEDED, 302.0),
    ]
    rows, _ = store.list_tasks(State.QUEUED, "odd", 10, None)
    assert [(row.id, row.state, row.type) for row in rows] == [(i, State.QUEUED, "odd") for i in (9, 7, 3, 1)]
    rows, _ = store.list_tasks(State.FAILED, "even", 10, None)
    assert rows == []
    assert LIST_SCAN_ROWS > 10  # the bounded window is not what ended these pages


def test_the_task_list_gives_a_delayed_task_s_due_time(open_store: Opener) -> None:
    store = open_store()
    store.add(Task(1, "t", b"later", TaskOptions(at=5000.0), 100.0))
    store.add(task(2))
    store.commit()
    rows, _ = store.list_tasks(None, None, 10, None)
    assert [(row.id, row.due_at) for row in rows] == [(2, None), (1, 5000.0)]
