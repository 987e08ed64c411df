"""
The real handshake, for in-memory protocol tests: a peer's side against a
``SchedulerProtocol``, and a scheduler's side against a worker or client
protocol, both on StringTransports, with a test secret.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.testing import StringTransport

from taskmesh import wire
from taskmesh.net.auth import PeerHandshake, RoleSecrets, SchedulerHandshake

SECRET = b"a test secret, long enough"
SECRETS = RoleSecrets.shared(SECRET)


def frame(message: wire.Message) -> bytes:
    body = wire.encode(message)
    return struct.pack(">I", len(body)) + body


def frames(data: bytes) -> list[wire.Message]:
    """Split what a transport received into decoded messages."""
    messages = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        messages.append(wire.decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return messages


def bodies(data: bytes) -> list[bytes]:
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        out.append(data[4 : 4 + length])
        data = data[4 + length :]
    return out


def shake(
    protocol: Any,
    transport: StringTransport,
    hello: wire.Hello,
    secret: bytes = SECRET,
    bytewise: bool = False,
) -> list[wire.Message]:
    """
    Be a worker or client toward a SchedulerProtocol: send the hello, check
    and answer the challenge.  Returns what the scheduler sent after the
    challenge (the welcome, or an error), and clears the transport.
    """
    handshake = PeerHandshake(secret, hello)
    deliver(protocol, struct.pack(">I", len(handshake.hello_body)) + handshake.hello_body, bytewise)
    sent = frames(transport.value())
    transport.clear()
    assert sent and isinstance(sent[0], wire.Challenge), sent
    deliver(protocol, frame(handshake.answer(sent[0])), bytewise)
    after = frames(transport.value())
    transport.clear()
    return after


def deliver(protocol: Any, data: bytes, bytewise: bool) -> None:
    if bytewise:
        for byte in data:
            protocol.dataReceived(bytes([byte]))
    else:
        protocol.dataReceived(data)


def welcome_peer(
    protocol: Any, transport: StringTransport, welcome: wire.Welcome, secret: bytes = SECRET
) -> wire.Hello:
    """
    Be the scheduler toward a worker or client protocol that just connected:
    read its hello, challenge it, check its proof, welcome it.  Returns its hello.
    """
    (hello_body,) = bodies(transport.value())
    transport.clear()
    hello = wire.decode(hello_body)
    assert isinstance(hello, wire.Hello)
    handshake = SchedulerHandshake(RoleSecrets.shared(secret), welcome.name)
    protocol.dataReceived(frame(handshake.challenge(hello, hello_body)))
    (proof,) = frames(transport.value())
    transport.clear()
    assert isinstance(proof, wire.Proof)
    handshake.check(proof)
    protocol.dataReceived(frame(welcome))
    return hello
