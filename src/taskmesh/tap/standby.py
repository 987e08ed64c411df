"""
Options to services for hot standbys: schedulers sharing one PostgreSQL store.

``is_shared_store`` says which ``--store`` values are shared (a
``postgresql://`` URL); ``advertised_address`` is what the leader publishes
for standbys to hand out; ``standby_service`` builds the
``StandbySchedulerService`` from the scheduler's parsed options.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from taskmesh.net.address import parse_address
from taskmesh.net.auth import RoleSecrets

_ANY_INTERFACE = ("", "0.0.0.0", "::", "[::]")


def is_shared_store(store: str) -> bool:
    """A store several schedulers can share: PostgreSQL (one of them leads)."""
    from taskmesh.store.postgres import is_postgres_url

    return is_postgres_url(store)


def advertised_address(listen: str, advertise: str | None) -> str:
    """
    ``--advertise`` checked, or derived from ``--listen``: ``tcp:PORT`` (or
    ``ssl:PORT``) with its ``interface=`` if that is a specific address, else
    this host's name.  Raises ValueError when it cannot be derived (a unix
    socket) or does not read as ``host:port``.
    """
    if advertise is not None:
        parsed = parse_address(advertise)
        if parsed is None or ":" not in advertise.strip().rsplit("]", 1)[-1]:
            raise ValueError(f"{advertise!r} is not HOST:PORT")
        return advertise.strip()
    kind, _, rest = listen.partition(":")
    # Endpoint strings escape a colon inside a value: interface=\:\:1
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", rest)]
    if kind not in ("tcp", "ssl") or not parts or not parts[0].isdigit():
        raise ValueError(f"cannot derive the address to advertise from --listen {listen!r}: give --advertise")
    port = parts[0]
    host = ""
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "interface":
            host = value
    if host in _ANY_INTERFACE:
        host = socket.getfqdn() or socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def standby_service(options: Any, reactor: Any, secrets: RoleSecrets) -> Any:
    """The scheduler as one of several on a PostgreSQL store (see StandbySchedulerService)."""
    from taskmesh.core.scheduler import Scheduler
    from taskmesh.service import StandbySchedulerService
    from taskmesh.store.election import PostgresElection
    from taskmesh.tap.scheduler import service_options

    election = PostgresElection(options["store"], options["advertise"], reactor)

    def open_core(store: Any) -> Scheduler:
        return Scheduler(reactor, store, options["policy"])

    return StandbySchedulerService(
        reactor,
        options["listen"],
        election,
        options["advertise"],
        open_core,
        secrets,
        **service_options(options),
    )
