"""
What a hot standby serves on its dashboard's address until it is elected.

A load balancer or an orchestrator's probe asks ``/health`` of every
scheduler: a standby answers 503 ``standby`` (it is up, but not the one to
send work to), so that only the leader is routed to, instead of a refused
connection that reads like a dead process.  Every other page is a 503 that
says the dashboard is the leader's, and where the leader is, behind the
dashboard's token as the leader's pages are (the leader's address is told
only to who may see the dashboard, as the taskmesh port tells it only after
the handshake).  Once elected, the scheduler stops this and starts the real
dashboard on the same address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from taskmesh.web.listening import SiteService
from taskmesh.web.resources import Guard
from taskmesh.web.service import site_token


class StandbyHealth(Resource):
    """503 ``standby``: up, not leading.  Tells nothing more (it needs no token)."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"standby: not the leader\n"


class StandbyPage(Resource):
    """Any other page: where the leader is, whose dashboard this is not."""

    isLeaf = True

    def __init__(self, leader: Callable[[], str]) -> None:
        super().__init__()
        self._leader = leader

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        leader = self._leader() or "(none elected yet)"
        return (
            f"This scheduler is a hot standby; the leader is at {leader} (its taskmesh address). "
            "The dashboard, /metrics and /api are served by the leader; this address serves them "
            "once this scheduler is elected.\n"
        ).encode()


class _StandbyRoot(Resource):
    def __init__(self, leader: Callable[[], str]) -> None:
        super().__init__()
        self._page = StandbyPage(leader)
        self.putChild(b"health", StandbyHealth())

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self._page

    def render_GET(self, request: Request) -> bytes:
        return self._page.render_GET(request)


def standby_root(leader: Callable[[], str], token: str | None) -> Resource:
    """The standby's pages, behind the dashboard's token check (``/health`` is open)."""
    return Guard(_StandbyRoot(leader), token)


class StandbyWebService(SiteService):
    """The standby's pages on the dashboard's endpoint."""

    what = "standby's /health"

    def __init__(self, reactor: Any, listen: str, leader: Callable[[], str], client_secret: bytes) -> None:
        super().__init__(reactor, listen, standby_root(leader, site_token(listen, client_secret)))

    def listening(self, port: IListeningPort) -> None:
        self.log.info(
            "standby's /health on {listen} answers 503 until this scheduler is elected", listen=self.listen
        )
