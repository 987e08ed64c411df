"""
The SQL stores' tables, written once and rendered in each dialect.

SQLite's and PostgreSQL's tables are the same column for column (what is
ported between the two stays a translation, and ``store/rows.py`` reads and
writes both the same way); only the type names differ, and how a flag's
default is spelled.  So the columns are listed here once, with a kind each,
and ``schema(dialect)`` writes the ``CREATE`` statements a store runs at
open; ``migrations(dialect)`` the columns added since the first release,
which a store adds to an older database in place.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DUE_INDEX", "POSTGRESQL", "SQLITE", "Dialect", "migrations", "schema"]


@dataclass(frozen=True)
class Dialect:
    """How one SQL database spells the kinds of column below."""

    #: kind -> the type's name: id (the primary key), text, bytes, real, int,
    #: small (a state number), bigint (a task id elsewhere), flag (a boolean).
    types: dict[str, str]
    #: A flag's false, as a default value.
    false: str
    #: Adds a column to an older table (``{table}``, ``{column}``, ``{type}``).
    add_column: str


SQLITE = Dialect(
    types={
        "id": "INTEGER",  # INTEGER PRIMARY KEY: the rowid itself, no second index
        "text": "TEXT",
        "bytes": "BLOB",
        "real": "REAL",
        "int": "INTEGER",
        "small": "INTEGER",
        "bigint": "INTEGER",
        "flag": "INTEGER",
    },
    false="0",
    add_column="ALTER TABLE {table} ADD COLUMN {column} {type}",
)

POSTGRESQL = Dialect(
    types={
        "id": "bigint",
        "text": "text",
        "bytes": "bytea",
        "real": "double precision",
        "int": "integer",
        "small": "smallint",
        "bigint": "bigint",
        "flag": "boolean",
    },
    false="false",
    # IF NOT EXISTS: two schedulers opening one database at once both migrate it.
    add_column="ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type}",
)

#: (name, kind, constraints) of each table's columns, in order.  ``{false}``
#: in constraints is the dialect's false.
_TASKS = (
    ("id", "id", "PRIMARY KEY"),
    ("type", "text", "NOT NULL"),
    ("payload", "bytes", "NOT NULL"),
    ("submitted_at", "real", "NOT NULL"),
    ("priority", "int", "NOT NULL DEFAULT 0"),
    ("key", "text", "UNIQUE"),
    ("timeout", "real", ""),
    ("max_attempts", "int", "NOT NULL"),
    ("retry_on_error", "flag", "NOT NULL DEFAULT {false}"),
    ("attempts", "int", "NOT NULL DEFAULT 0"),
    ("losses", "int", "NOT NULL DEFAULT 0"),
    ("state", "small", "NOT NULL DEFAULT 0"),
    ("result", "bytes", ""),
    ("finished_at", "real", ""),
)
#: The next task id, kept apart from the tasks: pruning old rows must never
#: let an id be handed out twice.
_COUNTERS = (
    ("name", "text", "PRIMARY KEY"),
    ("value", "bigint", "NOT NULL"),
)
#: Periodic schedules (see ScheduleRecord), one row each, by name.
_SCHEDULES = (
    ("name", "text", "PRIMARY KEY"),
    ("cron", "text", ""),
    ("every", "real", ""),
    ("tz", "text", "NOT NULL"),
    ("type", "text", "NOT NULL"),
    ("payload", "bytes", "NOT NULL"),
    ("priority", "int", "NOT NULL"),
    ("timeout", "real", ""),
    ("max_attempts", "int", "NOT NULL"),
    ("retry_on_error", "flag", "NOT NULL"),
    ("catch_up", "flag", "NOT NULL"),
    ("paused", "flag", "NOT NULL"),
    ("next_due", "real", "NOT NULL"),
    ("last_due", "real", ""),
    ("last_task", "bigint", ""),
    ("source", "text", "NOT NULL"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (id) WHERE finished_at IS NULL;\n"
    "CREATE INDEX IF NOT EXISTS tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;\n"
)
#: Columns added since the first release: (table, column, kind).  A store
#: made before delayed tasks lacks ``due_at``.
_ADDED = (("tasks", "due_at", "real"),)

#: The index on a migrated column, made after the migrations.
DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_due ON tasks (due_at, id)"
    " WHERE finished_at IS NULL AND due_at IS NOT NULL"
)


def _table(name: str, columns: tuple[tuple[str, str, str], ...], dialect: Dialect) -> str:
    lines = [
        f"    {column} {dialect.types[kind]} {constraints.format(false=dialect.false)}".rstrip()
        for column, kind, constraints in columns
    ]
    return f"CREATE TABLE IF NOT EXISTS {name} (\n" + ",\n".join(lines) + "\n);\n"


def schema(dialect: Dialect) -> str:
    """The statements that create every table and index a store needs (where missing)."""
    return (
        _table("tasks", _TASKS, dialect)
        + _INDEXES
        + _table("counters", _COUNTERS, dialect)
        + _table("schedules", _SCHEDULES, dialect)
    )


def migrations(dialect: Dialect) -> tuple[tuple[str, str, str], ...]:
    """(table, column, statement) for each column added since the first release."""
    return tuple(
        (table, column, dialect.add_column.format(table=table, column=column, type=dialect.types[kind]))
        for table, column, kind in _ADDED
    )
