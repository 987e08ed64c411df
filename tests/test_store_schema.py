"""
The SQL stores' tables are written once (store/schema.py) and rendered per
dialect: both dialects make the same tables, columns and indexes, in the
same order, and an older database gains the added columns in place.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from taskmesh.store.schema import POSTGRESQL, SQLITE, migrations, schema
from taskmesh.store.sqlite import SqliteStore


def columns(rendered: str) -> list[tuple[str, list[str]]]:
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", rendered, re.S)
    return [(name, [line.split()[0] for line in body.strip().splitlines()]) for name, body in tables]


def test_both_dialects_make_the_same_tables_and_columns_in_order() -> None:
    assert columns(schema(SQLITE)) == columns(schema(POSTGRESQL))
    assert [name for name, _ in columns(schema(SQLITE))] == ["tasks", "counters", "schedules"]
    indexes = re.compile(r"CREATE INDEX .*")
    assert indexes.findall(schema(SQLITE)) == indexes.findall(schema(POSTGRESQL))
    assert set(SQLITE.types) == set(POSTGRESQL.types)
    assert [m[:2] for m in migrations(SQLITE)] == [m[:2] for m in migrations(POSTGRESQL)]


def test_the_sqlite_rendering_is_what_sqlite_makes() -> None:
    """SQLite keeps each table's CREATE text: the rendered one runs as written."""
    db = sqlite3.connect(":memory:")
    db.executescript(schema(SQLITE))
    (tasks,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks'").fetchone()
    assert "id INTEGER PRIMARY KEY" in tasks  # the rowid itself: no second index on ids
    assert "retry_on_error INTEGER NOT NULL DEFAULT 0" in tasks
    assert "state INTEGER NOT NULL DEFAULT 0" in tasks
    assert "retry_on_error boolean NOT NULL DEFAULT false" in schema(POSTGRESQL)
    assert "state smallint NOT NULL DEFAULT 0" in schema(POSTGRESQL)


def test_a_store_made_before_delayed_tasks_gains_its_due_time_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(schema(SQLITE))  # the tables as first released: no due_at
    old.execute(
        "INSERT INTO tasks (id, type, payload, submitted_at, max_attempts)"
        " VALUES (1, 'sha256', x'00', 1.0, 3)"
    )
    old.commit()
    old.close()
    store = SqliteStore(str(path))
    try:
        assert [task.id for task in store.unfinished()] == [1]
        assert [task.due_at for task in store.unfinished()] == [None]
    finally:
        store.close()
    migrated = sqlite3.connect(path)
    assert "due_at" in {row[1] for row in migrated.execute("PRAGMA table_info(tasks)")}
    names = {row[0] for row in migrated.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "tasks_due" in names
