"""User-typed addresses become Twisted client endpoints."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactorClock

from taskmesh.net.address import client_endpoint, parse_address


@pytest.mark.parametrize(
    "typed, parsed",
    [
        ("localhost:9001", ("localhost", 9001)),
        ("example.org", ("example.org", 9001)),
        ("[::1]:9002", ("::1", 9002)),
        ("[::1]", ("::1", 9001)),
        (" 10.0.0.1:5 ", ("10.0.0.1", 5)),
        ("tcp:host=h:port=5", None),
        ("unix:/run/taskmesh.sock", None),
    ],
)
def test_forms(typed: str, parsed: tuple[str, int] | None) -> None:
    assert parse_address(typed) == parsed


@pytest.mark.parametrize(
    "typed", ["", "host:", ":9001", "host:port", "host:0", "host:70000", "::1:9001", "[::1"]
)
def test_refused_with_a_reason(typed: str) -> None:
    with pytest.raises(ValueError, match="."):
        parse_address(typed)


def test_endpoints() -> None:
    reactor = MemoryReactorClock()
    assert isinstance(client_endpoint(reactor, "[::1]:9002"), HostnameEndpoint)
    assert isinstance(client_endpoint(reactor, "tcp:host=127.0.0.1:port=9"), TCP4ClientEndpoint)
    assert isinstance(client_endpoint(reactor, "unix:/tmp/x.sock"), UNIXClientEndpoint)
