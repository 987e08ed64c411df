"""
The sans-I/O client connection core on its own: no transport, no event
loop, a recording Output and hand-made answers; and the asyncio driver's
batcher.  (The Twisted driver is covered by test_protocols, the asyncio one
by the integration tests.)
"""

from __future__ import annotations

from typing import Any

import pytest

from taskmesh import wire
from taskmesh.errors import AuthenticationFailed, SchedulerGone
from taskmesh.net.auth import RoleSecrets, SchedulerHandshake
from taskmesh.net.connection import ClientConnection, PeerMisbehaved, RecordBatcher
from taskmesh.net.frames import FrameReader

SECRET = b"s" * 32


class Recorder:
    """An Output that keeps what the core asks for."""

    def __init__(self) -> None:
        self.closing = False
        self.sent: list[wire.Message] = []
        self.queued: list[tuple[type, object]] = []
        self.welcomes: list[wire.Welcome] = []
        self.failed: list[tuple[int, str]] = []

    def send(self, message: wire.Message) -> None:
        self.sent.append(message)

    def queue(self, message_class: type, record: object, size: int) -> None:
        self.queued.append((message_class, record))

    def fail(self, code: int, reason: str) -> None:
        self.failed.append((code, reason))
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def welcomed(self, welcome: wire.Welcome) -> None:
        self.welcomes.append(welcome)


class Box:
    """An Answer: what it was fired with."""

    def __init__(self) -> None:
        self.called = False
        self.value: Any = None
        self.error: Exception | None = None

    def callback(self, result: Any) -> None:
        assert not self.called, "fired twice"
        self.called, self.value = True, result

    def errback(self, fail: Any = None) -> None:
        assert not self.called, "fired twice"
        self.called, self.error = True, fail


def welcomed(secret: bytes = SECRET) -> tuple[ClientConnection, Recorder]:
    output = Recorder()
    core = ClientConnection(output, "c", SECRET)
    scheduler = SchedulerHandshake(RoleSecrets.shared(secret), "sched")
    hello = wire.decode(core.hello_body)
    assert isinstance(hello, wire.Hello) and hello.role == wire.ROLE_CLIENT
    core.message_received(scheduler.challenge(hello, core.hello_body))
    if secret != SECRET:
        return core, output
    (proof,) = output.sent
    assert isinstance(proof, wire.Proof)
    scheduler.check(proof)  # the scheduler accepts our proof
    core.message_received(wire.Welcome("sched", max_frame=1 << 20, max_payload=1000))
    assert output.welcomes and core.welcome is not None
    return core, output


def test_the_handshake_then_a_submission_its_id_and_its_result() -> None:
    core, output = welcomed()
    answer, ids = Box(), []
    core.submit(answer, "sha256", b"x", on_id=ids.append)
    ((message_class, record),) = output.queued
    assert message_class is wire.Submit
    request = record[0]  # type: ignore[index]
    core.message_received(wire.Accepted([(request, 42, 0)]))
    assert ids == [42] and not answer.called
    core.message_received(wire.Results([(42, wire.STATUS_OK, b"digest")]))
    assert answer.value == b"digest"


def test_a_scheduler_that_cannot_prove_our_secret_is_caught_before_any_work() -> None:
    core, output = welcomed(secret=b"t" * 32)
    assert output.failed and output.failed[0][0] == wire.ERROR_AUTH
    assert isinstance(core.ready_failure("lost"), AuthenticationFailed)


def test_an_abandoned_answer_is_not_fired_and_others_fail_when_the_connection_goes() -> None:
    core, output = welcomed()
    abandoned, waiting = Box(), Box()
    core.submit(abandoned, "sha256", b"x")
    core.submit(waiting, "sha256", b"y")
    requests = [record[0] for _, record in output.queued]  # type: ignore[index]
    core.message_received(wire.Accepted([(requests[0], 1, 0), (requests[1], 2, 0)]))
    abandoned.called = True  # its caller gave up (a timeout cancelled it)
    core.message_received(wire.Results([(1, wire.STATUS_OK, b"late")]))
    assert abandoned.value is None
    core.connection_lost("gone")
    assert isinstance(waiting.error, SchedulerGone)


def test_too_large_payloads_and_requests_before_the_welcome_are_refused_unsent() -> None:
    output = Recorder()
    early = Box()
    ClientConnection(output, "c", SECRET).submit(early, "sha256", b"x")
    assert isinstance(early.error, SchedulerGone) and not output.queued
    core, output = welcomed()
    large = Box()
    core.submit(large, "sha256", b"x" * 1001)
    assert "exceeds the scheduler's limit" in str(large.error) and not output.queued


def test_an_answer_to_nothing_is_misbehaviour() -> None:
    core, _ = welcomed()
    with pytest.raises(PeerMisbehaved):
        core.message_received(wire.Accepted([(99, 1, 0)]))


def test_the_batcher_coalesces_a_turn_s_records_into_frames_under_the_limit() -> None:
    batcher = RecordBatcher(send_limit=200)
    options = wire.DEFAULT_OPTIONS
    for i in range(20):
        batcher.queue(wire.Submit, (i, "sha256", b"p" * 10, options), 16)
    batcher.send(wire.Heartbeat())
    frames = FrameReader(1 << 20).feed(batcher.data())
    messages = [wire.decode(frame) for frame in frames]
    assert all(len(frame) <= 200 for frame in frames)
    submitted = [record[0] for m in messages if isinstance(m, wire.Submit) for record in m.records]
    assert submitted == list(range(20)) and len(messages) > 2
    assert isinstance(messages[-1], wire.Heartbeat)
    assert batcher.data() == b""
