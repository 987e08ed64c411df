"""The SQLite store: WAL, grouped commits, and what a new process reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import Task
from taskmesh.store import ITaskStore, State
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


def task(task_id: int, key: str | None = None) -> Task:
    options = TaskOptions(priority=3, timeout=2.5, max_attempts=4, key=key) if key else DEFAULT_OPTIONS
    return Task(task_id, "sha256", b"payload-%d" % task_id, options, 100.0 + task_id)


def test_provides_the_interface_and_uses_wal(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    verifyObject(ITaskStore, store)
    db = sqlite3.connect(str(tmp_path / "s.sqlite"))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_nothing_is_visible_to_another_process_before_commit(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    store = SqliteStore(path)
    store.add(task(1))
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
    store.commit()
    assert other.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1


def test_a_new_process_reads_unfinished_tasks_outcomes_and_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    store = SqliteStore(path)
    for task_id in (1, 2, 3):
        store.add(task(task_id, key="k3" if task_id == 3 else None))
    store.record_attempts(3, attempts=1, losses=2)
    store.finish(1, State.SUCCEEDED, b"digest", 500.0)
    store.commit()
    store.add(task(4))  # never committed: as if the process died here

    reopened = SqliteStore(path)
    assert reopened.next_id() == 4
    unfinished = list(reopened.unfinished())
    assert [t.id for t in unfinished] == [2, 3]
    third = unfinished[1]
    assert (third.key, third.priority, third.timeout, third.max_attempts) == ("k3", 3, 2.5, 4)
    assert (third.attempts, third.losses, third.payload) == (1, 2, b"payload-3")
    outcome = reopened.outcome(1)
    assert outcome is not None and (outcome.state, outcome.value) == (State.SUCCEEDED, b"digest")
    assert reopened.outcome(2) is None
    assert reopened.task_for_key("k3") == 3


def test_prune_forgets_old_outcomes_only(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    for task_id in (1, 2, 3):
        store.add(task(task_id))
    store.finish(1, State.SUCCEEDED, b"a", 10.0)
    store.finish(2, State.FAILED, b"b", 20.0)
    store.commit()
    assert store.prune(15.0) == 1
    assert store.outcome(1) is None and store.outcome(2) is not None
    assert [t.id for t in store.unfinished()] == [3]


def test_bad_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteStore(str(tmp_path / "s.sqlite"), synchronous="sometimes")


def test_ids_are_never_handed_out_twice_even_after_pruning(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    store = SqliteStore(path)
    for task_id in (1, 2):
        store.add(task(task_id))
        store.finish(task_id, State.SUCCEEDED, b"r", 10.0)
    store.commit()
    assert store.prune(100.0) == 2
    assert SqliteStore(path).next_id() == 3
