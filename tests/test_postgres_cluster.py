"""
The throwaway PostgreSQL cluster the store's tests run on: durable settings,
a server that is not root, and a crash (immediate stop) that loses nothing
committed.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from taskmesh.testing_postgres import PostgresCluster


def test_the_server_is_durable_and_not_root(postgres: PostgresCluster, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        settings = dict(
            db.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'listen_addresses', 'port')"
            ).fetchall()
        )
    assert settings == {
        "fsync": "on",
        "synchronous_commit": "on",
        "listen_addresses": "127.0.0.1",
        "port": str(postgres.port),
    }
    assert postgres.pid is not None
    with open(f"/proc/{postgres.pid}/status") as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    assert uid != 0
    assert uid == (os.geteuid() or uid)  # ours, unless we are root


def test_an_immediate_stop_keeps_what_was_committed(postgres: PostgresCluster, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("CREATE TABLE t (n integer)")
        db.execute("INSERT INTO t VALUES (1), (2)")
    pid = postgres.pid
    postgres.stop("immediate")
    assert not postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=2)
    postgres.start()
    assert postgres.pid != pid
    with psycopg.connect(postgres_url, autocommit=True) as db:
        assert db.execute("SELECT sum(n) FROM t").fetchone() == (3,)


def test_terminating_sessions_drops_connections(postgres: PostgresCluster, postgres_url: str) -> None:
    db = psycopg.connect(postgres_url, autocommit=True)
    try:
        assert postgres.terminate_sessions(postgres_url) == 1
        with pytest.raises(psycopg.OperationalError):
            db.execute("SELECT 1")
    finally:
        db.close()
