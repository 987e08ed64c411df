"""
The handshake as docs/protocol.md shows it (§6.1.1 test vectors, §12.1
frames 1 to 4 and §12.2 frame A): the hex strings of the document are the
bytes the real ClientProtocol and SchedulerProtocol exchange in memory, with
the example's fixed nonces, and each decodes to what the tables say.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from taskmesh import wire
from taskmesh.core.scheduler import Scheduler
from taskmesh.net import auth
from taskmesh.net.auth import RoleSecrets
from taskmesh.net.client_protocol import ClientProtocol
from taskmesh.net.scheduler_protocol import SchedulerFactory

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
SECRET = b"0123456789abcdef0123456789abcdef"
PEER_NONCE = bytes(range(32))
SCHEDULER_NONCE = bytes(range(32, 64))


def documented_frame(heading: str) -> bytes:
    """The frame's hex string, the first block after "as one hex string:" in that section."""
    start = DOC.index(f"\n{heading}\n")
    match = re.compile(r"bytes on the wire .*?as one hex string:\n\n```\n([0-9a-f]+)\n```", re.S)
    found = match.search(DOC, start)
    assert found is not None, heading
    return bytes.fromhex(found.group(1))


def body_of(frame: bytes) -> bytes:
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


def test_the_test_vector_hello_is_the_one_of_the_tests() -> None:
    hello = wire.Hello(role=wire.ROLE_WORKER, name="w1", slots=2, task_types=("sha256",), nonce=PEER_NONCE)
    start = DOC.index("#### 6.1.1 Test vectors")
    found = re.search(r"as one hex string:\n\n```\n([0-9a-f]+)\n```", DOC[start:])
    assert found is not None
    assert body_of(bytes.fromhex(found.group(1))) == wire.encode(hello)
    script = auth.transcript(wire.encode(hello), "taskmesh-scheduler", SCHEDULER_NONCE)
    section = DOC[start : DOC.index("### 6.2 ")]
    assert auth.scheduler_proof(SECRET, script).hex() in section
    assert auth.peer_proof(SECRET, script).hex() in section


def test_the_worked_example_handshake_is_what_the_protocols_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    core = Scheduler(clock)
    factory = SchedulerFactory(core, clock, RoleSecrets.shared(SECRET))
    scheduler, scheduler_transport = factory.buildProtocol(None), StringTransport()
    scheduler.makeConnection(scheduler_transport)

    monkeypatch.setattr(auth, "new_nonce", lambda: PEER_NONCE)
    # The client's nonce is drawn when its connection core is made.
    client, client_transport = ClientProtocol(clock, "demo-client", secret=SECRET), StringTransport()
    client.makeConnection(client_transport)
    hello = client_transport.value()
    assert hello == documented_frame("#### 1. Client → scheduler: Hello")
    client_transport.clear()

    monkeypatch.setattr(auth, "new_nonce", lambda: SCHEDULER_NONCE)
    scheduler.dataReceived(hello)
    challenge = scheduler_transport.value()
    assert challenge == documented_frame("#### 2. Scheduler → client: Challenge")
    assert isinstance(wire.decode(body_of(challenge)), wire.Challenge)
    script = auth.transcript(body_of(hello), "taskmesh-scheduler", SCHEDULER_NONCE)
    assert script.hex() in DOC
    scheduler_transport.clear()

    client.dataReceived(challenge)
    proof = client_transport.value()
    assert proof == documented_frame("#### 3. Client → scheduler: Proof")
    assert wire.decode(body_of(proof)) == wire.Proof(auth.peer_proof(SECRET, script))

    scheduler.dataReceived(proof)
    welcome = scheduler_transport.value()
    assert welcome == documented_frame("#### 4. Scheduler → client: Welcome")
    client.dataReceived(welcome)
    assert client.welcome is not None and client.welcome.prefetch == 2


def test_the_worker_hello_of_the_example() -> None:
    hello = wire.Hello(
        role=wire.ROLE_WORKER, name="demo-worker", slots=1, task_types=("sha256",), nonce=PEER_NONCE
    )
    assert body_of(documented_frame("#### A. Worker → scheduler: Hello")) == wire.encode(hello)


def test_every_frame_of_the_document_decodes() -> None:
    """Each "bytes on the wire" dump is one whole frame that decodes, and says its own size."""
    dumps = re.findall(
        r"(\d+) bytes on the wire \(4-byte length prefix \+ (\d+)-byte body\), "
        r"as one hex string:\n\n```\n([0-9a-f]+)\n```",
        DOC,
    )
    assert len(dumps) > 30
    for total, body_size, text in dumps:
        frame = bytes.fromhex(text)
        assert len(frame) == int(total) and len(body_of(frame)) == int(body_size), text
        wire.decode(body_of(frame))
