"""
A site beside the scheduler (dashboard, a standby's /health, a worker's
/metrics) serves a bounded number of connections, over a real loopback
socket: the one over the bound is closed as it arrives, those within it are
served, and a closed one makes room again.
"""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource

from taskmesh.web.listening import SiteService
from taskmesh.web.standby import StandbyHealth

#: Bound of every wait here, in seconds.
BOUND = 10.0


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def health(connection: socket.socket) -> bytes:
    connection.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    return read_all(connection)


def clients(port: int) -> dict[str, object]:
    """In a thread, while the reactor serves: fill the site, one more, then free a place."""
    seen: dict[str, object] = {}
    held = [socket.create_connection(("127.0.0.1", port), timeout=BOUND) for _ in range(3)]
    # The site accepts in arrival order: this one finds the three in place.
    extra = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    try:
        seen["extra"] = extra.recv(1)  # b"": closed by the site, not answered
    except ConnectionResetError:
        seen["extra"] = b""
    seen["held"] = health(held[0]).split(b"\r\n", 1)[0]  # within the bound: served
    held[0].close()
    # Room again once the site has seen that close: try, boundedly, until served.
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        again = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        try:
            answer = health(again)
        except ConnectionResetError:
            answer = b""
        again.close()
        if answer:
            seen["again"] = answer.split(b"\r\n", 1)[0]
            break
    for connection in held[1:]:
        connection.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_a_site_serves_at_most_its_connections_and_closes_the_next() -> None:
    root = Resource()
    root.putChild(b"health", StandbyHealth())
    service = SiteService(reactor, "tcp:0:interface=127.0.0.1", root, max_connections=3)
    service.startService()
    try:
        assert service.port is not None
        seen = await deferToThread(clients, service.port.getHost().port)
    finally:
        await service.stopService()
    assert seen == {
        "extra": b"",
        "held": b"HTTP/1.0 503 Service Unavailable",
        "again": b"HTTP/1.0 503 Service Unavailable",
    }
    assert service.factory.refused >= 1


def kept_alive(port: int, answered: object, stopped: object) -> dict[str, object]:
    """A keep-alive connection is served, then (once the site stops) closed, not served on."""
    import threading

    assert isinstance(answered, threading.Event) and isinstance(stopped, threading.Event)
    connection = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"not the leader\n" not in answer:
        chunk = connection.recv(65536)
        if not chunk:
            break
        answer += chunk
    seen: dict[str, object] = {"first": answer.split(b"\r\n", 1)[0]}
    answered.set()
    stopped.wait(BOUND)
    seen["after_stop"] = connection.recv(1)  # b"": the site closed it
    connection.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_stopping_a_site_closes_its_kept_alive_connections() -> None:
    """So that once a standby is elected, a prober's kept-alive connection is not told 'standby' forever."""
    import threading

    root = Resource()
    root.putChild(b"health", StandbyHealth())
    service = SiteService(reactor, "tcp:0:interface=127.0.0.1", root)
    service.startService()
    assert service.port is not None
    answered, stopped = threading.Event(), threading.Event()
    running = deferToThread(kept_alive, service.port.getHost().port, answered, stopped)
    assert await deferToThread(answered.wait, BOUND)
    await service.stopService()
    stopped.set()
    seen = await running
    assert seen == {"first": b"HTTP/1.1 503 Service Unavailable", "after_stop": b""}
