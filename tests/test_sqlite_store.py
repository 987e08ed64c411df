"""
The SQLite store: WAL, grouped commits, what a new process reads back, and
what it does when SQLite cannot write (a genuinely full database, another
connection holding the write lock, a read-only file, a second process).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from taskmesh.core.scheduler import Task
from taskmesh.errors import StoreUnavailable
from taskmesh.store import ITaskStore, State
from taskmesh.store.sqlite import COMMIT_BYTES, COMMIT_ROWS, SqliteStore
from taskmesh.testing import TIMEOUT, child_env, fill_store, free_store, read_only, write_lock
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


def killed(store: Any) -> None:
    """What the kernel does for a store whose process is killed: nothing committed, lock released."""
    store._closed.set()
    store._checkpointer.join()
    store._db.close()
    store._lock.release()


def rows(path: str) -> list[tuple[Any, ...]]:
    """What another process sees: (id, attempts, state, result) of every task."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, attempts, state, result FROM tasks ORDER BY id").fetchall()
    finally:
        db.close()


def task(task_id: int, key: str | None = None, payload: bytes | None = None) -> Task:
    options = TaskOptions(priority=3, timeout=2.5, max_attempts=4, key=key) if key else DEFAULT_OPTIONS
    return Task(task_id, "sha256", payload or b"payload-%d" % task_id, options, 100.0 + task_id)


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
    killed(store)

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
    assert store.prune(15.0, 100) == 1
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
    assert store.prune(100.0, 100) == 2
    store.close()
    assert SqliteStore(path).next_id() == 3


def test_prune_takes_at_most_its_limit_per_call(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    for task_id in range(1, 8):
        store.add(task(task_id))
        store.finish(task_id, State.SUCCEEDED, b"r", 10.0)
    store.commit()
    assert [store.prune(20.0, 3) for _ in range(4)] == [3, 3, 1, 0]


# -- faults ----------------------------------------------------------------------


def test_a_full_database_fails_the_commit_with_its_real_cause_and_keeps_every_write(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    pages = fill_store(path, rows=40)
    store = SqliteStore(str(path), max_pages=pages + 12)  # room for the schema and a little
    committed = 0
    with pytest.raises(StoreUnavailable) as caught:
        for task_id in range(1, 100):
            store.add(task(task_id, payload=b"p" * 3000))
            store.record_attempts(task_id, attempts=1, losses=0)
            store.finish(task_id, State.SUCCEEDED, b"result-%d" % task_id, 200.0)
            store.commit()
            committed = task_id
    # SQLite's own words, not "cannot rollback - no transaction is active".
    assert caught.value.reason == "database or disk is full"
    assert str(caught.value) == "store unavailable: database or disk is full"
    assert committed >= 1
    assert [row[0] for row in rows(str(path))] == list(range(1, committed + 1))
    # More writes while it is full: they wait with the failed ones.
    failed = committed + 1
    store.add(task(failed + 1, payload=b"q"))
    with pytest.raises(StoreUnavailable):
        store.commit()
    free_store(path)  # space comes back, as when files are deleted
    store.commit()
    found = rows(str(path))
    assert [row[0] for row in found] == [*range(1, failed + 1), failed + 1]
    assert found[failed - 1] == (failed, 1, int(State.SUCCEEDED), b"result-%d" % failed)
    assert found[-1] == (failed + 1, 0, int(State.QUEUED), None)
    killed(store)
    assert SqliteStore(str(path)).next_id() == failed + 2


def test_a_commit_while_another_connection_holds_the_write_lock_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(str(path))
    # Never a busy wait on the reactor thread: SQLite is told not to wait at all.
    assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    store.add(task(1))
    with write_lock(path):
        with pytest.raises(StoreUnavailable, match="database is locked .another process holds"):
            store.commit()
        assert store.task_for_key("nothing") is None  # reading still works (WAL)
        store.add(task(2))
        with pytest.raises(StoreUnavailable):
            store.commit()
    store.commit()
    assert [row[0] for row in rows(str(path))] == [1, 2]


def test_discard_takes_back_only_the_uncommitted_writes_of_those_tasks(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(str(path))
    store.add(task(1))
    store.commit()
    store.add(task(2))
    store.add(task(3))
    store.finish(2, State.SUCCEEDED, b"two", 1.0)
    store.finish(1, State.SUCCEEDED, b"one", 1.0)
    store.discard([2])
    store.commit()
    assert rows(str(path)) == [(1, 0, int(State.SUCCEEDED), b"one"), (3, 0, int(State.QUEUED), None)]
    killed(store)
    assert SqliteStore(str(path)).next_id() == 4  # id 2 is never handed out again


HOLDER = """
import sys
from taskmesh.store.sqlite import COMMIT_BYTES, COMMIT_ROWS, SqliteStore
store = SqliteStore(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
"""


def test_a_second_process_is_refused_with_the_holders_pid_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"open\n"
        with pytest.raises(StoreUnavailable) as caught:
            SqliteStore(str(path))
        assert f"in use by another scheduler: pid {holder.pid} (" in caught.value.reason
        assert "\n" not in caught.value.reason
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup at all
        holder.wait(TIMEOUT)
        SqliteStore(str(path)).close()  # the kernel released the lock: nothing stale
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(TIMEOUT)


def test_a_read_only_file_is_refused_at_open_and_nothing_is_created(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(str(path))
    store.add(task(1))
    store.close()
    before = sorted(os.listdir(tmp_path))
    with read_only(path) as done:
        if not done:
            pytest.skip("cannot make a file read-only here")
        with pytest.raises(StoreUnavailable, match="s.sqlite is read-only"):
            SqliteStore(str(path))
        assert sorted(os.listdir(tmp_path)) == before


def test_a_read_only_folder_is_refused_at_open_and_nothing_is_created(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder) as done:
        if not done:
            pytest.skip("cannot make a folder read-only here")
        with pytest.raises(StoreUnavailable, match="folder .* is read-only"):
            SqliteStore(str(folder / "s.sqlite"))
    assert os.listdir(folder) == []


def test_a_large_backlog_is_committed_a_slice_per_call_tasks_before_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(str(path))
    count = COMMIT_ROWS + 100
    for task_id in range(1, count + 1):
        store.add(task(task_id))
        store.finish(task_id, State.SUCCEEDED, b"r", 1.0)
    assert store.commit() is False
    found = rows(str(path))
    assert [row[0] for row in found] == list(range(1, COMMIT_ROWS + 1))
    assert all(state == int(State.QUEUED) for _, _, state, _ in found)  # no outcome before its task
    assert store.commit() is False  # the last 100 tasks, and the first outcomes
    assert store.commit() is True  # the rest of the outcomes
    found = rows(str(path))
    assert len(found) == count and all(state == int(State.SUCCEEDED) for _, _, state, _ in found)


def test_a_backlog_of_large_payloads_is_sliced_by_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(str(path))
    big = b"p" * (COMMIT_BYTES // 4)
    for task_id in range(1, 11):
        store.add(task(task_id, payload=big))
    durable = []
    while True:
        done = store.commit()
        durable.append(len(rows(str(path))))
        if done:
            break
    assert durable == [4, 8, 10]


def test_a_reopened_delayed_task_is_queued_at_once_after_a_restart(tmp_path: Path) -> None:
    # taskmesh retry of a delayed task cancelled before its time: the core
    # queues it at once, and so must a restart (as the PostgreSQL store does).
    path = str(tmp_path / "tasks.sqlite")
    store = SqliteStore(path)
    store.add(Task(1, "t", b"p", TaskOptions(at=5000.0), 100.0))
    store.finish(1, State.CANCELLED, b"no", 300.0)
    store.commit()
    store.reopen(1)
    store.commit()
    store.close()
    again = SqliteStore(path)
    try:
        assert [t.id for t in again.unfinished()] == [1]
        assert again.due_tasks(1e12, (-1.0, 0), 10) == [] and again.count_scheduled(0.0) == 0
    finally:
        again.close()
