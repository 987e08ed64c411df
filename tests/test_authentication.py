"""
The handshake in memory: for each role, no secret, the wrong secret and the
other role's secret are refused with a reason and nothing is processed; a
replayed handshake is refused; a fake scheduler is caught by a worker and by
a client; nothing but the handshake is accepted before it completes; the
published test vectors hold; secret files are made and checked as promised.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from pathlib import Path

import pytest
from handshakes import SECRET, frame, frames, shake, welcome_peer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.core.scheduler import Scheduler
from taskmesh.errors import AuthenticationFailed
from taskmesh.handlers import HandlerRegistry, Sha256Handler, SleepHandler
from taskmesh.net import auth
from taskmesh.net.auth import PeerHandshake, RoleSecrets, SchedulerHandshake
from taskmesh.net.client_protocol import ClientProtocol
from taskmesh.net.credentials import (
    SecretError,
    create_secret_file,
    peer_secret,
    read_secret_file,
    scheduler_secret,
)
from taskmesh.net.scheduler_protocol import SchedulerFactory
from taskmesh.net.worker_protocol import WorkerFactory

CLIENTS = b"the clients' secret, long enough"
WORKERS = b"the workers' secret, long enough"
HELLOS = {
    "client": wire.Hello(role=wire.ROLE_CLIENT, name="c"),
    "worker": wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=("sha256",)),
}


def scheduler() -> tuple[Scheduler, SchedulerFactory]:
    clock = Clock()
    core = Scheduler(clock)
    return core, SchedulerFactory(core, clock, RoleSecrets(client=CLIENTS, worker=WORKERS), "s")


def connect(factory: SchedulerFactory):  # type: ignore[no-untyped-def]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.mark.parametrize("role", ["client", "worker"])
@pytest.mark.parametrize("which", ["wrong", "other role's", "empty"])
def test_a_wrong_secret_is_refused_with_a_reason_and_nothing_is_processed(role: str, which: str) -> None:
    core, factory = scheduler()
    protocol, transport = connect(factory)
    secret = {
        "wrong": b"not the secret at all, no",
        "other role's": WORKERS if role == "client" else CLIENTS,
        "empty": b"",
    }[which]
    handshake = PeerHandshake(secret, HELLOS[role])
    protocol.dataReceived(struct.pack(">I", len(handshake.hello_body)) + handshake.hello_body)
    (challenge,) = frames(transport.value())
    transport.clear()
    # The scheduler's proof does not verify with our secret: a peer would stop here.
    with pytest.raises(AuthenticationFailed, match="did not prove"):
        handshake.answer(challenge)
    # One that goes on anyway with a proof made from its secret is refused.
    script = auth.transcript(handshake.hello_body, challenge.name, challenge.nonce)
    protocol.dataReceived(frame(wire.Proof(auth.peer_proof(secret, script))))
    protocol.dataReceived(frame(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])))
    (error,) = frames(transport.value())
    assert error == wire.Error(wire.ERROR_AUTH, error.message)
    assert "proof does not match" in error.message
    assert transport.disconnecting
    assert core.stats()["workers"] == [] and core.stats()["tasks"]["queued"] == 0


@pytest.mark.parametrize("role", ["client", "worker"])
def test_the_right_secret_of_each_role_gets_in(role: str) -> None:
    core, factory = scheduler()
    protocol, transport = connect(factory)
    (welcome,) = shake(protocol, transport, HELLOS[role], secret=CLIENTS if role == "client" else WORKERS)
    assert isinstance(welcome, wire.Welcome) and welcome.version == 2


def test_a_replayed_handshake_is_refused() -> None:
    core, factory = scheduler()
    # A genuine session, recorded.
    first, first_transport = connect(factory)
    handshake = PeerHandshake(CLIENTS, HELLOS["client"])
    hello = struct.pack(">I", len(handshake.hello_body)) + handshake.hello_body
    first.dataReceived(hello)
    (challenge,) = frames(first_transport.value())
    proof = frame(handshake.answer(challenge))
    first.dataReceived(proof)
    assert isinstance(frames(first_transport.value())[-1], wire.Welcome)
    # The same bytes again, on a new connection: the scheduler's nonce is new.
    second, second_transport = connect(factory)
    second.dataReceived(hello)
    second.dataReceived(proof)
    *_, error = frames(second_transport.value())
    assert isinstance(error, wire.Error) and error.code == wire.ERROR_AUTH
    assert second.role is None


def test_nothing_but_the_handshake_is_accepted_before_it_completes() -> None:
    core, factory = scheduler()
    protocol, transport = connect(factory)
    handshake = PeerHandshake(CLIENTS, HELLOS["client"])
    protocol.dataReceived(struct.pack(">I", len(handshake.hello_body)) + handshake.hello_body)
    transport.clear()
    protocol.dataReceived(frame(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])))
    (error,) = frames(transport.value())
    assert error.code == wire.ERROR_UNEXPECTED and "expected the proof" in error.message
    assert core.stats()["tasks"]["queued"] == 0


def fake_scheduler_challenge(peer_transport: StringTransport) -> wire.Challenge:
    """What a scheduler that does not know the secret can send: its own proof, with its own key."""
    (hello_body,) = [peer_transport.value()[4:]]
    peer_transport.clear()
    hello = wire.decode(hello_body)
    assert isinstance(hello, wire.Hello)
    return SchedulerHandshake(RoleSecrets.shared(b"a guess at the secret, no"), "evil").challenge(
        hello, hello_body
    )


def test_a_client_catches_a_fake_scheduler_before_sending_anything() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    failures: list[Failure] = []
    client.ready.addErrback(failures.append)
    client.dataReceived(frame(fake_scheduler_challenge(transport)))
    (error,) = frames(transport.value())
    assert isinstance(error, wire.Error) and error.code == wire.ERROR_AUTH
    client.connectionLost(Failure(ConnectionDone()))
    assert failures[0].check(AuthenticationFailed)
    assert "did not prove it knows our secret" in str(failures[0].value)


def test_a_worker_catches_a_fake_scheduler_and_runs_nothing() -> None:
    failed: list[str] = []
    factory = WorkerFactory(
        Clock(),
        HandlerRegistry([Sha256Handler()]),
        1,
        "w",
        lambda *args: None,  # type: ignore[arg-type,return-value]
        secret=SECRET,
        on_authentication_failed=failed.append,
    )
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    worker.dataReceived(frame(fake_scheduler_challenge(transport)))
    transport.clear()
    worker.dataReceived(frame(wire.Welcome("evil", 4096, 1024)) + frame(wire.Assign([(1, "sha256", b"x")])))
    assert worker.core is None and failed and "'evil'" in failed[0]
    assert frames(transport.value()) == []  # no result went out


def test_a_welcome_without_a_challenge_is_refused_by_a_client() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    transport.clear()
    client.dataReceived(frame(wire.Welcome("s", 4096, 1024)))
    assert client.welcome is None and transport.disconnecting


def test_a_scheduler_that_refuses_our_secret_is_reported_as_such() -> None:
    client = ClientProtocol(Clock(), "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    failures: list[Failure] = []
    client.ready.addErrback(failures.append)
    client.dataReceived(frame(wire.Error(wire.ERROR_AUTH, "authentication failed: no")))
    client.connectionLost(Failure(ConnectionDone()))
    assert failures[0].check(AuthenticationFailed) and "refused our secret" in str(failures[0].value)


def test_the_welcome_announces_the_prefetch_and_the_worker_holds_the_scheduler_to_it() -> None:
    clock = Clock()
    factory = WorkerFactory(
        clock,
        HandlerRegistry([SleepHandler(clock)]),
        1,
        "w",
        lambda *args: None,  # type: ignore[arg-type,return-value]
        secret=SECRET,
    )
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    welcome_peer(worker, transport, wire.Welcome("s", 4096, 1024, prefetch=1))
    worker.dataReceived(frame(wire.Assign([(1, "sleep", b"1"), (2, "sleep", b"1")])))  # 1 slot + 1
    assert not transport.disconnecting
    transport.clear()
    worker.dataReceived(frame(wire.Assign([(3, "sleep", b"1")])))
    *_, error = frames(transport.value())
    assert isinstance(error, wire.Error) and "more work than" in error.message


# -- published test vectors (docs/protocol.md) ---------------------------------

VECTOR_SECRET = b"0123456789abcdef0123456789abcdef"
VECTOR_HELLO = wire.Hello(
    role=wire.ROLE_WORKER, name="w1", slots=2, task_types=("sha256",), nonce=bytes(range(32))
)
VECTOR_SCHEDULER_NONCE = bytes(range(32, 64))


def test_the_published_test_vectors() -> None:
    """The worked example of docs/protocol.md, and the formula recomputed by hand with hmac."""
    body = wire.encode(VECTOR_HELLO)
    assert body.hex() == VECTORS["hello body"]
    script = auth.transcript(body, "taskmesh-scheduler", VECTOR_SCHEDULER_NONCE)
    by_hand = (
        b"taskmesh-auth-v2"
        + len(body).to_bytes(4, "big")
        + body
        + len(b"taskmesh-scheduler").to_bytes(2, "big")
        + b"taskmesh-scheduler"
        + VECTOR_SCHEDULER_NONCE
    )
    assert script == by_hand and script.hex() == VECTORS["transcript"]
    scheduler = hmac.new(VECTOR_SECRET, b"scheduler" + by_hand, hashlib.sha256).hexdigest()
    peer = hmac.new(VECTOR_SECRET, b"peer" + by_hand, hashlib.sha256).hexdigest()
    assert auth.scheduler_proof(VECTOR_SECRET, script).hex() == scheduler == VECTORS["scheduler proof"]
    assert auth.peer_proof(VECTOR_SECRET, script).hex() == peer == VECTORS["peer proof"]


VECTORS = {
    "hello body": (
        "01544d53480002020000000200027731000106736861323536"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    ),
    "transcript": (
        "7461736b6d6573682d617574682d7632"
        "00000039"
        "01544d53480002020000000200027731000106736861323536"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "0012"
        "7461736b6d6573682d7363686564756c6572"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    ),
    "scheduler proof": "3da1bcae1e78231855206cc1b968a1ba36eb2cf1cb9e65b242061b8aeaaf7651",
    "peer proof": "d10f841259ad6558e69334de5564726ec960cd28735e7146dd2acecf45948d25",
}


# -- secret files --------------------------------------------------------------


def test_the_scheduler_creates_a_private_secret_that_peers_then_read(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    secret = scheduler_secret(None, environ)
    path = tmp_path / "taskmesh" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 64 and peer_secret(None, environ) == secret
    assert scheduler_secret(None, environ) == secret  # made once, then kept


def test_the_variable_wins_and_a_given_file_must_exist(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "TASKMESH_SECRET": "  from the environment, long  \n"}
    assert peer_secret(None, environ) == b"from the environment, long"
    with pytest.raises(SecretError, match="no secret file"):
        scheduler_secret(str(tmp_path / "missing"), {})


def test_no_secret_at_all_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="start the scheduler once .* or give the scheduler's secret"):
        peer_secret(None, {"XDG_CONFIG_HOME": str(tmp_path)})


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    create_secret_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        read_secret_file(path)


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="shorter than 16"):
        peer_secret(None, {"TASKMESH_SECRET": "short"})


def test_an_explicit_secret_file_wins_over_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "given"
    path.write_text("the secret in the file given\n")
    path.chmod(0o600)
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "TASKMESH_SECRET": "the secret in the environment"}
    assert peer_secret(str(path), environ) == b"the secret in the file given"
    assert scheduler_secret(str(path), environ) == b"the secret in the file given"
    assert peer_secret(None, environ) == b"the secret in the environment"
