"""
The dashboard's service: listens on its own endpoint beside the scheduler,
samples the core once a second and publishes to the live pages.  A
dashboard that cannot listen is logged and left off: the scheduler serves
on without it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall

from taskmesh.core.scheduler import Scheduler
from taskmesh.store.interface import ITaskStore
from taskmesh.web.listening import SiteService
from taskmesh.web.resources import build_root, token_link, web_token
from taskmesh.web.view import MeshView

#: Where the dashboard listens unless told: loopback only, no login.
DEFAULT_WEB = "tcp:9002:interface=127.0.0.1"
#: Seconds between samples of the core (and live page updates).
SAMPLE_INTERVAL = 1.0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def endpoint_is_loopback(description: str) -> bool:
    """Whether an endpoint string listens on loopback only (then the dashboard asks no token)."""
    if description.startswith("unix:"):
        return True
    for part in description.split(":"):
        if part.startswith("interface="):
            return is_loopback(part[len("interface=") :])
    return False  # tcp:9002 listens on every interface


def site_token(listen: str, client_secret: bytes) -> str | None:
    """The token a site on ``listen`` asks for: none on loopback, else one from the clients' secret."""
    return None if endpoint_is_loopback(listen) else web_token(client_secret)


class WebService(SiteService):
    """The dashboard, ``/metrics``, ``/health`` and ``/api/`` of one scheduler."""

    what = "dashboard"

    def __init__(
        self,
        reactor: Any,
        listen: str,
        core: Scheduler,
        client_secret: bytes,
        store: ITaskStore | None = None,
        connections: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.view = MeshView(core, reactor, store, connections)
        self.token = site_token(listen, client_secret)
        root, self.events = build_root(self.view, self.token)
        super().__init__(reactor, listen, root)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def startService(self) -> None:
        self.view.sample()
        self._loop.start(SAMPLE_INTERVAL, now=False)
        super().startService()

    def _tick(self) -> None:
        self.view.sample()
        self.events.publish()

    def listening(self, port: IListeningPort) -> None:
        host = port.getHost()
        address = getattr(host, "host", "")
        shown = f"[{address}]" if ":" in address else address
        if address in ("0.0.0.0", "::"):
            shown = "localhost"
        base = f"http://{shown}:{getattr(host, 'port', '')}"
        if self.token is not None:
            self.log.info(
                "dashboard on {address}; open {link}",
                address=base,
                link=token_link(base, self.token),
            )
        else:
            self.log.info("dashboard on {address}/ (metrics at /metrics)", address=base)

    def stopService(self) -> Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        self.events.close()
        return super().stopService()
