"""
The store layer: what must survive a scheduler restart.

``ITaskStore`` is the contract the scheduler core writes through; the memory
store forgets everything with its process, the SQLite store is the embedded
default.
"""

from taskmesh.store.interface import ITaskStore, Outcome, State, StoredTask
from taskmesh.store.memory import MemoryStore, time_based_first_id
from taskmesh.store.sqlite import SYNC_MODES, SqliteStore

__all__ = [
    "SYNC_MODES",
    "ITaskStore",
    "MemoryStore",
    "Outcome",
    "SqliteStore",
    "State",
    "StoredTask",
    "time_based_first_id",
]
