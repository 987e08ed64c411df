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


# -- lists of schedulers, and finding the leader among them ------------------


def test_a_list_of_schedulers_is_read_and_each_entry_checked() -> None:
    from taskmesh.net.address import parse_addresses

    assert parse_addresses("a:9001, b:9002,[::1]:9003") == ["a:9001", "b:9002", "[::1]:9003"]
    assert parse_addresses("tcp:host=a:port=1") == ["tcp:host=a:port=1"]
    for bad, reason in [("a:9001,,b", "empty entry"), ("a:9001,b:x", "port"), (" , ", "empty")]:
        with pytest.raises(ValueError, match=reason):
            parse_addresses(bad)


def test_addresses_go_round_start_from_what_worked_and_try_a_pointer_first() -> None:
    from taskmesh.net.address import Addresses

    addresses = Addresses("a:1,b:2,c:3")
    assert [addresses.next() for _ in range(4)] == ["a:1", "b:2", "c:3", "a:1"]
    addresses.follow("z:9")
    assert addresses.pointer == "z:9" and addresses.next() == "z:9" and addresses.pointer is None
    addresses.worked("c:3")
    assert addresses.next() == "c:3"
    addresses.follow("unix:/not/an/address")  # only host:port is followed
    assert addresses.pointer is None


def _run(coroutine):  # type: ignore[no-untyped-def]
    from twisted.internet.defer import Deferred

    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine did not finish"
    return results[0]


def test_reach_leader_follows_a_standby_and_skips_the_unreachable() -> None:
    from twisted.internet.defer import fail, succeed

    from taskmesh.errors import NotLeader
    from taskmesh.net.address import Addresses, reach_leader

    tried: list[str] = []

    def attempt(address: str):  # type: ignore[no-untyped-def]
        tried.append(address)
        if address == "a:1":
            return fail(ConnectionRefusedError("refused"))
        if address == "b:2":
            return fail(NotLeader("b:2 is a standby", "c:3"))
        return succeed(f"connected to {address}")

    addresses = Addresses("a:1,b:2")
    assert _run(reach_leader(addresses, attempt)) == "connected to c:3"
    assert tried == ["a:1", "b:2", "c:3"]


def test_reach_leader_gives_up_with_what_each_said_and_keeps_a_lone_error() -> None:
    from twisted.internet.defer import fail
    from twisted.python.failure import Failure

    from taskmesh.errors import AuthenticationFailed, NotLeader, SchedulerGone
    from taskmesh.net.address import Addresses, reach_leader

    def standby(address: str):  # type: ignore[no-untyped-def]
        return fail(NotLeader(f"{address} is a standby and knows no leader yet", None))

    result = _run(reach_leader(Addresses("a:1,b:2"), standby))
    assert isinstance(result, Failure) and result.check(SchedulerGone)
    assert "a:1: a:1 is a standby" in str(result.value) and "b:2: b:2 is a standby" in str(result.value)

    lone = _run(reach_leader(Addresses("a:1"), lambda address: fail(ConnectionRefusedError("no"))))
    assert isinstance(lone, Failure) and lone.check(ConnectionRefusedError)

    # Two standbys pointing at each other: bounded, not a loop.
    calls: list[str] = []

    def ping_pong(address: str):  # type: ignore[no-untyped-def]
        calls.append(address)
        return fail(NotLeader("standby", "b:2" if address == "a:1" else "a:1"))

    bounded = _run(reach_leader(Addresses("a:1,b:2"), ping_pong))
    assert isinstance(bounded, Failure) and bounded.check(SchedulerGone) and len(calls) <= 6

    denied = _run(reach_leader(Addresses("a:1,b:2"), lambda address: fail(AuthenticationFailed("no"))))
    assert isinstance(denied, Failure) and denied.check(AuthenticationFailed)


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
