"""
The store contract for time, the same tests for the memory, SQLite and
PostgreSQL stores (a throwaway cluster): delayed tasks (kept apart from
``unfinished``, paged by due time, found by id, counted), schedules (saved,
replaced, removed, committed with the tasks before them, also when a
PostgreSQL commit in the store's thread fails and is retried), and an
SQLite file or a PostgreSQL database made before delayed tasks is migrated
in place.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import Task
from taskmesh.errors import StoreUnavailable
from taskmesh.store import ITaskStore, MemoryStore, State
from taskmesh.store.interface import ScheduleRecord
from taskmesh.store.postgres import PostgresStore
from taskmesh.store.sqlite import SqliteStore
from taskmesh.testing import TIMEOUT
from taskmesh.testing_postgres import PostgresCluster
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ITaskStore]:
    made: ITaskStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(str(tmp_path / "s.db"))
    else:
        made = PostgresStore(request.getfixturevalue("postgres_url"))
    yield made
    made.close()


def task(task_id: int, options: TaskOptions = DEFAULT_OPTIONS, submitted_at: float = 100.0) -> Task:
    return Task(task_id, "t", b"p%d" % task_id, options, submitted_at)


def record(name: str, **fields: object) -> ScheduleRecord:
    values: dict[str, object] = dict(
        name=name,
        cron="*/5 * * * *",
        every=None,
        tz="Europe/Paris",
        task_type="t",
        payload=b"x",
        priority=1,
        timeout=2.5,
        max_attempts=3,
        retry_on_error=True,
        catch_up=False,
        paused=False,
        next_due=1000.0,
        last_due=None,
        last_task=None,
        source="api",
    )
    values.update(fields)
    return ScheduleRecord(**values)  # type: ignore[arg-type]


def test_the_store_provides_the_interface(store: ITaskStore) -> None:
    assert verifyObject(ITaskStore, store)


def test_delayed_tasks_are_paged_by_due_time_and_kept_out_of_unfinished(store: ITaskStore) -> None:
    store.add(task(1))
    store.add(task(2, TaskOptions(delay=50.0)))  # due 150
    store.add(task(3, TaskOptions(at=120.0)))
    store.add(task(4, TaskOptions(at=120.0, key="k")))
    store.add(task(5, TaskOptions(at=900.0)))
    store.commit()
    assert [t.id for t in store.unfinished()] in ([1], [])  # the memory store keeps no plain tasks
    first = store.due_tasks(200.0, (-1.0, 0), 2)
    assert [(t.id, t.due_at) for t in first] == [(3, 120.0), (4, 120.0)]
    assert first[1].key == "k" and first[1].payload == b"p4"
    rest = store.due_tasks(200.0, (120.0, 4), 10)
    assert [(t.id, t.due_at) for t in rest] == [(2, 150.0)]
    assert store.due_tasks(200.0, (150.0, 2), 10) == []
    assert store.count_scheduled(130.0) == 2
    found = store.scheduled_task(5)
    assert found is not None and found.due_at == 900.0
    assert store.scheduled_task(1) is None and store.scheduled_task(99) is None
    store.finish(5, State.CANCELLED, b"no", 200.0)
    store.commit()
    assert store.scheduled_task(5) is None
    assert store.count_scheduled(130.0) == 1
    assert store.due_tasks(1000.0, (150.0, 2), 10) == []


def test_a_stored_task_comes_back_as_submitted_with_its_due_time_and_state(store: ITaskStore) -> None:
    # Both SQL stores read it through one row layout (store/rows.py); the memory store keeps none.
    store.add(task(1, TaskOptions(at=120.0, key="k", priority=2, retry_on_error=True)))
    store.add(task(2))
    store.commit()
    store.finish(2, State.FAILED, b"boom", 200.0)
    store.commit()
    if isinstance(store, MemoryStore):
        assert store.stored_task(1) is None
        return
    first = store.stored_task(1)
    assert first is not None
    assert (first.id, first.payload, first.key, first.priority) == (1, b"p1", "k", 2)
    assert first.retry_on_error is True
    assert (first.due_at, first.state) == (120.0, State.QUEUED)
    second = store.stored_task(2)
    assert second is not None and (second.due_at, second.state) == (None, State.FAILED)
    assert store.stored_task(99) is None


def test_schedules_are_saved_replaced_and_removed(store: ITaskStore) -> None:
    store.save_schedule(record("b"))
    store.save_schedule(record("a", cron=None, every=10.0, tz="UTC"))
    store.commit()
    assert store.schedules() == [record("a", cron=None, every=10.0, tz="UTC"), record("b")]
    store.save_schedule(record("b", last_due=995.0, last_task=7, next_due=1300.0, paused=True))
    store.remove_schedule("a")
    store.commit()
    assert store.schedules() == [record("b", last_due=995.0, last_task=7, next_due=1300.0, paused=True)]


def test_sqlite_commits_a_tick_s_task_and_its_record_together(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    store.add(task(1, TaskOptions(at=100.0, key="schedule:s@100000")))
    store.save_schedule(record("s", last_due=100.0, last_task=1))
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM schedules").fetchone() == (0,)
    assert store.commit()
    assert other.execute("SELECT count(*) FROM schedules").fetchone() == (1,)
    assert other.execute("SELECT id, due_at FROM tasks").fetchall() == [(1, 100.0)]
    other.close()
    store.close()


def test_an_sqlite_file_from_before_delayed_tasks_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY, type TEXT NOT NULL, payload BLOB NOT NULL,
            submitted_at REAL NOT NULL, priority INTEGER NOT NULL DEFAULT 0, key TEXT UNIQUE,
            timeout REAL, max_attempts INTEGER NOT NULL, retry_on_error INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0, losses INTEGER NOT NULL DEFAULT 0,
            state INTEGER NOT NULL DEFAULT 0, result BLOB, finished_at REAL
        );
        INSERT INTO tasks (id, type, payload, submitted_at, max_attempts) VALUES (7, 't', x'00', 1.0, 0);
        """
    )
    db.close()
    store = SqliteStore(str(path))
    assert [t.id for t in store.unfinished()] == [7]
    store.add(task(8, TaskOptions(delay=5.0)))
    store.commit()
    assert [t.id for t in store.due_tasks(1000.0, (-1.0, 0), 10)] == [8]
    store.close()
    store = SqliteStore(str(path))  # opening again migrates nothing twice
    assert store.count_scheduled(0.0) == 1
    store.close()


# -- PostgreSQL: the same promises through its writer thread ---------------------------


class Landings:
    """The reactor's callFromThread, for a test: a background commit lands when the test says."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls.put((function, args))

    def run_one(self) -> None:
        function, args = self.calls.get(timeout=TIMEOUT)
        function(*args)


def pg_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """What another client of the database sees (committed rows only)."""
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(query).fetchall()


def test_postgresql_commits_a_tick_s_task_and_its_record_together(postgres_url: str) -> None:
    landings = Landings()
    store = PostgresStore(postgres_url, landings)
    try:
        store.add(task(1, TaskOptions(at=100.0, key="schedule:s@100000")))
        store.save_schedule(record("s", last_due=100.0, last_task=1))
        assert store.pending() == 2
        landed: list[str | None] = []
        assert store.begin_commit(landed.append)
        store.save_schedule(record("s", last_due=100.0, last_task=1, next_due=2000.0))  # the next batch's
        landings.run_one()
        assert landed == [None]
        assert pg_rows(postgres_url, "SELECT id, due_at FROM tasks") == [(1, 100.0)]
        assert pg_rows(postgres_url, "SELECT name, last_task, next_due FROM schedules") == [("s", 1, 1000.0)]
        assert store.pending() == 1
        assert store.commit()
        assert pg_rows(postgres_url, "SELECT next_due FROM schedules") == [(2000.0,)]
    finally:
        store.close()


def test_a_failed_postgresql_commit_keeps_its_schedules_and_newer_ones_win(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    landings = Landings()
    store = PostgresStore(postgres_url, landings)
    try:
        store.save_schedule(record("gone"))
        store.commit()
        postgres.stop("immediate")
        store.add(task(1, TaskOptions(at=100.0, key="schedule:s@100000")))
        store.save_schedule(record("s", last_due=100.0, last_task=1))
        store.save_schedule(record("t"))
        store.remove_schedule("gone")
        landed: list[str | None] = []
        assert store.begin_commit(landed.append)
        store.save_schedule(record("t", paused=True))  # written while the failing batch is in flight
        landings.run_one()
        assert landed and landed[0] is not None  # the reason: the server is down
        assert store.pending() == 4  # the task, and s, t and gone: every write kept
        with pytest.raises(StoreUnavailable):
            store.schedules()
        postgres.start()
        assert store.commit()
        assert store.schedules() == [record("s", last_due=100.0, last_task=1), record("t", paused=True)]
        assert [t.id for t in store.due_tasks(1000.0, (-1.0, 0), 10)] == [1]
    finally:
        store.close()


def test_a_postgresql_database_from_before_delayed_tasks_is_migrated(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        # The tables as the PostgreSQL store made them before delayed tasks and schedules.
        db.execute(
            """
            CREATE TABLE tasks (
                id bigint PRIMARY KEY, type text NOT NULL, payload bytea NOT NULL,
                submitted_at double precision NOT NULL, priority integer NOT NULL DEFAULT 0,
                key text UNIQUE, timeout double precision, max_attempts integer NOT NULL,
                retry_on_error boolean NOT NULL DEFAULT false, attempts integer NOT NULL DEFAULT 0,
                losses integer NOT NULL DEFAULT 0, state smallint NOT NULL DEFAULT 0,
                result bytea, finished_at double precision
            );
            CREATE INDEX tasks_unfinished ON tasks (id) WHERE finished_at IS NULL;
            CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
            CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
            INSERT INTO tasks (id, type, payload, submitted_at, max_attempts)
                VALUES (7, 't', '\\x00', 1.0, 0);
            """
        )
    store = PostgresStore(postgres_url)
    assert [(t.id, t.due_at) for t in store.unfinished()] == [(7, None)]
    assert store.next_id() == 8
    store.add(task(8, TaskOptions(delay=5.0)))
    store.save_schedule(record("s"))
    store.commit()
    assert [t.id for t in store.due_tasks(1000.0, (-1.0, 0), 10)] == [8]
    store.close()
    store = PostgresStore(postgres_url)  # opening again migrates nothing twice
    assert store.count_scheduled(0.0) == 1
    assert store.schedules() == [record("s")]
    assert [t.id for t in store.unfinished()] == [7]
    store.close()
    indexes = pg_rows(postgres_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")
    assert "tasks_due" in {name for (name,) in indexes}
