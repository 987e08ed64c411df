"""
The handshake's mutual challenge-response: pure functions, no I/O.

Both sides share a secret (one per role: clients and workers may hold
different ones).  The secret never crosses the wire; each side proves it
knows it with an HMAC-SHA256 over the whole handshake so far:

    peer      -> scheduler   Hello(version, role, name, slots, types, peer nonce)
    scheduler -> peer        Challenge(scheduler name, scheduler nonce, scheduler proof)
    peer      -> scheduler   Proof(peer proof)
    scheduler -> peer        Welcome(limits)   or   Error(ERROR_AUTH)

    transcript      = LABEL || u32 len(hello body) || hello body
                            || u16 len(scheduler name) || scheduler name || scheduler nonce
    scheduler proof = HMAC-SHA256(secret, b"scheduler" || transcript)
    peer proof      = HMAC-SHA256(secret, b"peer" || transcript)

The hello body is the encoded Hello frame as sent, so every field of it
(role, name, slots, task types, version) is covered by both proofs: none can
be changed on the way.  Each side's nonce is fresh, so a recorded handshake
cannot be replayed against either; the scheduler proves itself first, so a
peer detects a fake scheduler before it sends or accepts any work.  The
distinct labels keep one side's proof from ever serving as the other's.
Proofs are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from taskmesh import wire
from taskmesh.errors import AuthenticationFailed

__all__ = ["AuthenticationFailed", "PeerHandshake", "RoleSecrets", "SchedulerHandshake"]

LABEL = b"taskmesh-auth-v2"
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


def new_nonce() -> bytes:
    """Fresh random bytes from the operating system's generator."""
    return os.urandom(wire.NONCE_SIZE)


def transcript(hello_body: bytes, scheduler_name: str, scheduler_nonce: bytes) -> bytes:
    name = scheduler_name.encode("utf-8")
    return b"".join(
        (LABEL, _U32.pack(len(hello_body)), hello_body, _U16.pack(len(name)), name, scheduler_nonce)
    )


def scheduler_proof(secret: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, b"scheduler" + transcript, hashlib.sha256).digest()


def peer_proof(secret: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, b"peer" + transcript, hashlib.sha256).digest()


def matches(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison: how long it takes says nothing about the secret."""
    return hmac.compare_digest(expected, received)


@dataclass(frozen=True)
class RoleSecrets:
    """The scheduler's secrets: one for clients, one for workers (often the same)."""

    client: bytes
    worker: bytes

    def for_role(self, role: int) -> bytes:
        return self.worker if role == wire.ROLE_WORKER else self.client

    @classmethod
    def shared(cls, secret: bytes) -> RoleSecrets:
        return cls(client=secret, worker=secret)


class SchedulerHandshake:
    """The scheduler's side of one connection's handshake."""

    def __init__(self, secrets: RoleSecrets, name: str) -> None:
        self._secrets = secrets
        self._name = name
        self._pending: tuple[bytes, bytes] | None = None  # (secret, transcript)

    @property
    def challenged(self) -> bool:
        return self._pending is not None

    def challenge(self, hello: wire.Hello, hello_body: bytes) -> wire.Challenge:
        secret = self._secrets.for_role(hello.role)
        nonce = new_nonce()
        script = transcript(hello_body, self._name, nonce)
        self._pending = (secret, script)
        return wire.Challenge(name=self._name, nonce=nonce, proof=scheduler_proof(secret, script))

    def check(self, proof: wire.Proof) -> None:
        """Raise AuthenticationFailed unless the peer proved it holds its role's secret."""
        if self._pending is None:
            raise AuthenticationFailed("a proof before any challenge")
        secret, script = self._pending
        self._pending = None
        if not matches(peer_proof(secret, script), proof.proof):
            raise AuthenticationFailed(
                "authentication failed: the proof does not match this scheduler's secret for that role"
            )


class PeerHandshake:
    """A worker's or client's side of one connection's handshake."""

    def __init__(self, secret: bytes, hello: wire.Hello) -> None:
        self._secret = secret
        self.hello = wire.Hello(
            role=hello.role,
            name=hello.name,
            slots=hello.slots,
            task_types=hello.task_types,
            nonce=new_nonce(),
        )
        #: The hello as sent: what both proofs cover.
        self.hello_body = wire.encode(self.hello)
        self.answered = False

    def answer(self, challenge: wire.Challenge) -> wire.Proof:
        """Our proof for the challenge; AuthenticationFailed if the scheduler's own proof is wrong."""
        script = transcript(self.hello_body, challenge.name, challenge.nonce)
        if not matches(scheduler_proof(self._secret, script), challenge.proof):
            raise AuthenticationFailed(
                "the scheduler did not prove it knows our secret: the secrets differ, "
                "or it is not the scheduler you meant"
            )
        self.answered = True
        return wire.Proof(peer_proof(self._secret, script))
