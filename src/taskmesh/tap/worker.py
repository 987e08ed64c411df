"""``twistd taskmesh-worker``: options in, a worker service out."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import usage

from taskmesh.config import Configurable, config_help
from taskmesh.functions import load_tasks
from taskmesh.handlers import HandlerError, default_registry, load_import_path
from taskmesh.net.address import DEFAULT_ADDRESS, Addresses, FollowingEndpoint, parse_addresses
from taskmesh.net.scheduler_protocol import MAX_WORKER_SLOTS
from taskmesh.net.tls import ClientTLS
from taskmesh.service import DEFAULT_GRACE, DEFAULT_RECONNECT_MAX_DELAY, POOLS, WorkerService
from taskmesh.tap import (
    PEER_SECURITY_FLAGS,
    PEER_SECURITY_PARAMETERS,
    non_negative_float,
    peer_security,
    positive_float,
    positive_int,
    release_default_pidfile,
)


class Options(Configurable):
    config_section = "worker"
    synopsis = "[options]"
    longdesc = (
        "Run a taskmesh worker: it connects to a scheduler, announces the task "
        "types it runs, runs what it is assigned and reconnects by itself when "
        "the scheduler goes away. Start as many as you like, anywhere. " + config_help("worker")
    )
    optParameters = [
        [
            "connect",
            "c",
            DEFAULT_ADDRESS,
            "Scheduler to connect to: host:port, [ipv6]:port, or an endpoint "
            "string such as tcp:host=h:port=p; several separated by commas "
            "(a leader and its hot standbys) are tried in turn, following a standby's pointer.",
        ],
        ["concurrency", "j", 1, "Tasks run at the same time (slots).", positive_int],
        ["name", None, None, "Name shown in the scheduler's logs (default: host-pid)."],
        [
            "reconnect-max-delay",
            None,
            DEFAULT_RECONNECT_MAX_DELAY,
            "Longest wait between reconnection attempts, in seconds.",
            positive_float,
        ],
        [
            "pool",
            None,
            "thread",
            "Where CPU-bound handlers (such as pbkdf2) run: 'thread', or 'process' "
            "for a pool of --concurrency processes that keeps every core busy.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve this worker's own Prometheus /metrics (tasks run and failed by type, run "
            "time, busy slots) on this endpoint, e.g. tcp:9102:interface=127.0.0.1. No login: "
            "keep it on loopback or a private interface. Off unless given.",
        ],
        [
            "grace",
            None,
            DEFAULT_GRACE,
            "On SIGTERM or SIGINT, seconds the running tasks may take to finish (their results "
            "are delivered) while held ones go back to the scheduler at once; then, or at a "
            "second signal, exit. 0: exit at once.",
            non_negative_float,
        ],
        *PEER_SECURITY_PARAMETERS,
    ]
    optFlags = [
        ["no-plugins", None, "Do not load task types from Twisted plugins."],
        *PEER_SECURITY_FLAGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["handlers"] = []
        self["tasks"] = []

    def opt_handler(self, path: str) -> None:
        """
        Also run the task type at this import path (package.module:name): a
        handler object or class, or a plain function (a task function named
        after it); repeatable.
        """
        self["handlers"].append(path)

    def opt_tasks(self, module: str) -> None:
        """Also run every @taskmesh.task function of this module (package.module); repeatable."""
        self["tasks"].append(module)

    def postOptions(self) -> None:
        self.apply_config()
        try:
            parse_addresses(self["connect"])
        except ValueError as e:
            raise usage.UsageError(f"--connect: {e}") from None
        if self["handlers"] or self["tasks"]:
            current_folder_importable()
        try:
            self["handler-objects"] = [load_import_path(path) for path in self["handlers"]]
        except HandlerError as e:
            raise usage.UsageError(f"--handler: {e}") from None
        try:
            for module in self["tasks"]:
                self["handler-objects"].extend(load_tasks(module))
        except HandlerError as e:
            raise usage.UsageError(f"--tasks: {e}") from None
        if self["pool"] not in POOLS:
            raise usage.UsageError(f"--pool must be one of {', '.join(POOLS)}")
        if self["concurrency"] > MAX_WORKER_SLOTS:
            raise usage.UsageError(f"--concurrency must be at most {MAX_WORKER_SLOTS}")
        if self["name"] is None:
            self["name"] = f"{socket.gethostname()}-{os.getpid()}"
        self["secret"], self["tls-options"] = peer_security(self)
        release_default_pidfile(self)


def current_folder_importable() -> None:
    """
    Put the worker's current folder first on the import path, as ``python
    -m`` and Celery's worker do: ``--tasks myapp.tasks`` then finds
    ``myapp/`` in the folder the worker was started from, without
    PYTHONPATH (twistd, a script, does not put it there itself).  A process
    pool's processes inherit the path.
    """
    folder = os.getcwd()
    if folder not in sys.path and "" not in sys.path:
        sys.path.insert(0, folder)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    handlers = default_registry(reactor, options["handler-objects"], use_plugins=not options["no-plugins"])
    service = WorkerService(
        reactor,
        scheduler_endpoint(reactor, options["connect"], options["tls-options"]),
        handlers,
        slots=options["concurrency"],
        name=options["name"],
        reconnect_max_delay=options["reconnect-max-delay"],
        pool=options["pool"],
        secret=options["secret"],
        grace=options["grace"],
        address=options["connect"],
    )
    if options["metrics"]:
        from taskmesh.web.worker_metrics import WorkerMetricsService

        WorkerMetricsService(reactor, options["metrics"], service.factory).setServiceParent(service)
    return service


def scheduler_endpoint(reactor: Any, connect: str, tls: ClientTLS | None) -> IStreamClientEndpoint:
    """
    The scheduler's endpoint: each address of the list in turn, and where a
    hot standby points (even with one address: it may be a standby's).
    """
    return FollowingEndpoint(reactor, Addresses(parse_addresses(connect)), tls)
