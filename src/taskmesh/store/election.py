"""
The leader election of schedulers sharing one PostgreSQL store.

**The lock is the store's own.** The PostgreSQL store's writer connection
takes the session-level advisory lock ``pg_try_advisory_lock(LOCK_KEY)``
and writes only on that connection (``taskmesh.store.postgres``).  Electing
a leader is opening the store: the scheduler that gets the lock leads, the
others are standbys.  So the fence is the session itself: a leader can
write only while its writer's session holds the lock, and the lock is free
only once that session has ended, after its last commit, so no commit of a
deposed leader can land after the new leader took the lock and read the
store.  ``LeaderStore`` adds one rule for leaders: its writer never takes
the lock again on a new connection (the plain store reconnects), because a
leader that lost its session may have lost its leadership in between, and
its view of the tasks with it.

**Why a session lock, not a lease row.** The lock lives exactly as long as
its session: when the leader's process dies (``kill -9`` included) the
kernel closes its socket, the server ends the session and frees the lock at
once, so a standby polling every second takes over in about a second, with
no lease to wait out and no clocks to compare across machines.  A lease
would make every failover wait for its expiry and every leader write a row
every second.  A leader's host that vanishes without a FIN (power loss,
partition) is noticed by the server's TCP user timeout of the writer's
session (``taskmesh.store.postgres``), and by the leader itself, which stops
serving when the database has not confirmed it within the lease
(``taskmesh.core.leadership``).

**The leader table** ``taskmesh_leader`` (one row) publishes the leader's
advertised address, written by each new leader once it holds the lock:
standbys read it to point peers to the leader.

Every call runs in one thread of its own (psycopg blocks), bounded by a
connect timeout and ``statement_timeout``: the reactor never waits on it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from taskmesh.errors import StoreUnavailable
from taskmesh.store.postgres import LOCK_KEY, PostgresStore, describe_error, where

#: Seconds any election statement may take, and a connection attempt.
STATEMENT_SECONDS = 2

CREATE_SQL = """
CREATE TABLE IF NOT EXISTS taskmesh_leader (
    id integer PRIMARY KEY CHECK (id = 1),
    address text NOT NULL,
    holder text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
INSERT INTO taskmesh_leader (id, address, holder) VALUES (1, '', '') ON CONFLICT DO NOTHING
"""
_SESSION_SQL = (
    f"SET statement_timeout = '{STATEMENT_SECONDS}s'; "
    f"SET lock_timeout = '{STATEMENT_SECONDS}s'; "
    "SET application_name = 'taskmesh-election'"
)
#: The backend holding the store's lock, if any (in this database).
_HOLDER_SQL = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND (classid::bigint << 32 | objid::bigint) = %s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class LeaderStore(PostgresStore):
    """
    The PostgreSQL store as a leader holds it: its writer's session is the
    leadership, so once that session is gone it never takes the lock again
    (every later commit fails, and the election steps down).
    """

    def __init__(self, url: str, reactor: Any = None) -> None:
        #: The server pid of the writer's session: the one that must hold the lock.
        self.writer_pid: int | None = None
        super().__init__(url, reactor)

    def _connect_writer(self) -> psycopg.Connection[Any]:
        if self.writer_pid is not None:
            raise StoreUnavailable(
                "the store's lock session ended: this scheduler no longer leads, and writes nothing more"
            )
        db = super()._connect_writer()
        self.writer_pid = db.info.backend_pid
        return db


class PostgresElection:
    """``IElection`` over the store's lock, with one dedicated connection (autocommit) to ask."""

    def __init__(self, url: str, advertise: str, reactor: Any = None) -> None:
        self.url = url
        self.where = where(url)
        self.advertise = advertise
        #: The store, opened and locked, once we lead.
        self.store: LeaderStore | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._connection: Any = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="taskmesh-election")
        self._reactor = reactor

    def start(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool.start()

    def stop(self) -> None:
        """Close our connection and the thread (the store, if we lead, is closed by its owner)."""
        if self._pool.started:
            self._pool.callInThread(self._close)
            self._pool.stop()

    def _call(self, function: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, function)

    # -- in the election thread ---------------------------------------------

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._close()
            try:
                connection = psycopg.connect(self.url, autocommit=True, connect_timeout=STATEMENT_SECONDS)
                connection.execute(_SESSION_SQL)
                connection.execute(CREATE_SQL)
            except psycopg.Error as e:
                raise StoreUnavailable(f"{self.where}: {describe_error(e)}") from None
            self._connection = connection
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass

    def _leader_address(self) -> str:
        row = self._connection.execute("SELECT address FROM taskmesh_leader WHERE id = 1").fetchone()
        return "" if row is None else str(row[0])

    def _try_lead(self) -> str | None:
        try:
            connection = self._connect()
            if connection.execute(_HOLDER_SQL, (LOCK_KEY,)).fetchone() is not None:
                return self._leader_address()  # someone leads: no need to try
        except psycopg.Error as e:
            self._close()
            raise StoreUnavailable(f"{self.where}: {describe_error(e)}") from None
        try:
            store = LeaderStore(self.url, self._reactor)
        except StoreUnavailable:
            try:
                if connection.execute(_HOLDER_SQL, (LOCK_KEY,)).fetchone() is not None:
                    return self._leader_address()  # another standby was quicker
            except psycopg.Error:
                self._close()
            raise
        try:
            connection.execute(
                "UPDATE taskmesh_leader SET address = %s, holder = %s, since = now() WHERE id = 1",
                (self.advertise, self.holder),
            )
        except psycopg.Error as e:
            store.close()
            self._close()
            raise StoreUnavailable(f"{self.where}: cannot publish our address: {describe_error(e)}") from None
        self.store = store
        return None

    def _confirm(self) -> None:
        store = self.store
        if store is None or store.writer_pid is None:
            raise StoreUnavailable("we do not hold the store")
        try:
            rows = self._connect().execute(_HOLDER_SQL, (LOCK_KEY,)).fetchall()
        except (psycopg.Error, StoreUnavailable) as e:
            self._close()
            raise StoreUnavailable(f"cannot ask the database: {e}") from None
        holders = [row[0] for row in rows]
        if store.writer_pid not in holders:
            other = f"server pid {holders[0]}" if holders else "nobody"
            raise StoreUnavailable(
                f"the store's lock is no longer held by our writer's session (server pid "
                f"{store.writer_pid}); it is held by {other}"
            )

    # -- IElection ------------------------------------------------------------

    def try_lead(self) -> Deferred[str | None]:
        return self._call(self._try_lead)

    def confirm(self) -> Deferred[None]:
        return self._call(self._confirm)
