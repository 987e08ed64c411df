"""
An HTTP site on an endpoint of its own, beside a scheduler or a worker: the
dashboard, a standby's /health, a worker's /metrics.  Serving it is never
worth the process: a site that cannot listen is logged and left off, and
the scheduler or worker serves on without it.

Its peers are bounded as the taskmesh port's are: twisted.web's limits on a
request's lines and headers, its idle timeout (a minute), and here at most
``max_connections`` open at once (``DEFAULT_MAX_WEB_CONNECTIONS``), beyond
which a connection is closed as it arrives.  Without that bound, anyone who
reaches the address (``/health`` needs no token) could hold open every
descriptor the process has, and with them the scheduler's own port.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

#: Connections a site serves at once, at the most.
DEFAULT_MAX_WEB_CONNECTIONS = 1000


class BoundedConnections(WrappingFactory):
    """A factory's connections, at most ``limit`` open at once; one more is closed at once."""

    log = Logger()

    def __init__(self, wrapped: Any, limit: int, what: str) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.what = what
        #: Connections closed on arrival because ``limit`` were open.
        self.refused = 0

    # None refuses the connection (IProtocolFactory says so), which WrappingFactory's type omits.
    def buildProtocol(self, addr: Any) -> ProtocolWrapper | None:  # type: ignore[override]
        if len(self.protocols) >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:  # a flood is logged, not amplified
                self.log.warn(
                    "{what}: {limit} connections are open, the most it serves; closing new ones "
                    "({refused} so far)",
                    what=self.what,
                    limit=self.limit,
                    refused=self.refused,
                )
            return None
        return super().buildProtocol(addr)


class SiteService(Service):
    """Serves ``root`` on the endpoint string ``listen`` while running."""

    log = Logger()
    #: What the site is, for the line logged when it cannot listen.
    what = "web site"

    def __init__(
        self,
        reactor: Any,
        listen: str,
        root: Resource,
        max_connections: int = DEFAULT_MAX_WEB_CONNECTIONS,
    ) -> None:
        self.listen = listen
        self.site = Site(root)
        self.site.displayTracebacks = False
        self.factory = BoundedConnections(self.site, max_connections, self.what)
        self.endpoint = serverFromString(reactor, listen)
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.endpoint.listen(self.factory).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        if not self.running:  # stopped before the port was open
            port.stopListening()
            return
        self.port = port
        self.listening(port)

    def listening(self, port: IListeningPort) -> None:
        """The site is up: say where (each site its own line)."""

    def _failed(self, failure: Failure) -> None:
        hint = ""
        if failure.check(CannotListenError) and "in use" in failure.getErrorMessage():
            hint = " (schedulers on one host each need their own --web address, as their own --listen)"
        self.log.error(
            "{what} not started: cannot listen on {listen}: {reason}{hint}",
            what=self.what,
            listen=self.listen,
            reason=failure.getErrorMessage(),
            hint=hint,
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop listening and close the connections it has open: a kept-alive
        one must not go on being served by this site (a standby's 503, once
        the dashboard has taken the address over).
        """
        super().stopService()
        for wrapper in list(self.factory.protocols):
            wrapper.transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped
