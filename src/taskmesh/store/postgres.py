"""
The PostgreSQL store: tasks and outcomes in a database server, for a
scheduler whose store must outlive its machine (``--store postgresql://...``).

The tables are SQLite's, column for column, both written once in
store/schema.py, so that what is ported between the two stays a
translation.  A commit is durable when PostgreSQL says so: with the
server's defaults (``fsync``, ``synchronous_commit=on``) that is on the
server's disk.

Group commit off the reactor thread (``IBackgroundCommit``): the core hands
each group of writes to ``begin_commit``, which moves the buffers into a
batch for the store's one writer thread and returns at once; the thread
writes the batch in one transaction (one ``executemany`` per kind, pipelined
by psycopg) and reports back on the reactor thread, where the core answers
what waited for that batch.  While one batch is in flight the next one
gathers, so under load each commit carries everything that arrived during
the last one's round trips and fsync.  A batch that fails (the server is
down, restarting, or refuses) goes back in front of the buffers, in order,
and the core retries with backoff: the scheduler is degraded (``/health``
503, "store unavailable: ...") until a commit lands again, and the writer
reconnects by itself.  Inserts are idempotent by id and updates idempotent,
so a batch whose COMMIT reached the server although the connection broke
before the answer can be written again.  ``commit()`` is the same, waited
for (closing, tests).

Nothing waits without a bound: the writer's connections have a connect
timeout, a ``statement_timeout`` and a TCP user timeout (a server that
vanished without a reset fails the commit in seconds, not minutes); reads
(outcomes, keys, the dashboard's task list, pruning) run on the reactor
thread on a connection of their own with a short ``statement_timeout``, and
after a failed connection they fail at once, trying to reconnect at most
once per ``READ_RECONNECT_INTERVAL``.

One scheduler per store: the writer holds a session-level advisory lock,
``pg_try_advisory_lock(LOCK_KEY)``, in the store's database, and writes only
on the connection that holds it.  A second scheduler on the same database
refuses to start and says which session holds the lock (its
``application_name`` names the process and host).  The server releases the
lock with its session, so a killed scheduler leaves nothing stale.  When the
writer's connection is lost (the server restarted), the lock is taken again
before the next write; if another scheduler took it meanwhile, every commit
fails with that reason, so two schedulers never both write.  Leadership
between a scheduler and its standby builds on the same key
(``LOCK_KEY``, ``lock_holder()``).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from twisted.logger import Logger
from zope.interface import implementer

from taskmesh.errors import StoreUnavailable
from taskmesh.store.interface import (
    IBackgroundCommit,
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
from taskmesh.store.schema import DUE_INDEX, POSTGRESQL, migrations, schema

#: The tables and indexes (store/schema.py: written once for both SQL stores).
SCHEMA = schema(POSTGRESQL)
#: What a store made before delayed tasks lacks: (table, column, statement),
#: added at open after a look at the catalog (so that an older database is
#: migrated in place, once, and a migrated one takes no lock for it).
MIGRATIONS = migrations(POSTGRESQL)
# Create or replace, as SQLite's INSERT OR REPLACE: idempotent, so a batch
# written again after a lost answer to its COMMIT is no problem either.
_SAVE_SCHEDULE = (
    f"INSERT INTO schedules ({SCHEDULE_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, every = excluded.every,"
    " tz = excluded.tz, type = excluded.type, payload = excluded.payload,"
    " priority = excluded.priority, timeout = excluded.timeout,"
    " max_attempts = excluded.max_attempts, retry_on_error = excluded.retry_on_error,"
    " catch_up = excluded.catch_up, paused = excluded.paused, next_due = excluded.next_due,"
    " last_due = excluded.last_due, last_task = excluded.last_task, source = excluded.source"
)
_REMOVE_SCHEDULE = "DELETE FROM schedules WHERE name = %s"
# A reopened task runs at once (the core queues it without a due time), after a restart too.
_REOPEN_DUE = "UPDATE tasks SET due_at = NULL WHERE id = %s"

_INSERT = (
    f"INSERT INTO tasks ({TASK_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
)
_FINISH = "UPDATE tasks SET state = %s, result = %s, finished_at = %s WHERE id = %s"
_ATTEMPTS = "UPDATE tasks SET attempts = %s, losses = %s WHERE id = %s"
_NEXT_ID = (
    "INSERT INTO counters (name, value) VALUES ('next_id', %s)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
_PRUNE = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < %s LIMIT %s)"

#: The advisory lock (in the store's database) that makes one scheduler its writer: "taskmesh" in ASCII.
LOCK_KEY = 0x7461736B6D657368
#: Seconds to connect, and the longest a statement may run, for the writer (in its thread).
CONNECT_TIMEOUT = 5
WRITE_TIMEOUT = 10.0
#: Seconds a read may take on the reactor thread (outcomes, keys, the task list, pruning).
READ_TIMEOUT = 2.0
#: Seconds to connect for reads, and between two attempts after a failed one (reads fail at once between).
READ_CONNECT_TIMEOUT = 2
READ_RECONNECT_INTERVAL = 1.0
#: Seconds to keep trying for the store's lock before saying another scheduler holds it: a
#: scheduler that has just stopped is gone, but the server ends its session a moment later.
LOCK_WAIT = 2.0
LOCK_POLL = 0.05
#: Seconds ``commit()`` waits for the writer thread: a bound above its own timeouts.
COMMIT_WAIT = CONNECT_TIMEOUT + LOCK_WAIT + 2 * WRITE_TIMEOUT + 5


def is_postgres_url(store: str) -> bool:
    """Whether ``--store`` names a PostgreSQL database rather than an SQLite file."""
    return store.startswith(("postgresql://", "postgres://"))


def describe_error(error: BaseException) -> str:
    """
    The server's (or libpq's) own words, on one line: "connection refused",
    "terminating connection due to administrator command", a unique key.
    """
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or " ".join(str(error).split()) or type(error).__name__
    if "Connection refused" in text:
        return "connection refused (is PostgreSQL running there?)"
    if "server closed the connection unexpectedly" in text:
        return "the server closed the connection unexpectedly"
    # libpq repeats "connection to server at "host", port N failed:" before its reason.
    marker = text.rfind("failed: ")
    if text.startswith("connection") and marker >= 0:
        text = "cannot connect: " + text[marker + len("failed: ") :]
    # The server's message without its severity and details: "the database system is starting up".
    text = text.replace("FATAL: ", "").split(" DETAIL: ")[0].split(" HINT: ")[0]
    return text[:300]


def _options(url: str, timeout: float, connect_timeout: int, role: str) -> dict[str, Any]:
    """Connection settings: the URL's, and our bounds where the URL sets none."""
    try:
        given = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise StoreUnavailable(f"not a PostgreSQL URL: {describe_error(e)}") from None
    settings: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "application_name": f"taskmesh-scheduler {role} pid {os.getpid()} on {socket.gethostname()}"[:63],
        # A server that vanished without a reset: fail in seconds, not after TCP's minutes.
        "tcp_user_timeout": int(timeout * 1000),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    settings.update(given)
    options = settings.get("options", "")
    settings["options"] = f"{options} -c statement_timeout={int(timeout * 1000)}".strip()
    return settings


def where(url: str) -> str:
    """host:port/database of a URL, without user or password, for messages."""
    try:
        given = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable URL)"
    return f"{given.get('host', 'localhost')}:{given.get('port', 5432)}/{given.get('dbname', '')}"


@dataclass(eq=False)
class _Batch:
    """Writes handed to the writer thread, in their order, and how it went."""

    adds: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]
    finishes: list[tuple[Any, ...]]
    next_id: int | None
    keys: dict[str, int]
    #: Schedules to save (a record) or remove (None), by name: written after the tasks.
    schedules: dict[str, ScheduleRecord | None] = field(default_factory=dict)
    #: Ids of reopened tasks, whose due time goes (their state and attempts go with finishes and attempts).
    reopens: list[tuple[Any, ...]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


@implementer(ITaskStore, IBackgroundCommit)
class PostgresStore:
    """Tasks and outcomes in a PostgreSQL database, committed in a thread of the store's own."""

    log = Logger()

    def __init__(self, url: str, reactor: Any = None) -> None:
        """
        Connect, take the store's lock, create the tables if they are not
        there, or raise ``StoreUnavailable`` with one line saying why (the
        server cannot be reached, another scheduler holds the lock).
        ``reactor`` (its ``callFromThread``) is where commits land; the
        global reactor when not given.
        """
        self.url = url
        self.where = where(url)
        self._reactor = reactor
        self._write_settings = _options(url, WRITE_TIMEOUT, CONNECT_TIMEOUT, "writer")
        self._read_settings = _options(url, READ_TIMEOUT, READ_CONNECT_TIMEOUT, "reader")
        self._writer: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None
        self._read_error: str | None = None
        self._read_retry_at = 0.0
        try:
            writer = self._connect_writer()
        except StoreUnavailable as e:
            raise StoreUnavailable(f"{self.where}: {e.reason}") from None
        try:
            with writer.transaction():
                writer.execute(SCHEMA)
                self._migrate(writer)
            row = writer.execute(
                "SELECT GREATEST((SELECT COALESCE(MAX(id), 0) + 1 FROM tasks),"
                " (SELECT COALESCE(MAX(value), 1) FROM counters WHERE name = 'next_id'))"
            ).fetchone()
            writer.commit()
        except psycopg.Error as e:
            writer.close()
            raise StoreUnavailable(f"{self.where}: {describe_error(e)}") from None
        self._writer = writer
        self._next_id: int = int(row[0]) if row else 1
        self._stored_next_id = self._next_id
        self._adds: list[tuple[Any, ...]] = []
        self._finishes: list[tuple[Any, ...]] = []
        self._attempts: list[tuple[Any, ...]] = []
        #: Keys of tasks added but not known durable (buffered or in flight): task_for_key sees them.
        self._keys: dict[str, int] = {}
        #: Schedules to save (a record) or remove (None), by name: written in
        #: the batch's transaction after its tasks, so a tick's task and its
        #: record are durable together.
        self._schedule_writes: dict[str, ScheduleRecord | None] = {}
        self._reopens: list[tuple[Any, ...]] = []
        self._flight: _Batch | None = None
        self._jobs: queue.SimpleQueue[tuple[_Batch, Callable[[str | None], None] | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._write_loop, name="taskmesh-postgres", daemon=True)
        self._thread.start()
        self._closed = False

    # -- connections ---------------------------------------------------------

    def _connect_writer(self) -> psycopg.Connection[Any]:
        """A new writer connection holding the store's lock, or StoreUnavailable."""
        try:
            db = psycopg.connect(**self._write_settings)
        except psycopg.Error as e:
            raise StoreUnavailable(describe_error(e)) from None
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                row = db.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                db.commit()
                if (row and row[0]) or time.monotonic() >= deadline:
                    break
                time.sleep(LOCK_POLL)  # never on the reactor thread: at open, or in the writer's
            if not (row and row[0]):
                holder = self._describe_holder(db)
                raise StoreUnavailable(
                    f"it is in use by another scheduler: {holder} holds its lock; "
                    "stop that one first, or give this one another --store"
                )
        except psycopg.Error as e:
            db.close()
            raise StoreUnavailable(describe_error(e)) from None
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _describe_holder(db: psycopg.Connection[Any]) -> str:
        row = db.execute(
            "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND (l.classid::bigint << 32 | l.objid::bigint) = %s",
            (LOCK_KEY,),
        ).fetchone()
        db.rollback()
        if row is None:
            return "a session that has just gone"
        name, address, pid = row
        return f"{name or 'a session'} (server pid {pid}, from {address or 'a local socket'})"

    def lock_holder(self) -> str | None:
        """Who holds the store's lock, as one line (None: nobody), read on the reader connection."""
        db = self._read_connection()
        try:
            row = db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND"
                " (classid::bigint << 32 | objid::bigint) = %s AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                (LOCK_KEY,),
            ).fetchone()
            return self._describe_holder(db) if row and row[0] else None
        except psycopg.Error as e:
            raise self._read_failed(e) from None

    def _read_connection(self) -> psycopg.Connection[Any]:
        """The reader connection, (re)connected at most once per interval; StoreUnavailable between."""
        db = self._reader
        if db is not None and not db.closed and not db.broken:
            return db
        now = time.monotonic()
        if self._read_error is not None and now < self._read_retry_at:
            raise StoreUnavailable(self._read_error)
        try:
            db = psycopg.connect(**self._read_settings, autocommit=True)
        except psycopg.Error as e:
            self._read_error = describe_error(e)
            self._read_retry_at = now + READ_RECONNECT_INTERVAL
            raise StoreUnavailable(self._read_error) from None
        self._reader = db
        self._read_error = None
        return db

    def _read_failed(self, error: psycopg.Error) -> StoreUnavailable:
        reason = describe_error(error)
        db = self._reader
        if db is not None and (db.closed or db.broken):
            self._reader = None
            db.close()
            self._read_error = reason
            self._read_retry_at = time.monotonic() + READ_RECONNECT_INTERVAL
        return StoreUnavailable(reason)

    def _read(self, query: str, arguments: Sequence[object]) -> list[tuple[Any, ...]]:
        """
        One bounded read.  A reader session found dead (the server restarted
        since its last read) is replaced and the read tried once more at
        once, as the writer does with its batch: a database that is back
        must not cost a waiting client its answer.
        """
        for retry in (True, False):
            db = self._read_connection()
            try:
                rows: list[tuple[Any, ...]] = db.execute(query, arguments).fetchall()
                return rows
            except psycopg.Error as e:
                stale = retry and (db.closed or db.broken)
                error = self._read_failed(e)
                if not stale:
                    raise error from None
                self._read_retry_at = 0.0  # reconnect now, once; failing that, the usual interval
        raise AssertionError("unreachable")

    # -- writes (reactor thread: buffers only) --------------------------------

    def next_id(self) -> int:
        return self._next_id

    def add(self, task: Any) -> None:
        key = task.options.key
        self._adds.append(task_row(task))
        if key is not None:
            self._keys[key] = task.id
        if task.id >= self._next_id:
            self._next_id = task.id + 1

    def record_attempts(self, task_id: int, attempts: int, losses: int) -> None:
        self._attempts.append((attempts, losses, task_id))

    def finish(self, task_id: int, state: State, value: bytes, finished_at: float) -> None:
        self._finishes.append((int(state), value, finished_at, task_id))

    def pending(self) -> int:
        """Buffered writes not yet handed to a commit."""
        return len(self._adds) + len(self._attempts) + len(self._finishes) + len(self._schedule_writes)

    def discard(self, task_ids: Collection[int]) -> None:
        """Take back buffered writes (the core never discards while a commit is in flight)."""
        ids = set(task_ids)
        if not ids:
            return
        self._adds = [row for row in self._adds if row[0] not in ids]
        self._attempts = [row for row in self._attempts if row[2] not in ids]
        self._finishes = [row for row in self._finishes if row[3] not in ids]
        self._reopens = [row for row in self._reopens if row[0] not in ids]
        self._keys = {key: task_id for key, task_id in self._keys.items() if task_id not in ids}

    def _take(self) -> _Batch | None:
        """Everything buffered, as one batch (None: nothing to write)."""
        next_id = self._next_id if self._next_id != self._stored_next_id else None
        schedules = self._schedule_writes
        if not (self._adds or self._attempts or self._finishes or schedules or next_id is not None):
            return None
        batch = _Batch(
            self._adds, self._attempts, self._finishes, next_id, self._keys, schedules, reopens=self._reopens
        )
        self._adds, self._attempts, self._finishes = [], [], []
        self._keys = {}
        self._schedule_writes = {}
        self._reopens = []
        return batch

    def _settle(self, batch: _Batch) -> None:
        """A batch came back: durable, or its writes go back in front of the newer ones."""
        self._flight = None
        if batch.error is None:
            if batch.next_id is not None:
                self._stored_next_id = batch.next_id
            return
        self._adds[:0] = batch.adds
        self._attempts[:0] = batch.attempts
        self._finishes[:0] = batch.finishes
        self._reopens[:0] = batch.reopens
        batch.keys.update(self._keys)
        self._keys = batch.keys
        # A schedule written since the batch was taken is newer than the batch's.
        batch.schedules.update(self._schedule_writes)
        self._schedule_writes = batch.schedules

    # -- commits -------------------------------------------------------------

    def begin_commit(self, landed: Callable[[str | None], None]) -> bool:
        if self._flight is not None:
            raise RuntimeError("a commit is already in flight")
        batch = self._take()
        if batch is None:
            return False
        self._flight = batch
        self._jobs.put((batch, landed))
        return True

    def _landed(self, batch: _Batch, landed: Callable[[str | None], None]) -> None:
        """On the reactor thread: a background commit is back."""
        if self._flight is not batch:
            return  # a commit() took it over
        self._settle(batch)
        landed(batch.error)

    def commit(self) -> bool:
        """Write everything now and wait for it (closing, tests): True, or StoreUnavailable."""
        flight = self._flight
        if flight is not None:
            if not flight.done.wait(COMMIT_WAIT):
                raise StoreUnavailable(f"a commit has been in flight for more than {COMMIT_WAIT:g} s")
            self._settle(flight)
        batch = self._take()
        if batch is None:
            return True
        self._flight = batch
        self._jobs.put((batch, None))
        if not batch.done.wait(COMMIT_WAIT):
            raise StoreUnavailable(f"a commit has been in flight for more than {COMMIT_WAIT:g} s")
        self._settle(batch)
        if batch.error is not None:
            raise StoreUnavailable(batch.error)
        return True

    def _write_loop(self) -> None:
        """The writer thread: one batch at a time, one transaction each."""
        while True:
            job = self._jobs.get()
            if job is None:
                break
            batch, landed = job
            batch.error = self._write(batch)
            batch.done.set()
            if landed is not None:
                reactor = self._reactor
                if reactor is None:
                    from twisted.internet import reactor
                reactor.callFromThread(self._landed, batch, landed)
        if self._writer is not None:
            self._writer.close()  # releases the advisory lock
            self._writer = None

    def _write(self, batch: _Batch) -> str | None:
        """
        In the writer thread: one transaction; None, or why nothing of it is
        durable.  A connection found dead (the server restarted since the
        last commit) is replaced and the batch written once more at once.
        """
        reused = self._writer is not None
        reason = self._write_once(batch)
        if reason is not None and reused and self._writer is None:
            reason = self._write_once(batch)
        return reason

    def _write_once(self, batch: _Batch) -> str | None:
        db = self._writer
        try:
            if db is None or db.closed or db.broken:
                if db is not None:
                    db.close()
                self._writer = None
                db = self._writer = self._connect_writer()
                self.log.info("connected to the store {where} again", where=self.where)
            with db.transaction():
                cursor = db.cursor()
                if batch.adds:
                    cursor.executemany(_INSERT, batch.adds)
                if batch.attempts:
                    cursor.executemany(_ATTEMPTS, batch.attempts)
                if batch.finishes:
                    cursor.executemany(_FINISH, batch.finishes)
                # After the tasks: a tick's record is never durable without its task.
                saves = [schedule_row(r, bool) for r in batch.schedules.values() if r is not None]
                removes = [(name,) for name, r in batch.schedules.items() if r is None]
                if saves:
                    cursor.executemany(_SAVE_SCHEDULE, saves)
                if removes:
                    cursor.executemany(_REMOVE_SCHEDULE, removes)
                if batch.reopens:
                    cursor.executemany(_REOPEN_DUE, batch.reopens)
                if batch.next_id is not None:
                    cursor.execute(_NEXT_ID, (batch.next_id,))
        except StoreUnavailable as e:
            return e.reason
        except psycopg.Error as e:
            if db is not None and (db.closed or db.broken):
                db.close()
                self._writer = None
            return describe_error(e)
        except Exception as e:  # a value psycopg cannot adapt: a bug, but never a dead writer thread
            return f"{type(e).__name__}: {e}"
        return None

    # -- reads (reactor thread, bounded) ---------------------------------------

    def unfinished(self) -> Iterator[StoredTask]:
        """At start, before the reactor runs: streamed by a server-side cursor, in batches."""
        try:
            with psycopg.connect(**self._write_settings) as db:
                db.execute("SET statement_timeout = 0")  # a large backlog takes what it takes, once
                with db.cursor(name="taskmesh_unfinished") as cursor:
                    cursor.itersize = 2000
                    # Tasks with a due time are the core's to read a window at a time (due_tasks).
                    cursor.execute(
                        f"SELECT {TASK_COLUMNS} FROM tasks"
                        " WHERE finished_at IS NULL AND due_at IS NULL ORDER BY id"
                    )
                    for row in cursor:
                        yield stored(row)
        except psycopg.Error as e:
            raise StoreUnavailable(describe_error(e)) from None

    def outcome(self, task_id: int) -> Outcome | None:
        rows = self._read(
            "SELECT state, result, finished_at FROM tasks WHERE id = %s AND finished_at IS NOT NULL",
            (task_id,),
        )
        if not rows:
            return None
        state, result, finished_at = rows[0]
        return Outcome(State(state), bytes(result or b""), finished_at)

    def task_for_key(self, key: str) -> int | None:
        # A task added but not yet durable is this store's to know of (its commit may be in flight).
        if key in self._keys:
            return self._keys[key]
        flight = self._flight
        if flight is not None and key in flight.keys:
            return flight.keys[key]
        rows = self._read("SELECT id FROM tasks WHERE key = %s", (key,))
        return None if not rows else int(rows[0][0])

    def list_tasks(
        self, finished: State | None, task_type: str | None, limit: int, before_id: int | None
    ) -> tuple[list[TaskSummary], int | None]:
        scan, page = list_queries("%s", finished, task_type, limit, before_id)
        scanned = self._read(*scan)[0]
        return list_page(self._read(*page), scanned, limit)

    def prune(self, finished_before: float, limit: int) -> int:
        db = self._read_connection()
        try:
            cursor = db.execute(_PRUNE, (finished_before, limit))
        except psycopg.Error as e:
            raise self._read_failed(e) from None
        return cursor.rowcount

    def close(self) -> None:
        """Commit what can be (bounded), stop the writer thread (releasing the lock), close."""
        if self._closed:
            return
        self._closed = True
        try:
            self.commit()
        except StoreUnavailable as e:
            self.log.error(
                "closing the store {where} with {count} writes not committed: {reason}",
                where=self.where,
                count=self.pending(),
                reason=e.reason,
            )
        self._jobs.put(None)
        self._thread.join(COMMIT_WAIT)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- time: delayed tasks and schedules (issue 15), as store/sqlite.py ---------
    #
    # Reads run on the reactor thread on the reader connection (bounded by
    # READ_TIMEOUT, StoreUnavailable on failure) and see only what is
    # committed; schedule writes are buffered and go in the next batch's
    # transaction, after its tasks (see _take, _settle, _write_once).

    @staticmethod
    def _migrate(db: psycopg.Connection[Any]) -> None:
        """
        At open, in the schema's transaction (the store's lock is held, so no
        other scheduler migrates at the same time): add the columns an older
        database lacks, then their indexes.
        """
        for table, column, statement in MIGRATIONS:
            row = db.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = %s AND column_name = %s",
                (table, column),
            ).fetchone()
            if row is None:
                db.execute(statement)
        db.execute(DUE_INDEX)

    def due_tasks(self, before: float, after: tuple[float, int], limit: int) -> list[StoredTask]:
        rows = self._read(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL AND due_at IS NOT NULL"
            " AND due_at < %s AND (due_at, id) > (%s, %s) ORDER BY due_at, id LIMIT %s",
            (before, after[0], after[1], limit),
        )
        return [stored(row) for row in rows]

    def scheduled_task(self, task_id: int) -> StoredTask | None:
        rows = self._read(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s AND finished_at IS NULL AND due_at IS NOT NULL",
            (task_id,),
        )
        return stored(rows[0]) if rows else None

    def count_scheduled(self, after: float) -> int:
        rows = self._read(
            "SELECT count(*) FROM tasks WHERE finished_at IS NULL AND due_at IS NOT NULL AND due_at > %s",
            (after,),
        )
        return int(rows[0][0])

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        self._schedule_writes[schedule.name] = schedule

    def remove_schedule(self, name: str) -> None:
        self._schedule_writes[name] = None

    def schedules(self) -> list[ScheduleRecord]:
        # By code point, as SQLite's and the memory store's order, whatever the database's collation.
        rows = self._read(f'SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name COLLATE "C"', ())
        return [schedule(row) for row in rows]

    # -- operating: retry a finished task (the ops branch's stored_task, reopen) ---

    def stored_task(self, task_id: int) -> StoredTask | None:
        """A committed task as submitted, finished or not, with its state (one read by id)."""
        rows = self._read(f"SELECT {TASK_COLUMNS}, state, finished_at FROM tasks WHERE id = %s", (task_id,))
        return stored_with_state(rows[0]) if rows else None

    def reopen(self, task_id: int) -> None:
        """
        Unfinished again, with no outcome, 0 attempts and losses, and no due
        time (durable at the next commit).  Through the same buffers as
        attempts and outcomes, as SQLite's: in order with them, so a
        reopened task's next outcome is written after its reopening.
        """
        self._attempts.append((0, 0, task_id))
        self._finishes.append((int(State.QUEUED), None, None, task_id))
        self._reopens.append((task_id,))
