"""
The dashboard's resources: static pages, ``/events`` (server-sent events),
``/api/...`` (JSON), ``/metrics`` and ``/health``, behind a token check when
the dashboard listens beyond loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web.pages import errorPage
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from taskmesh.errors import StoreUnavailable
from taskmesh.web.metrics import registry_for
from taskmesh.web.view import LIST_STATES, MeshView

#: Rows on a page of the task list, by default and at the most.
DEFAULT_PAGE = 50
MAX_PAGE = 500

STATIC = Path(__file__).parent / "static"
#: The cookie a token link sets, so the pages' own requests carry it.
COOKIE = b"taskmesh_token"


def web_token(client_secret: bytes) -> str:
    """
    The dashboard's token: derived from the clients' secret (an HMAC), so the
    link printed in the log never shows the secret itself, and whoever holds
    the secret can compute it.
    """
    return hmac.new(client_secret, b"taskmesh web token v1", hashlib.sha256).hexdigest()[:32]


def _json(request: Request, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value).encode()


class Health(Resource):
    """200 while serving; 503 while degraded (the store cannot commit)."""

    isLeaf = True

    def __init__(self, view: MeshView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        healthy, reason = self._view.healthy()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return reason.encode() + b"\n"


class Metrics(Resource):
    """Prometheus text format, computed now, on the reactor thread (no thread pool)."""

    isLeaf = True

    def __init__(self, view: MeshView) -> None:
        super().__init__()
        self._registry = registry_for(view)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class Api(Resource):
    """``/api/status``, ``/api/workers``, ``/api/jobs``, ``/api/history``, ``/api/tasks/ID``."""

    isLeaf = True

    def __init__(self, view: MeshView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        path = [part.decode("utf-8", "replace") for part in request.postpath or [] if part]
        view = self._view
        if path == ["status"]:
            return _json(request, view.status())
        if path == ["workers"]:
            return _json(request, view.status()["workers"])
        if path == ["jobs"]:
            return _json(request, view.status()["jobs"])
        if path == ["history"]:
            return _json(request, view.chart())
        if path == ["tasks"]:
            return self._list(request)
        if len(path) == 2 and path[0] == "tasks":
            try:
                task_id = int(path[1])
            except ValueError:
                return _json(request, {"error": "a task id is a number"}, 400)
            task = view.task(task_id)
            if task is None:
                return _json(request, {"error": f"no task {task_id} (never submitted, or pruned)"}, 404)
            return _json(request, task)
        return _json(request, {"error": "not found"}, 404)

    def _list(self, request: Request) -> bytes:
        def arg(name: str) -> str | None:
            values = (request.args or {}).get(name.encode())
            return values[0].decode("utf-8", "replace") if values and values[0] else None

        state = arg("state")
        if state is not None and state not in LIST_STATES:
            return _json(request, {"error": f"state is one of {', '.join(LIST_STATES)}"}, 400)
        try:
            before = arg("before")
            before_id = int(before) if before is not None else None
            limit = min(MAX_PAGE, max(1, int(arg("limit") or DEFAULT_PAGE)))
        except ValueError:
            return _json(request, {"error": "before and limit are numbers"}, 400)
        try:
            page = self._view.list_tasks(state, arg("type"), arg("key"), limit, before_id)
        except StoreUnavailable as e:
            return _json(request, {"error": str(e)}, 503)
        return _json(request, page)


class Events(Resource):
    """
    Server-sent events: every listener gets the status and the newest chart
    point once a second (``publish``, called by the web service), not per
    task.  Browsers reconnect by themselves when the stream drops.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, view: MeshView) -> None:
        super().__init__()
        self._view = view
        self.listeners: set[Request] = set()

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"retry: 2000\n")
        request.write(self._event("history", self._view.chart()))
        request.write(self._event("status", self._view.status()))
        self.listeners.add(request)
        request.notifyFinish().addBoth(lambda _: self.listeners.discard(request))
        return NOT_DONE_YET

    @staticmethod
    def _event(name: str, value: Any) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + json.dumps(value).encode() + b"\n\n"

    def publish(self) -> None:
        if not self.listeners:
            return
        chart = self._view.chart()
        message = self._event("status", self._view.status())
        if chart:
            message += self._event("point", chart[-1])
        for request in list(self.listeners):
            request.write(message)

    def close(self) -> None:
        for request in list(self.listeners):
            request.finish()
        self.listeners.clear()


class Guard(Resource):
    """
    Lets a request through with the token (``?token=`` once, then its cookie)
    or when no token is asked for (loopback); else 403 with how to log in.
    """

    def __init__(self, inner: Resource, token: str | None) -> None:
        super().__init__()
        self._inner = inner
        self._token = token

    def _allowed(self, request: Request) -> bool:
        if self._token is None:
            return True
        expected = self._token.encode()
        given = request.args.get(b"token", [b""])[0]
        if given and hmac.compare_digest(given, expected):
            request.addCookie(COOKIE, expected, path=b"/", httpOnly=True, sameSite="strict")
            return True
        cookie = request.received_cookies.get(COOKIE) or b""
        return bool(cookie) and hmac.compare_digest(cookie, expected)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"health" or self._allowed(request):  # health: for load balancers, tells nothing
            return self._inner.getChildWithDefault(path, request)
        return errorPage(
            403,
            "Forbidden",
            "Open the link with ?token=... that the scheduler logged "
            "(or compute it from the clients' secret: see the README).",
        )

    def render(self, request: Request) -> bytes:
        return self.getChildWithDefault(b"", request).render(request)


def build_root(view: MeshView, token: str | None) -> tuple[Resource, Events]:
    """The dashboard's root resource, and its event stream (published to by the web service)."""
    root = Resource()
    index = File(str(STATIC / "index.html"), defaultType="text/html")
    root.putChild(b"", index)
    root.putChild(b"static", File(str(STATIC)))
    root.putChild(b"health", Health(view))
    root.putChild(b"metrics", Metrics(view))
    root.putChild(b"api", Api(view))
    events = Events(view)
    root.putChild(b"events", events)
    return Guard(root, token), events


def token_link(base: str, token: str) -> str:
    return f"{base}/?token={quote(token)}"
