"""``twistd taskmesh-scheduler``: options in, a scheduler service out."""

from __future__ import annotations

import os

from twisted.application.service import IService
from twisted.python import usage

from taskmesh import wire
from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.service import SchedulerService
from taskmesh.store import ITaskStore, MemoryStore, time_based_first_id
from taskmesh.store.sqlite import MAX_PAGES_VARIABLE, SYNC_MODES, SqliteStore
from taskmesh.tap import non_negative_float, positive_float, positive_int, release_default_pidfile

DEFAULT_LISTEN = "tcp:9001"
DEFAULT_STORE = "taskmesh.sqlite"
_DEFAULTS = Policy()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a taskmesh scheduler: it accepts tasks from clients, hands them to "
        "connected workers and returns each result to whoever asked. Clients "
        "and workers connect to the same endpoint. Tasks and results are kept "
        "in an SQLite file (taskmesh.sqlite in the current folder by default), "
        "so a restarted scheduler resumes every unfinished task. With -n and no "
        "--pidfile, no pid file is written, so several taskmesh processes can "
        "run from one folder."
    )
    optParameters = [
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Endpoint to listen on, e.g. tcp:9001 or tcp:9001:interface=127.0.0.1.",
        ],
        [
            "store",
            "s",
            DEFAULT_STORE,
            "Where tasks and results are kept: an SQLite file path, or 'memory' "
            "(nothing survives a restart).",
        ],
        [
            "sync",
            None,
            "normal",
            "When SQLite acknowledges a commit. 'normal': once the OS has the write: "
            "survives the scheduler being killed; a power loss may lose the last "
            "commits. 'off': the same, but a power loss may also corrupt the file. "
            "Only 'full' means on disk (an fsync per commit): survives a power loss.",
        ],
        ["name", None, "taskmesh-scheduler", "Name announced to clients and workers."],
        ["prefetch", None, _DEFAULTS.prefetch, "Tasks a worker may hold beyond its slots.", int],
        [
            "max-losses",
            None,
            _DEFAULTS.max_losses,
            "Times a task may lose its worker before it fails as poison.",
            positive_int,
        ],
        [
            "max-attempts",
            None,
            _DEFAULTS.max_attempts,
            "Default attempts a task may fail (timeout, or error with retries) before it fails for good.",
            positive_int,
        ],
        [
            "retry-delay",
            None,
            _DEFAULTS.retry_delay,
            "Seconds before the first retry; doubles with each attempt.",
            non_negative_float,
        ],
        [
            "retry-max-delay",
            None,
            _DEFAULTS.retry_max_delay,
            "Longest pause between retries, in seconds.",
            non_negative_float,
        ],
        [
            "heartbeat",
            None,
            _DEFAULTS.heartbeat_interval,
            "Seconds between heartbeats with each worker.",
            positive_float,
        ],
        [
            "heartbeat-tolerance",
            None,
            _DEFAULTS.heartbeat_tolerance,
            "Heartbeat intervals of silence after which a worker is dropped and its tasks run elsewhere.",
            positive_int,
        ],
        [
            "result-ttl",
            None,
            _DEFAULTS.result_ttl,
            "Seconds a finished task's result is kept for retrieval by id.",
            positive_float,
        ],
        [
            "max-queued",
            None,
            _DEFAULTS.max_queued,
            "Queued tasks beyond which a connection that submits is paused until "
            "the queue is below 90% of it (other connections are still served).",
            positive_int,
        ],
        [
            "store-grace",
            None,
            _DEFAULTS.store_grace,
            "Seconds a submission waits for a store that cannot commit (disk full, "
            "locked) before it is refused with the reason; held-back results are "
            "never dropped.",
            non_negative_float,
        ],
        [
            "store-retry-max-delay",
            None,
            _DEFAULTS.store_retry_max_delay,
            "Longest pause between attempts to commit to a store that failed, in seconds.",
            positive_float,
        ],
        [
            "max-frame",
            None,
            wire.DEFAULT_MAX_FRAME,
            "Largest frame accepted or sent, in bytes.",
            positive_int,
        ],
        [
            "max-payload",
            None,
            wire.DEFAULT_MAX_PAYLOAD,
            "Largest task payload or result, in bytes.",
            positive_int,
        ],
    ]

    def postOptions(self) -> None:
        if self["max-frame"] > wire.MAX_FRAME_LIMIT:
            raise usage.UsageError(f"--max-frame must be at most {wire.MAX_FRAME_LIMIT}")
        if self["max-payload"] + wire.MAX_RECORD_OVERHEAD + wire.FRAME_OVERHEAD > self["max-frame"]:
            raise usage.UsageError("--max-payload must leave room in --max-frame for a record")
        if self["sync"] not in SYNC_MODES:
            raise usage.UsageError(f"--sync must be one of {', '.join(SYNC_MODES)}")
        try:
            self["policy"] = Policy(
                prefetch=self["prefetch"],
                max_losses=self["max-losses"],
                max_attempts=self["max-attempts"],
                retry_delay=self["retry-delay"],
                retry_max_delay=max(self["retry-max-delay"], self["retry-delay"]),
                heartbeat_interval=self["heartbeat"],
                heartbeat_tolerance=self["heartbeat-tolerance"],
                result_ttl=self["result-ttl"],
                max_queued=self["max-queued"],
                store_grace=self["store-grace"],
                store_retry_delay=min(_DEFAULTS.store_retry_delay, self["store-retry-max-delay"]),
                store_retry_max_delay=self["store-retry-max-delay"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        release_default_pidfile(self)


def open_store(path: str, sync: str) -> ITaskStore:
    """The store, or exit with one line saying why not (read-only, in use by another scheduler)."""
    if path == "memory":
        return MemoryStore(first_id=time_based_first_id())
    # For tests only (undocumented for users): a genuine SQLITE_FULL without filling a disk.
    max_pages = os.environ.get(MAX_PAGES_VARIABLE)
    try:
        return SqliteStore(path, synchronous=sync, max_pages=int(max_pages) if max_pages else None)
    except StoreUnavailable as e:
        raise SystemExit(f"taskmesh-scheduler: cannot open the store {path}: {e.reason}") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    store = open_store(options["store"], options["sync"])
    core = Scheduler(reactor, store, options["policy"])
    return SchedulerService(
        reactor,
        options["listen"],
        core,
        store,
        max_frame=options["max-frame"],
        max_payload=options["max-payload"],
        name=options["name"],
    )
