"""
The hot standby's answer in memory: the Standby frame and its range checks;
a standby scheduler shakes hands and points to the leader, never welcomes;
the client core turns the pointer into NotLeader, the worker follows it
instead of giving up; iosim carries a real client to a standby and back.
"""

from __future__ import annotations

import struct

import pytest
from handshakes import SECRET, SECRETS, frame, frames, shake
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.core.scheduler import Scheduler
from taskmesh.errors import NotLeader
from taskmesh.handlers import HandlerRegistry, Sha256Handler
from taskmesh.net.auth import PeerHandshake
from taskmesh.net.client_protocol import ClientProtocol
from taskmesh.net.scheduler_protocol import SchedulerFactory
from taskmesh.net.standby import LeaderSwitch, StandbyFactory, StandbyProtocol
from taskmesh.net.worker_protocol import WorkerFactory

WORKER_HELLO = wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=("sha256",))
CLIENT_HELLO = wire.Hello(role=wire.ROLE_CLIENT, name="c")


def test_a_standby_frame_round_trips_and_is_laid_out_as_documented() -> None:
    body = wire.encode(wire.Standby("b.example:9001"))
    assert body == b"\x09\x0e" + b"b.example:9001"
    assert wire.decode(body) == wire.Standby("b.example:9001")
    assert wire.decode(b"\x09\x00") == wire.Standby("")


@pytest.mark.parametrize(
    "body",
    [
        b"\x09",  # no length
        b"\x09\x05abc",  # shorter than its length
        b"\x09\x01ab",  # bytes after it
        b"\x09\x03a b",  # a space
        b"\x09\x02\xc3\xa9",  # not ASCII
        b"\x09\x01\n",  # a control character
    ],
)
def test_a_malformed_standby_frame_is_refused(body: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode(body)


def test_a_leader_address_longer_than_the_limit_cannot_be_sent() -> None:
    wire.encode(wire.Standby("a" * wire.MAX_LEADER_ADDRESS))
    with pytest.raises(wire.ProtocolError, match="255"):
        wire.encode(wire.Standby("a" * (wire.MAX_LEADER_ADDRESS + 1)))


@given(st.binary(max_size=300))
def test_any_bytes_after_the_kind_decode_or_are_refused(rest: bytes) -> None:
    try:
        message = wire.decode(b"\x09" + rest)
    except wire.ProtocolError:
        return
    assert isinstance(message, wire.Standby)
    assert wire.encode(message) == b"\x09" + rest


def standby(leader: str = "leader.example:9001", max_connections: int = 100) -> StandbyFactory:
    return StandbyFactory(Clock(), SECRETS, lambda: leader, "s2", max_connections=max_connections)


def connect(factory: StandbyFactory) -> tuple[StandbyProtocol, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.mark.parametrize("hello", [WORKER_HELLO, CLIENT_HELLO])
def test_a_standby_shakes_hands_then_points_to_the_leader_and_closes(hello: wire.Hello) -> None:
    protocol, transport = connect(standby())
    assert shake(protocol, transport, hello) == [wire.Standby("leader.example:9001")]
    assert transport.disconnecting


def test_a_standby_points_nobody_anywhere_without_the_secret() -> None:
    protocol, transport = connect(standby())
    hello = PeerHandshake(b"not the secret, long enough", CLIENT_HELLO).hello_body
    protocol.dataReceived(struct.pack(">I", len(hello)) + hello)
    transport.clear()
    protocol.dataReceived(frame(wire.Proof(bytes(wire.PROOF_SIZE))))
    (error,) = frames(transport.value())
    assert isinstance(error, wire.Error) and error.code == wire.ERROR_AUTH
    assert transport.disconnecting


def test_a_standby_accepts_nothing_but_the_handshake() -> None:
    protocol, transport = connect(standby())
    protocol.dataReceived(frame(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])))
    (error,) = frames(transport.value())
    assert isinstance(error, wire.Error) and "expected a hello first" in error.message


def test_a_standby_refuses_another_version_and_connections_beyond_its_limit() -> None:
    factory = standby(max_connections=1)
    protocol, transport = connect(factory)
    hello = wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="c", version=1))
    protocol.dataReceived(struct.pack(">I", len(hello)) + hello)
    (error,) = frames(transport.value())
    assert isinstance(error, wire.Error) and error.code == wire.ERROR_VERSION
    _, second = connect(factory)
    (error,) = frames(second.value())
    assert isinstance(error, wire.Error) and error.code == wire.ERROR_LIMIT


def test_the_client_core_turns_the_pointer_into_not_leader() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    failures: list[Failure] = []
    client.ready.addErrback(failures.append)
    answer_as_standby(client, transport, "b.example:9001")
    assert transport.disconnecting and client.welcome is None
    client.connectionLost(Failure(ConnectionDone()))
    error = failures[-1].value
    assert isinstance(error, NotLeader) and error.leader == "b.example:9001"
    assert "is a standby scheduler; the leader is at b.example:9001" in str(error)


def test_a_standby_without_a_leader_says_so() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    failures: list[Failure] = []
    client.ready.addErrback(failures.append)
    answer_as_standby(client, transport, "")
    client.connectionLost(Failure(ConnectionDone()))
    error = failures[0].value
    assert isinstance(error, NotLeader) and error.leader is None and "knows no leader" in str(error)


def test_a_standby_frame_before_the_proof_is_refused() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    transport.clear()
    client.dataReceived(frame(wire.Standby("evil.example:1")))
    (error,) = frames(transport.value())
    assert isinstance(error, wire.Error) and "does not expect Standby" in error.message
    assert client.core.standby is None


def answer_as_standby(peer: object, transport: StringTransport, leader: str) -> None:
    """Be a standby toward a client or worker protocol: the real handshake, then Standby."""
    standby_factory = standby(leader)
    scheduler, scheduler_transport = connect(standby_factory)
    # Carry the peer's hello to the standby, its challenge back, the proof over, the answer back.
    for _ in range(2):
        scheduler.dataReceived(transport.value())
        transport.clear()
        peer.dataReceived(scheduler_transport.value())  # type: ignore[attr-defined]
        scheduler_transport.clear()


def test_a_worker_follows_the_pointer_instead_of_giving_up() -> None:
    refused: list[str] = []
    pointed: list[str] = []
    factory = WorkerFactory(
        Clock(),
        HandlerRegistry([Sha256Handler()]),
        1,
        "w",
        lambda *args: None,  # type: ignore[arg-type,return-value]
        secret=SECRET,
        on_refused=refused.append,
        on_standby=pointed.append,
    )
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    answer_as_standby(worker, transport, "a.example:9001")
    assert pointed == ["a.example:9001"] and refused == [] and worker.core is None
    assert transport.disconnecting


def worker_factory() -> WorkerFactory:
    return WorkerFactory(
        Clock(),
        HandlerRegistry([Sha256Handler()]),
        1,
        "w",
        lambda *args: None,  # type: ignore[arg-type,return-value]
        secret=SECRET,
    )


def test_connections_that_end_before_a_welcome_count_as_failed_attempts() -> None:
    """
    The service backs off on them: a standby that knows no leader, or a peer
    that is not taskmesh, would otherwise be tried about once a second
    forever (ClientService counts only connections that were never made).
    """
    factory = worker_factory()
    for count in (1, 2):
        worker = factory.buildProtocol(None)
        transport = StringTransport()
        worker.makeConnection(transport)
        answer_as_standby(worker, transport, "")  # a standby that knows no leader yet
        worker.connectionLost(Failure(ConnectionDone()))
        assert factory.unwelcomed == count
    text = factory.buildProtocol(None)
    text.makeConnection(StringTransport())
    text.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
    text.connectionLost(Failure(ConnectionDone()))
    assert factory.unwelcomed == 3
    assert factory.last_lost is not None and "is not a taskmesh scheduler" in factory.last_lost
    # A standby that names the leader is not a failure: the next attempt goes there.
    pointed = factory.buildProtocol(None)
    transport = StringTransport()
    pointed.makeConnection(transport)
    answer_as_standby(pointed, transport, "a.example:9001")
    pointed.connectionLost(Failure(ConnectionDone()))
    assert factory.unwelcomed == 3


def test_a_welcome_clears_the_count_of_failed_connections() -> None:
    factory = worker_factory()
    factory.unwelcomed = 5
    core = Scheduler(Clock())
    scheduler = SchedulerFactory(core, Clock(), SECRETS, "s1").buildProtocol(None)
    scheduler_transport = StringTransport()
    scheduler.makeConnection(scheduler_transport)
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    for _ in range(3):  # hello, challenge, proof, welcome
        scheduler.dataReceived(transport.value())
        transport.clear()
        worker.dataReceived(scheduler_transport.value())
        scheduler_transport.clear()
    assert worker.core is not None and factory.unwelcomed == 0


def test_the_switch_serves_the_standby_then_the_leader() -> None:
    clock = Clock()
    switch = LeaderSwitch(standby())
    switch.doStart()
    assert isinstance(switch.buildProtocol(None), StandbyProtocol)
    core = Scheduler(clock)
    leader = SchedulerFactory(core, clock, SECRETS, "s1")
    switch.lead(leader)
    protocol = switch.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    (welcome,) = shake(protocol, transport, WORKER_HELLO)
    assert isinstance(welcome, wire.Welcome) and welcome.name == "s1"
    assert leader._heartbeats is not None and leader._heartbeats.running  # started by the switch
    switch.doStop()
    assert leader._heartbeats is None


def test_the_documented_standby_body_is_what_the_encoder_sends() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = doc[doc.index("### 5.22 Standby") : doc.index("## 6. The connection")]
    body = bytes.fromhex(section.split("sends the body `")[1].split("`")[0].replace(" ", ""))
    assert body == wire.encode(wire.Standby("b.example:9001"))
