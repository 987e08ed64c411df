"""
The leader election of schedulers sharing one PostgreSQL store.

**Why a session-level advisory lock, not a lease row.** ``pg_try_advisory_lock``
on a connection of its own is held exactly as long as that session lives:
when the leader's process dies (``kill -9`` included) the kernel closes its
socket, the server ends the session and the lock is free at once, so a
standby polling every second takes over within about a second, with no
lease to wait out and no clocks to compare across machines.  A lease row
would make every failover wait for the lease to expire and every leader
write its row every second.  For a leader's *host* that vanishes without a
FIN (power loss, partition), the lock's session is given TCP keepalives and
a user timeout of a few seconds (server side), so the server frees the lock
within ``DEAD_PEER_SECONDS`` then too.

**The leader table** ``taskmesh_leader`` (one row) publishes the leader's
advertised address for standbys to hand out, and its **term**: the leader
bumps it once it holds the lock.  The term is the fence that makes two
leaders writing impossible even in the window where a deposed leader has
not noticed yet: every commit of the store begins with ``FENCE_SQL``
(reading the term ``FOR SHARE``) and is refused if the term is no longer
ours; and a new leader's ``UPDATE`` of the term waits for any such commit
in flight to finish, so the new leader recovers the store only after the
old leader's last commit, and no commit of the old one lands after it.

Every call runs in one thread of its own (psycopg blocks), bounded by
``connect_timeout`` and ``statement_timeout``: the reactor never waits on it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from taskmesh.errors import StoreUnavailable

#: The advisory lock's key (ASCII "tmsh"): one leader per database.
LOCK_KEY = 0x746D7368
#: Seconds within which the server notices a leader whose host vanished (keepalives, user timeout).
DEAD_PEER_SECONDS = 5
#: Seconds any election statement may take, and a connection attempt.
STATEMENT_SECONDS = 2

CREATE_SQL = """
CREATE TABLE IF NOT EXISTS taskmesh_leader (
    id integer PRIMARY KEY CHECK (id = 1),
    term bigint NOT NULL,
    address text NOT NULL,
    holder text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
INSERT INTO taskmesh_leader (id, term, address, holder) VALUES (1, 0, '', '') ON CONFLICT DO NOTHING;
"""
#: What every commit of a fenced store runs first, in its transaction: the current term, held.
FENCE_SQL = "SELECT term FROM taskmesh_leader WHERE id = 1 FOR SHARE"

_SESSION_SQL = (
    f"SET statement_timeout = '{STATEMENT_SECONDS}s'; "
    f"SET lock_timeout = '{STATEMENT_SECONDS}s'; "
    "SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; "
    f"SET tcp_user_timeout = {DEAD_PEER_SECONDS * 1000}; "
    "SET application_name = 'taskmesh-election'"
)
_CONFIRM_SQL = (
    "SELECT (SELECT term FROM taskmesh_leader WHERE id = 1), EXISTS ("
    " SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND classid = 0 AND objid = %s AND objsubid = 1 AND granted)"
)


class Fenced(StoreUnavailable):
    """A commit found another scheduler's term: this one no longer leads, and writes nothing more."""


def check_term(cursor: Any, term: int) -> None:
    """In a commit's transaction: raise Fenced unless ``term`` is still the current one."""
    cursor.execute(FENCE_SQL)
    row = cursor.fetchone()
    current = None if row is None else int(row[0])
    if current != term:
        raise Fenced(f"another scheduler leads now (term {current}, ours {term}): not committing")


class PostgresElection:
    """``IElection`` on one dedicated psycopg connection (autocommit: the lock is the session's)."""

    def __init__(self, url: str, advertise: str) -> None:
        self.url = url
        self.advertise = advertise
        #: Our term once we lead (the fence of every commit), else None.
        self.term: int | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._connection: Any = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="taskmesh-election")
        self._reactor: Any = None

    def start(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool.start()

    def stop(self) -> None:
        """Close the lock's session (which frees the lock) and the thread."""
        if self._pool.started:
            self._pool.callInThread(self._close)
            self._pool.stop()

    def _call(self, function: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, function)

    # -- in the election thread ---------------------------------------------

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            import psycopg

            try:
                connection = psycopg.connect(self.url, autocommit=True, connect_timeout=STATEMENT_SECONDS)
            except psycopg.Error as e:
                raise StoreUnavailable(f"cannot reach the database: {e}") from None
            connection.execute(_SESSION_SQL)
            connection.execute(CREATE_SQL)
            self._connection = connection
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass

    def _try_lead(self) -> str | None:
        import psycopg

        try:
            connection = self._connect()
            (got,) = connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if not got:
                row = connection.execute("SELECT address FROM taskmesh_leader WHERE id = 1").fetchone()
                return "" if row is None else str(row[0])
            try:
                # Waits for a deposed leader's commit in flight (it holds the row FOR SHARE).
                (term,) = connection.execute(
                    "UPDATE taskmesh_leader SET term = term + 1, address = %s, holder = %s, since = now()"
                    " WHERE id = 1 RETURNING term",
                    (self.advertise, self.holder),
                ).fetchone()
            except psycopg.Error:
                connection.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                raise
        except psycopg.Error as e:
            self._close()
            raise StoreUnavailable(f"election: {e}") from None
        self.term = int(term)
        return None

    def _confirm(self) -> None:
        import psycopg

        if self._connection is None:
            raise StoreUnavailable("the election's connection is gone")
        try:
            term, locked = self._connection.execute(_CONFIRM_SQL, (LOCK_KEY,)).fetchone()
        except psycopg.Error as e:
            self._close()
            raise StoreUnavailable(f"the election's connection broke: {e}") from None
        if not locked:
            raise StoreUnavailable("our advisory lock is gone")
        if term != self.term:
            raise StoreUnavailable(f"another scheduler began term {term} (ours: {self.term})")

    # -- IElection ------------------------------------------------------------

    def try_lead(self) -> Deferred[str | None]:
        return self._call(self._try_lead)

    def confirm(self) -> Deferred[None]:
        return self._call(self._confirm)
