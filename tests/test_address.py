"""User-typed addresses become Twisted client endpoints."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactorClock

from taskmesh.net.address import client_endpoint, parse_address, parse_plain_endpoint


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


@pytest.mark.parametrize(
    ("typed", "kind", "host", "port", "path"),
    [
        ("tcp:host=example.com:port=9001", "tcp", "example.com", 9001, ""),
        ("tcp:10.0.0.1:9001", "tcp", "10.0.0.1", 9001, ""),
        (r"tcp:host=\:\:1:port=9001", "tcp", "::1", 9001, ""),
        ("tls:host=h:port=443:trustRoots=/etc/ca", "tls", "h", 443, ""),
        ("unix:path=/run/taskmesh.sock", "unix", "", 0, "/run/taskmesh.sock"),
        ("unix:/run/taskmesh.sock", "unix", "", 0, "/run/taskmesh.sock"),
    ],
)
def test_plain_endpoints(typed: str, kind: str, host: str, port: int, path: str) -> None:
    endpoint = parse_plain_endpoint(typed)
    assert (endpoint.kind, endpoint.host, endpoint.port, endpoint.path) == (kind, host, port, path)


def test_plain_endpoint_files_and_timeout() -> None:
    endpoint = parse_plain_endpoint(
        "tls:host=h:port=1:trustRoots=ca:certificate=me.pem:privateKey=key.pem:timeout=2.5"
    )
    assert (endpoint.trust_roots, endpoint.certificate, endpoint.private_key) == ("ca", "me.pem", "key.pem")
    assert endpoint.timeout == 2.5


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("ssl:host=h:port=1", "not 'ssl:host=h:port=1'"),
        ("tcp:host=h", "port must be a number"),
        ("tcp:port=1", "host is missing"),
        ("tcp:host=h:port=1:bindAddress=x", "not 'bindAddress'"),
        ("tcp:host=h:port=1:timeout=soon", "timeout must be a number"),
        ("unix:", "path is missing"),
        ("tls:host=h:port=1:privateKey=k", "privateKey goes with certificate"),
        ("tcp:h:1:5:extra", "is not name=value"),
    ],
)
def test_plain_endpoints_refused_with_a_reason(typed: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_plain_endpoint(typed)


@given(st.text(max_size=80))
def test_any_text_is_an_endpoint_or_a_value_error(typed: str) -> None:
    try:
        parse_plain_endpoint(typed)
    except ValueError:
        pass
