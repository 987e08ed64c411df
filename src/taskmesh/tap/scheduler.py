"""``twistd taskmesh-scheduler``: options in, a scheduler service out."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from taskmesh import wire
from taskmesh.config import Configurable, config_help
from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.net.auth import RoleSecrets
from taskmesh.net.credentials import SECRET_VARIABLE, SecretError, read_secret_file, scheduler_secret
from taskmesh.net.framing import (
    DEFAULT_FRAME_BUDGET,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_UNSENT,
    ConnectionLimits,
)
from taskmesh.net.scheduler_protocol import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_JOBS, DEFAULT_MAX_QUERIES
from taskmesh.net.tls import ServerTLS
from taskmesh.service import SchedulerService
from taskmesh.store import ITaskStore, MemoryStore, time_based_first_id
from taskmesh.store.postgres import PostgresStore, is_postgres_url
from taskmesh.store.sqlite import MAX_PAGES_VARIABLE, SYNC_MODES, SqliteStore
from taskmesh.tap import non_negative_float, positive_float, positive_int, release_default_pidfile
from taskmesh.tap.schedules import read_schedules
from taskmesh.tap.standby import advertised_address, is_shared_store, standby_service

DEFAULT_LISTEN = "tcp:9001"
#: The dashboard's endpoint (taskmesh.web): loopback only unless told otherwise.
DEFAULT_WEB = "tcp:9002:interface=127.0.0.1"
DEFAULT_STORE = "taskmesh.sqlite"
_DEFAULTS = Policy()


class Options(Configurable):
    config_section = "scheduler"
    synopsis = "[options]"
    longdesc = (
        "Run a taskmesh scheduler: it accepts tasks from clients, hands them to "
        "connected workers and returns each result to whoever asked. Clients "
        "and workers connect to the same endpoint. Tasks and results are kept "
        "in an SQLite file (taskmesh.sqlite in the current folder by default), "
        "so a restarted scheduler resumes every unfinished task. With -n and no "
        "--pidfile, no pid file is written, so several taskmesh processes can "
        "run from one folder. " + config_help("scheduler")
    )
    optParameters = [
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Endpoint to listen on, e.g. tcp:9001 or tcp:9001:interface=127.0.0.1.",
        ],
        [
            "web",
            None,
            DEFAULT_WEB,
            "Endpoint of the dashboard, /metrics, /health and /api/ ('none': off). "
            "Beyond loopback it asks for a token derived from the clients' secret (logged as a link). "
            "A hot standby answers there with 503 until it is elected (/health: 'standby').",
        ],
        [
            "store",
            "s",
            DEFAULT_STORE,
            "Where tasks and results are kept: an SQLite file path, a PostgreSQL "
            "database URL (postgresql://user@host:port/dbname; libpq's PG* variables "
            "and ~/.pgpass apply), or 'memory' (nothing survives a restart).",
        ],
        [
            "sync",
            None,
            "normal",
            "When SQLite acknowledges a commit. 'normal': once the OS has the write: "
            "survives the scheduler being killed; a power loss may lose the last "
            "commits. 'off': the same, but a power loss may also corrupt the file. "
            "Only 'full' means on disk (an fsync per commit): survives a power loss. "
            "(PostgreSQL: the server's synchronous_commit decides.)",
        ],
        ["name", None, "taskmesh-scheduler", "Name announced to clients and workers."],
        [
            "advertise",
            None,
            None,
            "With --hot-standby: the HOST:PORT this scheduler publishes while it leads, "
            "where standbys send clients and workers (default: from --listen, its interface "
            "or this host's name).",
        ],
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
            "Seconds between heartbeats with each worker and client.",
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
        # Bounds on every peer: what a broken or hostile one can make the scheduler hold.
        [
            "handshake-timeout",
            None,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "Seconds a new connection has to finish its handshake (hello to proof); then it is closed.",
            positive_float,
        ],
        [
            "frame-timeout",
            None,
            DEFAULT_FRAME_TIMEOUT,
            "Seconds a frame that has started may take to arrive whole; then the connection is closed.",
            positive_float,
        ],
        [
            "frame-budget",
            None,
            DEFAULT_FRAME_BUDGET,
            "Bytes that unfinished frames may hold across all connections; beyond, "
            "a new large frame is refused with an error (try again) instead of buffered.",
            positive_int,
        ],
        [
            "max-unsent",
            None,
            DEFAULT_MAX_UNSENT,
            "Bytes that may pile up unsent for a peer that does not read; beyond, it is dropped.",
            positive_int,
        ],
        [
            "max-queries",
            None,
            DEFAULT_MAX_QUERIES,
            "Queries (results, states) one connection may have waiting at once.",
            positive_int,
        ],
        ["max-jobs", None, DEFAULT_MAX_JOBS, "Maps one connection may have open at once.", positive_int],
        [
            "secret-file",
            None,
            None,
            f"File holding the secret of workers and clients (default: {SECRET_VARIABLE} if set, else "
            "$XDG_CONFIG_HOME/taskmesh/secret or ~/.config/taskmesh/secret, created with a random "
            "secret on first start).",
        ],
        [
            "client-secret-file",
            None,
            None,
            "A separate secret for clients (then the main one is for workers).",
        ],
        [
            "worker-secret-file",
            None,
            None,
            "A separate secret for workers (then the main one is for clients).",
        ],
        [
            "schedules",
            None,
            None,
            "Periodic schedules declared in this TOML file ([schedule.NAME] tables; see the README).",
        ],
        [
            "horizon",
            None,
            _DEFAULTS.horizon,
            "Seconds ahead the scheduler holds delayed tasks in memory; later ones stay in the store.",
            float,
        ],
        ["tls-cert", None, None, "Serve TLS with this certificate (PEM; it may hold the key too)."],
        ["tls-key", None, None, "The private key (PEM) of --tls-cert, if it is not in the same file."],
        [
            "tls-client-ca",
            None,
            None,
            "With --tls-cert: require every worker and client to present a certificate signed by this CA.",
        ],
        [
            "max-connections",
            None,
            None,
            "Connections served at once; beyond, new ones are closed at once "
            f"(default: {DEFAULT_MAX_CONNECTIONS}, or fewer if the file descriptor limit is lower).",
            positive_int,
        ],
    ]
    optFlags = [
        [
            "hot-standby",
            None,
            "With a PostgreSQL store: be one of several schedulers on it, of which one leads "
            "and the others are hot standbys that point peers to it and take over when it "
            "dies (give each of them this flag). A leader that loses its database connection "
            "then stops and exits (status 75) instead of waiting for the database.",
        ],
    ]

    def postOptions(self) -> None:
        self.apply_config()
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
                horizon=self["horizon"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["schedule-records"] = None
        if self["schedules"] is not None:
            try:
                self["schedule-records"] = read_schedules(self["schedules"], time.time())
            except ValueError as e:
                raise usage.UsageError(f"--schedules: {e}") from None
        if (self["tls-key"] or self["tls-client-ca"]) and not self["tls-cert"]:
            raise usage.UsageError("--tls-key and --tls-client-ca go with --tls-cert")
        self["tls-options"] = (
            ServerTLS(self["tls-cert"], self["tls-key"], self["tls-client-ca"]) if self["tls-cert"] else None
        )
        if self["max-unsent"] < 2 * self["max-frame"]:
            raise usage.UsageError("--max-unsent must be at least twice --max-frame")
        self["limits"] = ConnectionLimits(
            max_frame=self["max-frame"],
            handshake_timeout=self["handshake-timeout"],
            frame_timeout=self["frame-timeout"],
            max_unsent=self["max-unsent"],
        )
        if self["hot-standby"]:
            if not is_shared_store(self["store"]):
                raise usage.UsageError("--hot-standby needs a PostgreSQL --store (postgresql://...)")
            try:
                self["advertise"] = advertised_address(self["listen"], self["advertise"])
            except ValueError as e:
                raise usage.UsageError(f"--advertise: {e}") from None
        release_default_pidfile(self)


def open_store(path: str, sync: str, reactor: Any = None) -> ITaskStore:
    """The store, or exit with one line saying why not (read-only, in use by another scheduler)."""
    if path == "memory":
        return MemoryStore(first_id=time_based_first_id())
    if is_postgres_url(path):
        try:
            return PostgresStore(path, reactor)
        except StoreUnavailable as e:
            # e.reason names host:port/database, never the URL (it may hold a password).
            raise SystemExit(f"taskmesh-scheduler: cannot open the store: {e.reason}") from None
    # For tests only (undocumented for users): a genuine SQLITE_FULL without filling a disk.
    max_pages = os.environ.get(MAX_PAGES_VARIABLE)
    try:
        return SqliteStore(path, synchronous=sync, max_pages=int(max_pages) if max_pages else None)
    except StoreUnavailable as e:
        raise SystemExit(f"taskmesh-scheduler: cannot open the store {path}: {e.reason}") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    secrets = role_secrets(options)
    if options["hot-standby"]:  # several schedulers on one store, one leads
        return standby_service(options, reactor, secrets)
    store = open_store(options["store"], options["sync"], reactor)
    core = Scheduler(reactor, store, options["policy"])
    if options["schedule-records"] is not None:
        try:
            core.declare_schedules(options["schedule-records"])
        except StoreUnavailable as e:
            raise SystemExit(f"taskmesh-scheduler: cannot store the --schedules: {e.reason}") from None
    return SchedulerService(
        reactor,
        options["listen"],
        core,
        store,
        secrets=secrets,
        **service_options(options),
    )


def role_secrets(options: Options) -> RoleSecrets:
    """Each role's secret: the main one, unless a role has its own file."""
    try:
        main = scheduler_secret(options["secret-file"])
        client = (
            read_secret_file(Path(options["client-secret-file"])) if options["client-secret-file"] else main
        )
        worker = (
            read_secret_file(Path(options["worker-secret-file"])) if options["worker-secret-file"] else main
        )
    except SecretError as e:
        raise SystemExit(f"taskmesh-scheduler: {e}") from None
    return RoleSecrets(client=client, worker=worker)


#: File descriptors kept for everything but connections (the store, logs, pools).
RESERVED_DESCRIPTORS = 64


def service_options(options: Any) -> dict[str, Any]:
    """
    The keyword arguments a scheduler's service takes from its options, the
    same for a lone scheduler and one of several on a shared store: frame
    and payload bounds, its name, every peer's bounds, TLS and the dashboard.
    """
    return {
        "max_frame": options["max-frame"],
        "max_payload": options["max-payload"],
        "name": options["name"],
        "factory_options": {
            "limits": options["limits"],
            "frame_budget": options["frame-budget"],
            "max_queries": options["max-queries"],
            "max_jobs": options["max-jobs"],
            "max_connections": options["max-connections"] or connection_limit(),
        },
        "tls": options["tls-options"],
        "web": None if options["web"] == "none" else options["web"],
    }


def connection_limit() -> int:
    """
    How many connections the scheduler can serve: the soft descriptor limit is
    raised to the hard one (as servers do), and a few descriptors are kept
    back, so that running out is refused politely and logged once, not met
    as EMFILE on every accept.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = DEFAULT_MAX_CONNECTIONS + RESERVED_DESCRIPTORS
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft - RESERVED_DESCRIPTORS))
