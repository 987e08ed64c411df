"""
The embedded default store: one SQLite file, nothing to install.

WAL mode, so readers never wait for the writer and a commit appends to the
log instead of rewriting pages.  What a commit survives depends on
``synchronous`` (``--sync``), and only ``full`` means "on disk":

- ``normal`` (the default): a commit is acknowledged once the OS has the
  write, without an fsync.  It survives the scheduler process being killed
  at any moment (the OS has the data), not the machine losing power: in WAL
  mode SQLite syncs only at checkpoints, so a power loss may lose the last
  commits, never the database.
- ``off``: the same for a killed process; SQLite never syncs, so a power
  loss may also corrupt the file.
- ``full``: an fsync per commit: a commit is on disk, and survives a power
  loss.

Writes are buffered in lists and written by ``commit()`` with one
``executemany`` per kind and one transaction: the core calls it once per
reactor turn, so a turn that accepted a thousand tasks costs one commit.  A
commit that fails keeps its buffers (SQLite rolled the transaction back), so
the next one writes everything again, in order; inserts are idempotent by
id, so a commit that did reach the disk although it reported an error is
not a problem either.

The store runs on the reactor thread and never waits there: the busy
timeout is 0, so a commit while another process holds the write lock fails
at once with ``StoreUnavailable`` ("database is locked") and the core
retries on a timer, instead of SQLite sleeping in its busy handler with
every connection frozen.  A dedicated store thread with pipelined group
commit was measured against this (bench/bench.py, SQLite store, 20 runs
each, interleaved, on the 2-core development machine): the hop to the
thread and back costs more than the commit itself, p50 round trip 0.455 ->
0.645 ms (+42 %), throughput 43,200 -> 40,900 tasks/s (-5 %).  A commit
without an fsync (``--sync normal``) is a write into the OS's cache and
takes tens of microseconds; with ``--sync full`` each commit waits for the
disk on the reactor thread.

A commit never holds the reactor for long: a backlog larger than
``COMMIT_ROWS`` rows or ``COMMIT_BYTES`` bytes (what piles up while the store
could not commit, or a burst from many clients in one turn) is committed a
slice per call, in order (all new tasks before any outcome), and ``commit()``
says whether it is done; the core acknowledges nothing until it is.

Checkpoints (copying the log back into the database file) do not happen
inside those commits, where SQLite would do them every thousand pages and
hold the reactor for milliseconds: a background thread with its own
connection checkpoints passively, without blocking the writer.

One scheduler per store: ``PATH.lock`` beside the database is held with
``flock`` for as long as the store is open, so a second scheduler refuses to
start and says which process holds it; the kernel releases the lock with
its process, so even ``kill -9`` leaves nothing stale behind.  The lock file
itself stays (removing it would let two processes lock two different files).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from taskmesh.errors import StoreUnavailable
from taskmesh.store.interface import (
    ITaskStore,
    Outcome,
    ScheduleRecord,
    State,
    StoredTask,
    TaskSummary,
)
from taskmesh.store.rows import (
    SCHEDULE_COLUMNS,
    TASK_COLUMNS,
    list_page,
    list_queries,
    schedule,
    schedule_row,
    stored,
    stored_with_state,
    task_row,
)
from taskmesh.store.schema import DUE_INDEX, SQLITE, migrations, schema

#: The tables and indexes (store/schema.py: written once for both SQL stores).
SCHEMA = schema(SQLITE)
#: What a store made before delayed tasks lacks: (table, column, statement),
#: added at open after a look at the catalog (so that an older database is
#: migrated in place, once, and a migrated one takes no lock for it).
MIGRATIONS = migrations(SQLITE)
_SAVE_SCHEDULE = (
    f"INSERT OR REPLACE INTO schedules ({SCHEDULE_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Idempotent by id: a commit retried after one that reached the disk while
# reporting an error (an fsync that failed late) must not fail for good on
# its own rows.  Another task with the same key still fails, loudly.
_INSERT = (
    f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
_FINISH = "UPDATE tasks SET state = ?, result = ?, finished_at = ? WHERE id = ?"
# Attempts are recorded for a task that has run (or is reopened by a retry): it
# is due by then, so its due time goes, and a restart queues it at once.
_ATTEMPTS = "UPDATE tasks SET attempts = ?, losses = ?, due_at = NULL WHERE id = ?"
_PRUNE = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < ? LIMIT ?)"

SYNC_MODES = ("off", "normal", "full")
#: Most rows, and about the most payload and result bytes, one commit writes
#: (about 12 ms of the reactor's time for 4096 rows on the development machine).
COMMIT_ROWS = 4096
COMMIT_BYTES = 8 * 1024 * 1024
#: Seconds between two background checkpoints.
CHECKPOINT_INTERVAL = 0.5
#: Seconds SQLite may wait for another process's lock while the store opens
#: (before the reactor runs); afterwards it never waits.
OPEN_BUSY_TIMEOUT = 5.0
#: Environment variable, for tests only: limit the scheduler's own SQLite
#: connection to this many pages (``PRAGMA max_page_count``), so that a test
#: meets a genuine SQLITE_FULL without filling a disk.
MAX_PAGES_VARIABLE = "TASKMESH_TESTING_SQLITE_MAX_PAGES"


def describe_error(error: sqlite3.Error) -> str:
    """SQLite's own words for what went wrong, and who to look at when it is a lock."""
    text = str(error) or type(error).__name__
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith("SQLITE_BUSY") or "database is locked" in text:
        return f"{text} (another process holds the store's write lock)"
    return text


def check_writable(path: str) -> None:
    """
    Refuse, before anything is created, a store this process could only
    read: a read-only file, or a folder where SQLite cannot create its
    ``-wal`` and ``-shm`` files.  ``os.access`` answers for this process as
    the kernel will (read-only mounts and immutable files included).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreUnavailable(f"the folder {folder} does not exist")
    if os.path.isdir(path):
        raise StoreUnavailable(f"{path} is a folder, not a file")
    for name in (path, path + "-wal", path + "-shm", path + ".lock"):
        if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
            raise StoreUnavailable(f"{name} is read-only")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreUnavailable(
            f"the folder {folder} is read-only (SQLite creates its -wal and -shm files beside the store)"
        )


def _describe_process(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = " ".join(f.read().replace(b"\0", b" ").decode("utf-8", "replace").split())
    except OSError:
        return f"pid {pid}"
    if len(command) > 80:
        command = command[:77] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


class StoreLock:
    """
    An exclusive ``flock`` on a lock file, held while this process uses the
    store.  The file holds the holder's pid, so that the next process can
    say who it is.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        existed = os.path.exists(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreUnavailable(f"cannot open its lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreUnavailable(f"cannot lock {path}: {e.strerror}") from None
            if holder == str(os.getpid()):
                raise StoreUnavailable("it is already open in this process") from None
            who = _describe_process(holder) if holder.isdigit() else "a process that has not written its pid"
            raise StoreUnavailable(
                f"it is in use by another scheduler: {who} holds {path}; "
                "stop that one first, or give this one another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd: int | None = fd
        #: Whether this process made the lock file (and so removes it if opening fails).
        self.created = not existed

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


@implementer(ITaskStore)
class SqliteStore:
    """Tasks and outcomes in one SQLite database file."""

    log = Logger()

    def __init__(self, path: str, synchronous: str = "normal", max_pages: int | None = None) -> None:
        """
        Open (or create) the store, or raise ``StoreUnavailable`` with one
        line saying why (read-only, in use by another scheduler, not a
        database); nothing is left behind when it fails.  ``max_pages``
        limits the database's size, for tests (see ``MAX_PAGES_VARIABLE``).
        """
        if synchronous not in SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNC_MODES)}")
        self.path = path
        check_writable(path)
        leftovers = [name for name in (path, path + "-wal", path + "-shm") if not os.path.exists(name)]
        self._lock = StoreLock(path + ".lock")
        try:
            self._db = self._open(path, synchronous, max_pages)
        except BaseException:
            for name in leftovers:
                if os.path.exists(name):
                    os.unlink(name)
            if self._lock.created:
                os.unlink(self._lock.path)
            self._lock.release()
            raise
        #: Files this open created, removed by ``discard_created`` if the scheduler never started.
        self._created = leftovers + ([self._lock.path] if self._lock.created else [])
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(synchronous,), name="taskmesh-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._adds: list[tuple[Any, ...]] = []
        self._finishes: list[tuple[Any, ...]] = []
        self._attempts: list[tuple[Any, ...]] = []
        #: Schedules to save (a record) or remove (None), by name: written in
        #: the commit's last slice, after the tasks of their ticks.
        self._schedule_writes: dict[str, ScheduleRecord | None] = {}
        #: Payload and result bytes buffered, to keep each commit short.
        self._bytes = 0
        (highest,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()
        row = self._db.execute("SELECT value FROM counters WHERE name = 'next_id'").fetchone()
        self._next_id: int = max(int(highest) + 1, int(row[0]) if row else 1)
        self._stored_next_id = self._next_id

    @staticmethod
    def _open(path: str, synchronous: str, max_pages: int | None) -> sqlite3.Connection:
        # Transactions are ours to open (isolation_level=None: autocommit
        # unless we BEGIN), so a group of writes is exactly one transaction.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_BUSY_TIMEOUT)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreUnavailable(f"SQLite refused WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.executescript(SCHEMA)
            for table, column, statement in MIGRATIONS:
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(statement)
            db.execute(DUE_INDEX)
            # SQLite opens a file it may not write read-only, silently; find
            # out now, not at the first commit.
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            if max_pages is not None:
                db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            # From here on, on the reactor thread: never wait for a lock.
            db.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as e:
            db.close()
            raise StoreUnavailable(describe_error(e)) from None
        except BaseException:
            db.close()
            raise
        return db

    def next_id(self) -> int:
        return self._next_id

    def add(self, task: Any) -> None:
        self._adds.append(task_row(task))
        self._bytes += len(task.payload)
        if task.id >= self._next_id:
            self._next_id = task.id + 1

    def record_attempts(self, task_id: int, attempts: int, losses: int) -> None:
        self._attempts.append((attempts, losses, task_id))

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        self._finishes.append((int(state), value, finished_at, task_id))
        self._bytes += len(value)

    def commit(self) -> bool:
        adds, attempts, finishes = self._adds, self._attempts, self._finishes
        schedules = self._schedule_writes
        if not (adds or finishes or attempts or schedules or self._next_id != self._stored_next_id):
            return True
        if len(adds) + len(attempts) + len(finishes) > COMMIT_ROWS or self._bytes > COMMIT_BYTES:
            return self._commit_slice()
        self._write(adds, attempts, finishes, schedules)
        adds.clear()
        attempts.clear()
        finishes.clear()
        schedules.clear()
        self._bytes = 0
        return True

    def _commit_slice(self) -> bool:
        """
        Commit the oldest part of a large backlog: new tasks first, then
        attempts, then outcomes, so that no outcome is ever durable before
        its task.  Returns whether the backlog is gone.
        """
        rows = 0
        size = 0
        taken = [0, 0, 0]
        for kind, (buffer, value_at) in enumerate(
            ((self._adds, 2), (self._attempts, -1), (self._finishes, 1))
        ):
            for row in buffer:
                if rows and (rows >= COMMIT_ROWS or size >= COMMIT_BYTES):
                    break
                rows += 1
                size += len(row[value_at]) if value_at >= 0 else 0
                taken[kind] += 1
            if taken[kind] < len(buffer):
                break  # what follows waits for the next slice
        adds, attempts, finishes = self._adds, self._attempts, self._finishes
        last = taken == [len(adds), len(attempts), len(finishes)]
        # Schedules go with the last slice: a tick's record is never durable before its task.
        schedules = self._schedule_writes if last else {}
        self._write(adds[: taken[0]], attempts[: taken[1]], finishes[: taken[2]], schedules)
        del adds[: taken[0]]
        del attempts[: taken[1]]
        del finishes[: taken[2]]
        if last:
            self._schedule_writes.clear()
        self._bytes -= size
        return not (adds or attempts or finishes or self._schedule_writes)

    def _write(
        self,
        adds: list[tuple[Any, ...]],
        attempts: list[tuple[Any, ...]],
        finishes: list[tuple[Any, ...]],
        schedules: dict[str, ScheduleRecord | None],
    ) -> None:
        """One transaction, or StoreUnavailable and nothing written."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if adds:
                    db.executemany(_INSERT, adds)
                if attempts:
                    db.executemany(_ATTEMPTS, attempts)
                if finishes:
                    db.executemany(_FINISH, finishes)
                for name, record in schedules.items():
                    if record is None:
                        db.execute("DELETE FROM schedules WHERE name = ?", (name,))
                    else:
                        db.execute(_SAVE_SCHEDULE, schedule_row(record, int))
                if self._next_id != self._stored_next_id:
                    db.execute(
                        "INSERT OR REPLACE INTO counters (name, value) VALUES ('next_id', ?)",
                        (self._next_id,),
                    )
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as e:
            # The buffers stay as they are: the next commit writes them all.
            raise StoreUnavailable(describe_error(e)) from e
        self._stored_next_id = self._next_id

    def _rollback(self) -> None:
        """
        Roll back what SQLite has not rolled back itself.  After SQLITE_FULL
        or an I/O error it already has, and a ROLLBACK would only fail with
        "no transaction is active", hiding the error that matters.
        """
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised is the one to report

    def discard(self, task_ids: Collection[int]) -> None:
        ids = set(task_ids)
        if not ids:
            return
        self._adds = [row for row in self._adds if row[0] not in ids]
        self._attempts = [row for row in self._attempts if row[2] not in ids]
        self._finishes = [row for row in self._finishes if row[3] not in ids]
        self._bytes = sum(len(row[2]) for row in self._adds) + sum(len(row[1]) for row in self._finishes)

    def stored_task(self, task_id: int) -> StoredTask | None:
        try:
            row = self._db.execute(
                f"SELECT {TASK_COLUMNS}, state, finished_at FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return None if row is None else stored_with_state(row)

    def reopen(self, task_id: int) -> None:
        # Through the same buffers as attempts and outcomes, so it lands in
        # order with them: a reopened task's next outcome comes after it.
        self._attempts.append((0, 0, task_id))
        self._finishes.append((int(State.QUEUED), b"", None, task_id))

    def pending(self) -> int:
        """Buffered writes not yet committed (for status and logs)."""
        return len(self._adds) + len(self._attempts) + len(self._finishes) + len(self._schedule_writes)

    def unfinished(self) -> Iterator[StoredTask]:
        rows = self._db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL AND due_at IS NULL ORDER BY id"
        )
        for row in rows:
            yield stored(row)

    def due_tasks(self, before: float, after: tuple[float, int], limit: int) -> list[StoredTask]:
        try:
            rows = self._db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL AND due_at IS NOT NULL"
                " AND due_at < ? AND (due_at, id) > (?, ?) ORDER BY due_at, id LIMIT ?",
                (before, after[0], after[1], limit),
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return [stored(row) for row in rows]

    def scheduled_task(self, task_id: int) -> StoredTask | None:
        try:
            row = self._db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks"
                " WHERE id = ? AND finished_at IS NULL AND due_at IS NOT NULL",
                (task_id,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return None if row is None else stored(row)

    def count_scheduled(self, after: float) -> int:
        try:
            (count,) = self._db.execute(
                "SELECT count(*) FROM tasks WHERE finished_at IS NULL AND due_at IS NOT NULL AND due_at > ?",
                (after,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return int(count)

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        self._schedule_writes[schedule.name] = schedule

    def remove_schedule(self, name: str) -> None:
        self._schedule_writes[name] = None

    def schedules(self) -> list[ScheduleRecord]:
        try:
            rows = self._db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name").fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return [schedule(row) for row in rows]

    def outcome(self, task_id: int) -> Outcome | None:
        try:
            row = self._db.execute(
                "SELECT state, result, finished_at FROM tasks WHERE id = ? AND finished_at IS NOT NULL",
                (task_id,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        if row is None:
            return None
        return Outcome(State(row[0]), bytes(row[1] or b""), row[2])

    def task_for_key(self, key: str) -> int | None:
        try:
            row = self._db.execute("SELECT id FROM tasks WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return None if row is None else int(row[0])

    def list_tasks(
        self, finished: State | None, task_type: str | None, limit: int, before_id: int | None
    ) -> tuple[list[TaskSummary], int | None]:
        scan, page = list_queries("?", finished, task_type, limit, before_id)
        try:
            scanned = self._db.execute(*scan).fetchone()
            rows = self._db.execute(*page).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(describe_error(e)) from e
        return list_page(rows, scanned, limit)

    def prune(self, finished_before: float, limit: int) -> int:
        try:
            cursor = self._db.execute(_PRUNE, (finished_before, limit))
        except sqlite3.Error as e:
            self._rollback()
            raise StoreUnavailable(describe_error(e)) from e
        return cursor.rowcount

    def _checkpoint_loop(self, synchronous: str) -> None:
        """
        In its own thread and connection: keep the log short without
        stalling commits.  A failed round (disk full: the database file
        cannot grow) is logged once, and the rounds go on.
        """
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        failing: str | None = None
        try:
            while not self._closed.wait(CHECKPOINT_INTERVAL):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as e:
                    reason = describe_error(e)
                    if reason != failing and "locked" not in reason:
                        self.log.warn("checkpoint of {path} failed: {reason}", path=self.path, reason=reason)
                    failing = reason
                else:
                    if failing is not None and "locked" not in failing:
                        self.log.info("checkpoints of {path} work again", path=self.path)
                    failing = None
        finally:
            db.close()

    def close(self) -> None:
        try:
            while not self.commit():
                pass
        except StoreUnavailable as e:
            self.log.error(
                "closing the store with {count} writes not committed: {reason}",
                count=self.pending(),
                reason=e.reason,
            )
        self._closed.set()
        self._checkpointer.join()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the log stays; the next open replays it
        self._db.close()
        self._lock.release()

    def discard_created(self) -> None:
        """
        After ``close``: remove the files this open created.  A scheduler that
        could not start (its port is taken) leaves no store behind.
        """
        for name in self._created:
            if os.path.exists(name):
                os.unlink(name)
