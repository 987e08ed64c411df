"""
The embedded default store: one SQLite file, nothing to install.

WAL mode, so readers never wait for the writer and a commit appends to the
log instead of rewriting pages.  ``synchronous=NORMAL`` (the default here)
makes a commit survive the scheduler process being killed at any moment,
which is the failure taskmesh promises to survive; ``FULL`` also survives
the machine losing power, at the price of an fsync per commit.

Writes are buffered in lists and written by ``commit()`` with one
``executemany`` per kind and one transaction: the core calls it once per
reactor turn, so a turn that accepted a thousand tasks costs one commit.

Checkpoints (copying the log back into the database file) do not happen
inside those commits, where SQLite would do them every thousand pages and
hold the reactor for milliseconds: a background thread with its own
connection checkpoints passively, without blocking the writer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from zope.interface import implementer

from taskmesh.store.interface import ITaskStore, Outcome, State, StoredTask

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id             INTEGER PRIMARY KEY,
    type           TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    submitted_at   REAL    NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    key            TEXT    UNIQUE,
    timeout        REAL,
    max_attempts   INTEGER NOT NULL,
    retry_on_error INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    losses         INTEGER NOT NULL DEFAULT 0,
    state          INTEGER NOT NULL DEFAULT 0,
    result         BLOB,
    finished_at    REAL
);
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (id) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
-- The next task id, kept apart from the tasks: pruning old rows must never
-- let an id be handed out twice.
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_INSERT = (
    "INSERT INTO tasks (id, type, payload, submitted_at, priority, key, timeout,"
    " max_attempts, retry_on_error, attempts, losses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FINISH = "UPDATE tasks SET state = ?, result = ?, finished_at = ? WHERE id = ?"
_ATTEMPTS = "UPDATE tasks SET attempts = ?, losses = ? WHERE id = ?"

SYNC_MODES = ("off", "normal", "full")
#: Seconds between two background checkpoints.
CHECKPOINT_INTERVAL = 0.5


@implementer(ITaskStore)
class SqliteStore:
    """Tasks and outcomes in one SQLite database file."""

    def __init__(self, path: str, synchronous: str = "normal") -> None:
        if synchronous not in SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNC_MODES)}")
        self.path = path
        # Transactions are ours to open (isolation_level=None: autocommit
        # unless we BEGIN), so a group of writes is exactly one transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL mode (got {mode})")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(SCHEMA)
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(synchronous,), name="taskmesh-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._adds: list[tuple[Any, ...]] = []
        self._finishes: list[tuple[Any, ...]] = []
        self._attempts: list[tuple[Any, ...]] = []
        (highest,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()
        row = self._db.execute("SELECT value FROM counters WHERE name = 'next_id'").fetchone()
        self._next_id: int = max(int(highest) + 1, int(row[0]) if row else 1)
        self._stored_next_id = self._next_id

    def next_id(self) -> int:
        return self._next_id

    def add(self, task: Any) -> None:
        options = task.options
        self._adds.append(
            (
                task.id,
                task.type,
                task.payload,
                task.submitted_at,
                options.priority,
                options.key,
                options.timeout,
                options.max_attempts,
                options.retry_on_error,
                task.attempts,
                task.losses,
            )
        )
        if task.id >= self._next_id:
            self._next_id = task.id + 1

    def record_attempts(self, task_id: int, attempts: int, losses: int) -> None:
        self._attempts.append((attempts, losses, task_id))

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        self._finishes.append((int(state), value, finished_at, task_id))

    def commit(self) -> None:
        if not (self._adds or self._finishes or self._attempts):
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if self._adds:
                db.executemany(_INSERT, self._adds)
            if self._attempts:
                db.executemany(_ATTEMPTS, self._attempts)
            if self._finishes:
                db.executemany(_FINISH, self._finishes)
            if self._next_id != self._stored_next_id:
                db.execute(
                    "INSERT OR REPLACE INTO counters (name, value) VALUES ('next_id', ?)",
                    (self._next_id,),
                )
            db.execute("COMMIT")
            self._stored_next_id = self._next_id
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._adds.clear()
            self._attempts.clear()
            self._finishes.clear()

    def unfinished(self) -> Iterator[StoredTask]:
        rows = self._db.execute(
            "SELECT id, type, payload, submitted_at, priority, key, timeout, max_attempts,"
            " retry_on_error, attempts, losses FROM tasks WHERE finished_at IS NULL ORDER BY id"
        )
        for row in rows:
            yield StoredTask(
                id=row[0],
                type=row[1],
                payload=bytes(row[2]),
                submitted_at=row[3],
                priority=row[4],
                key=row[5],
                timeout=row[6],
                max_attempts=row[7],
                retry_on_error=bool(row[8]),
                attempts=row[9],
                losses=row[10],
            )

    def outcome(self, task_id: int) -> Outcome | None:
        row = self._db.execute(
            "SELECT state, result, finished_at FROM tasks WHERE id = ? AND finished_at IS NOT NULL",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        return Outcome(State(row[0]), bytes(row[1] or b""), row[2])

    def task_for_key(self, key: str) -> int | None:
        row = self._db.execute("SELECT id FROM tasks WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def prune(self, finished_before: float) -> int:
        self.commit()
        cursor = self._db.execute("DELETE FROM tasks WHERE finished_at < ?", (finished_before,))
        return cursor.rowcount

    def _checkpoint_loop(self, synchronous: str) -> None:
        """In its own thread and connection: keep the log short without stalling commits."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        try:
            while not self._closed.wait(CHECKPOINT_INTERVAL):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    pass  # busy now: the next round will do
        finally:
            db.close()

    def close(self) -> None:
        self.commit()
        self._closed.set()
        self._checkpointer.join()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
