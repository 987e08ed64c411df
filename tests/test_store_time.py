"""
The store contract for time, the same tests for the memory and SQLite
stores: delayed tasks (kept apart from ``unfinished``, paged by due time,
found by id, counted), schedules (saved, replaced, removed, committed with
the tasks before them), and an SQLite file made before delayed tasks is
migrated in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import Task
from taskmesh.store import ITaskStore, MemoryStore, State
from taskmesh.store.interface import ScheduleRecord
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ITaskStore]:
    made: ITaskStore = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "s.db"))
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
