"""
An HTTP site on an endpoint of its own, beside a scheduler or a worker: the
dashboard, a standby's /health, a worker's /metrics.  Serving it is never
worth the process: a site that cannot listen is logged and left off, and
the scheduler or worker serves on without it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site


class SiteService(Service):
    """Serves ``root`` on the endpoint string ``listen`` while running."""

    log = Logger()
    #: What the site is, for the line logged when it cannot listen.
    what = "web site"

    def __init__(self, reactor: Any, listen: str, root: Resource) -> None:
        self.listen = listen
        self.site = Site(root)
        self.site.displayTracebacks = False
        self.endpoint = serverFromString(reactor, listen)
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.endpoint.listen(self.site).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        if not self.running:  # stopped before the port was open
            port.stopListening()
            return
        self.port = port
        self.listening(port)

    def listening(self, port: IListeningPort) -> None:
        """The site is up: say where (each site its own line)."""

    def _failed(self, failure: Failure) -> None:
        self.log.error(
            "{what} not started: cannot listen on {listen}: {reason}",
            what=self.what,
            listen=self.listen,
            reason=failure.getErrorMessage(),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped
