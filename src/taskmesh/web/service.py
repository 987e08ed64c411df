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

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from taskmesh.core.scheduler import Scheduler
from taskmesh.store.interface import ITaskStore
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


class WebService(Service):
    """The dashboard, ``/metrics``, ``/health`` and ``/api/`` of one scheduler."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen: str,
        core: Scheduler,
        client_secret: bytes,
        store: ITaskStore | None = None,
        connections: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.listen = listen
        self.reactor = reactor
        self.view = MeshView(core, reactor, store, connections)
        self.token = None if endpoint_is_loopback(listen) else web_token(client_secret)
        root, self.events = build_root(self.view, self.token)
        self.site = Site(root)
        self.site.displayTracebacks = False
        self.endpoint = serverFromString(reactor, listen)
        self.port: IListeningPort | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self.view.sample()
        self._loop.start(SAMPLE_INTERVAL, now=False)
        self.endpoint.listen(self.site).addCallbacks(self._listening, self._failed)

    def _tick(self) -> None:
        self.view.sample()
        self.events.publish()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
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

    def _failed(self, failure: Failure) -> None:
        self.log.error(
            "dashboard not started: cannot listen on {listen}: {reason}",
            listen=self.listen,
            reason=failure.getErrorMessage(),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.events.close()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped
