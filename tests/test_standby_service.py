"""
The hot standby's composition in memory (MemoryReactorClock, an election
answered by the test): it listens as a standby, pointing peers to the leader;
elected, it serves the core the store gave it; losing its leadership it drops
every peer, closes its port and exits with status 75.  And the options:
``--advertise`` derived from ``--listen`` or checked, ``--connect`` lists.
"""

from __future__ import annotations

from typing import Any

import pytest
from handshakes import SECRETS, shake
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from taskmesh import wire
from taskmesh.core.leadership import Role
from taskmesh.core.scheduler import Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.net.address import FollowingEndpoint
from taskmesh.net.scheduler_protocol import SchedulerFactory
from taskmesh.net.standby import StandbyFactory
from taskmesh.service import EXIT_LOST_LEADERSHIP, StandbySchedulerService
from taskmesh.store import MemoryStore
from taskmesh.tap import worker as worker_tap
from taskmesh.tap.standby import advertised_address

CLIENT_HELLO = wire.Hello(role=wire.ROLE_CLIENT, name="c")


class Election:
    def __init__(self) -> None:
        self.advertise = "me:9001"
        self.store: Any = None
        self.answers: list[Deferred[Any]] = []
        self.started = self.stopped = False

    def start(self, reactor: Any) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def try_lead(self) -> Deferred[str | None]:
        self.answers.append(Deferred())
        return self.answers[-1]

    def confirm(self) -> Deferred[None]:
        self.answers.append(Deferred())
        return self.answers[-1]


def service() -> tuple[MemoryReactorClock, Election, StandbySchedulerService, list[int]]:
    reactor = MemoryReactorClock()
    election = Election()
    exits: list[int] = []
    made = StandbySchedulerService(
        reactor,
        "tcp:9001:interface=127.0.0.1",
        election,
        "me:9001",
        lambda store: Scheduler(reactor, store),
        SECRETS,
        exit=exits.append,
    )
    return reactor, election, made, exits


def connect(factory: Any) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_standby_listens_and_points_peers_to_the_leader() -> None:
    reactor, election, standby, exits = service()
    standby.startService()
    assert election.started and len(reactor.tcpServers) == 1
    assert isinstance(standby.switch.current, StandbyFactory)
    election.answers[-1].callback("other:9001")
    protocol, transport = connect(standby.switch)
    assert shake(protocol, transport, CLIENT_HELLO) == [wire.Standby("other:9001")]
    assert standby.core is None and exits == []


def test_elected_it_serves_the_store_it_was_given_then_exits_when_it_loses_the_lock() -> None:
    reactor, election, leader, exits = service()
    leader.startService()
    election.store = MemoryStore()
    election.answers[-1].callback(None)  # elected
    assert leader.leadership.role is Role.LEADING
    assert isinstance(leader.switch.current, SchedulerFactory) and leader.core is not None
    protocol, transport = connect(leader.switch)
    (welcome,) = shake(protocol, transport, CLIENT_HELLO)
    assert isinstance(welcome, wire.Welcome)
    reactor.advance(1.0)
    election.answers[-1].callback(None)  # confirmed
    reactor.advance(1.0)
    election.answers[-1].errback(StoreUnavailable("our writer's session is gone"))
    assert transport.disconnected or transport.disconnecting  # every peer dropped at once
    assert leader.port is None  # not listening any more
    reactor.advance(0.2)
    assert exits == [EXIT_LOST_LEADERSHIP]


def test_a_store_that_cannot_be_opened_as_the_leader_means_stepping_down() -> None:
    reactor, election, leader, exits = service()
    leader.startService()
    election.store = None  # the core cannot be made on it
    leader.open_core = lambda store: (_ for _ in ()).throw(StoreUnavailable("disk full"))
    election.answers[-1].callback(None)
    reactor.advance(0.2)
    assert exits == [EXIT_LOST_LEADERSHIP] and leader.core is None


@pytest.mark.parametrize(
    ("listen", "advertise", "expected"),
    [
        ("tcp:9001:interface=10.0.0.5", None, "10.0.0.5:9001"),
        (r"tcp:9001:interface=\:\:1", None, "[::1]:9001"),
        ("tcp:9001", "sched-a.example:9001", "sched-a.example:9001"),
        ("unix:/tmp/s", "[2001:db8::1]:9001", "[2001:db8::1]:9001"),
    ],
)
def test_the_advertised_address(listen: str, advertise: str | None, expected: str) -> None:
    assert advertised_address(listen, advertise) == expected


def test_the_advertised_address_defaults_to_this_host_and_is_checked() -> None:
    host, _, port = advertised_address("tcp:9001", None).rpartition(":")
    assert host and port == "9001"
    for listen, advertise in [("unix:/tmp/s", None), ("tcp:9001", "tcp:host=a:port=1"), ("tcp:9001", "a")]:
        with pytest.raises(ValueError):
            advertised_address(listen, advertise)


def test_a_worker_takes_a_list_of_schedulers_and_refuses_a_bad_entry() -> None:
    options = worker_tap.Options()
    options.parseOptions(["--connect", "a:9001,b:9001"])
    endpoint = worker_tap.scheduler_endpoint(MemoryReactorClock(), options["connect"], None)
    assert isinstance(endpoint, FollowingEndpoint) and endpoint.addresses.addresses == ["a:9001", "b:9001"]
    with pytest.raises(usage.UsageError, match="empty entry"):
        worker_tap.Options().parseOptions(["--connect", "a:9001,,b:9001"])


def test_the_following_endpoint_tries_the_pointer_then_the_list() -> None:
    reactor = MemoryReactorClock()
    endpoint = worker_tap.scheduler_endpoint(reactor, "127.0.0.1:9001,127.0.0.1:9002", None)
    assert isinstance(endpoint, FollowingEndpoint)
    endpoint.follow("127.0.0.1:9003")
    endpoint.connect(SchedulerFactory(Scheduler(reactor), reactor, SECRETS))
    # HostnameEndpoint resolves first; the pointer is what it was asked for.
    assert endpoint.addresses.pointer is None
    assert endpoint.addresses.next() == "127.0.0.1:9001"


def test_hot_standby_needs_a_postgresql_store_and_derives_its_address() -> None:
    from taskmesh.tap import scheduler as scheduler_tap

    with pytest.raises(usage.UsageError, match="needs a PostgreSQL --store"):
        scheduler_tap.Options().parseOptions(["--hot-standby", "--store", "memory"])
    options = scheduler_tap.Options()
    options.parseOptions(
        ["--hot-standby", "--store", "postgresql://u@db/t", "--listen", "tcp:9011:interface=10.1.2.3"]
    )
    assert options["advertise"] == "10.1.2.3:9011"
    with pytest.raises(usage.UsageError, match="--advertise"):
        scheduler_tap.Options().parseOptions(
            ["--hot-standby", "--store", "postgresql://u@db/t", "--advertise", "x"]
        )
