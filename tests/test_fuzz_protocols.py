"""
Structure-aware fuzzing of the three protocols in memory (Hypothesis).

Valid messages of every kind are generated, encoded, then mutated (bytes
flipped, cut, garbage appended, the kind changed) and fed in frames to a
scheduler (before the hello, as a client, as a worker), a worker and a client.
Whatever comes, no exception may escape a protocol, no bug may be logged
(``log.failure``), a connection that is dropped is told why first, and the
scheduler keeps serving a bystander connection.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from handshakes import SECRET, SECRETS, shake, welcome_peer  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.handlers import HandlerRegistry, Sha256Handler, SleepHandler
from taskmesh.net.client_protocol import ClientProtocol
from taskmesh.net.scheduler_protocol import SchedulerFactory
from taskmesh.net.worker_protocol import WorkerFactory

EXAMPLES = 1000

ids = st.one_of(st.integers(0, 50), st.integers(0, 2**64 - 1))
u32 = st.integers(0, 2**32 - 1)
names = st.text(max_size=12)
types = st.sampled_from(["sha256", "sleep", "t", "", "ünï"])
blobs = st.binary(max_size=48)
statuses = st.integers(0, 4)
options = st.builds(
    wire.TaskOptions,
    priority=st.integers(-(2**31), 2**31 - 1),
    timeout=st.none() | st.floats(0.001, 1000.0),
    max_attempts=st.integers(0, 0xFFFF),
    key=st.none() | st.text(min_size=1, max_size=16),
    retry_on_error=st.booleans(),
    no_result=st.booleans(),
)
small = {"max_size": 4}
messages = st.one_of(
    st.builds(
        wire.Hello,
        role=st.sampled_from([wire.ROLE_CLIENT, wire.ROLE_WORKER, 0, 7]),
        name=names,
        slots=st.integers(0, 5000),
        task_types=st.lists(types, **small).map(tuple),
        version=st.sampled_from([wire.PROTOCOL_VERSION, wire.PROTOCOL_VERSION, 0, 9]),
        nonce=st.binary(min_size=32, max_size=32),
    ),
    st.builds(
        wire.Welcome,
        name=names,
        max_frame=st.integers(0, 2**32 - 1),
        max_payload=u32,
        heartbeat_ms=u32,
        tolerance=st.integers(0, 0xFFFF),
        version=st.sampled_from([wire.PROTOCOL_VERSION, 3]),
        prefetch=st.integers(0, 0xFFFF),
    ),
    st.builds(wire.Error, code=st.integers(0, 0xFFFF), message=names),
    st.builds(
        wire.Challenge,
        name=names,
        nonce=st.binary(min_size=32, max_size=32),
        proof=st.binary(min_size=32, max_size=32),
    ),
    st.builds(wire.Proof, proof=st.binary(min_size=32, max_size=32)),
    st.just(wire.Heartbeat()),
    st.just(wire.StatusRequest()),
    st.builds(wire.StatusReport, json=st.sampled_from(["{}", "[]", "{", json.dumps({"tasks": {}})])),
    st.builds(wire.Submit, st.lists(st.tuples(u32, types, blobs, options), **small)),
    st.builds(wire.Accepted, st.lists(st.tuples(u32, ids, st.integers(0, 255)), **small)),
    st.builds(wire.Rejected, st.lists(st.tuples(u32, names), **small)),
    st.builds(wire.Results, st.lists(st.tuples(ids, statuses, blobs), **small)),
    st.builds(wire.Assign, st.lists(st.tuples(ids, types, blobs), **small)),
    st.builds(wire.Query, st.lists(st.tuples(ids, st.booleans()), **small)),
    st.builds(wire.Cancel, st.lists(ids, **small)),
    st.builds(
        wire.JobSubmit,
        request=u32,
        task_type=types,
        priority=st.integers(-(2**31), 2**31 - 1),
        chunk_size=u32,
        size_hint=st.integers(0, 2**64 - 1),
    ),
    st.builds(wire.JobAccepted, request=u32, job_id=ids, flags=st.integers(0, 255)),
    st.builds(wire.JobItems, job_id=ids, first_index=ids, payloads=st.lists(blobs, **small)),
    st.builds(wire.JobEnd, job_id=ids, total=ids),
    st.builds(wire.JobResults, st.lists(st.tuples(ids, ids, statuses, blobs), **small)),
    st.builds(wire.AssignChunks, st.lists(st.tuples(ids, types, st.lists(blobs, **small)), **small)),
    st.builds(
        wire.ChunkResults,
        st.lists(st.tuples(ids, u32, st.lists(st.tuples(st.integers(0, 1), blobs), **small)), **small),
    ),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame: a valid message's body, perhaps mutated, with its length prefix."""
    message = draw(messages)
    try:
        body = bytearray(wire.encode(message))
    except (ValueError, struct.error, OverflowError):
        body = bytearray(draw(st.binary(min_size=1, max_size=32)))
    mutation = draw(st.sampled_from(["none", "none", "flip", "cut", "append", "kind"]))
    if mutation == "flip" and body:
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(body) - 1))
            body[position] = draw(st.integers(0, 255))
    elif mutation == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == "append":
        body += draw(st.binary(min_size=1, max_size=16))
    elif mutation == "kind" and body:
        body[0] = draw(st.sampled_from([*range(0x01, 0x07), *range(0x10, 0x1B), 0x20, 0x21, 0x22, 0x7F]))
    return struct.pack(">I", len(body)) + bytes(body)


streams = st.lists(frames(), min_size=1, max_size=6)
cuts = st.lists(st.integers(1, 64), max_size=4)


def deliver(protocol: Any, stream: bytes, sizes: list[int]) -> None:
    """Feed the bytes in reads of the given sizes (then the rest at once)."""
    offset = 0
    for size in sizes:
        protocol.dataReceived(stream[offset : offset + size])
        offset += size
    protocol.dataReceived(stream[offset:])


@contextmanager
def no_bugs_logged() -> Iterator[None]:
    failures: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not failures, [event.get("log_format") for event in failures]


def written(transport: StringTransport) -> list[wire.Message]:
    data = transport.value()
    out = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        out.append(wire.decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return out


def told_why_if_dropped(protocol: Any, transport: StringTransport) -> None:
    """A connection we drop (not one whose peer said goodbye with an Error) is told why."""
    if transport.disconnecting and protocol.closed_because is not None and not transport.disconnected:
        sent = written(transport)
        assert sent and isinstance(sent[-1], wire.Error), sent


class SchedulerRig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.core = Scheduler(self.clock, policy=Policy(prefetch=1))
        self.factory = SchedulerFactory(self.core, self.clock, SECRETS, "s", 1 << 16, 4096)

    def connect(self, hello: wire.Hello | None = None) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if hello is not None:
            shake(protocol, transport, hello)
        return protocol, transport

    def bystander_is_served(self, bystander: Any, transport: StringTransport) -> None:
        transport.clear()
        bystander.dataReceived(struct.pack(">I", 1) + wire.encode(wire.StatusRequest()))
        (report,) = written(transport)
        assert isinstance(report, wire.StatusReport)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from(["fresh", "client", "worker"]),
    chunks=streams,
    sizes=cuts,
)
def test_the_scheduler_survives_anything(role: str, chunks: list[bytes], sizes: list[int]) -> None:
    rig = SchedulerRig()
    with no_bugs_logged():
        bystander, bystander_transport = rig.connect(wire.Hello(role=wire.ROLE_CLIENT, name="b"))
        rig.connect(wire.Hello(role=wire.ROLE_WORKER, name="w", slots=2, task_types=("sha256", "t")))
        hello = {
            "fresh": None,
            "client": wire.Hello(role=wire.ROLE_CLIENT, name="c"),
            "worker": wire.Hello(role=wire.ROLE_WORKER, name="f", slots=3, task_types=("sha256", "sleep")),
        }[role]
        target, transport = rig.connect(hello)
        deliver(target, b"".join(chunks), sizes)
        rig.clock.advance(0)
        told_why_if_dropped(target, transport)
        rig.bystander_is_served(bystander, bystander_transport)
        target.connectionLost(Failure(ConnectionDone()))
        rig.clock.advance(60)
        rig.bystander_is_served(bystander, bystander_transport)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=streams, sizes=cuts)
def test_a_worker_survives_any_scheduler(chunks: list[bytes], sizes: list[int]) -> None:
    clock = Clock()
    registry = HandlerRegistry([Sha256Handler(), SleepHandler(clock)])
    factory = WorkerFactory(
        clock,
        registry,
        2,
        "w",
        run_blocking=lambda cpu, function, argument: None,
        secret=SECRET,  # type: ignore[arg-type,return-value]
    )
    with no_bugs_logged():
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if chunks[0][4:5] not in (b"\x02", b"\x07"):  # else fuzz the handshake itself
            welcome_peer(protocol, transport, wire.Welcome("s", 1 << 16, 4096, 1000, 3, prefetch=2))
        deliver(protocol, b"".join(chunks), sizes)
        clock.advance(0)
        told_why_if_dropped(protocol, transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        clock.advance(60)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=streams, sizes=cuts, submit=st.booleans())
def test_a_client_survives_any_scheduler(chunks: list[bytes], sizes: list[int], submit: bool) -> None:
    clock = Clock()
    with no_bugs_logged():
        protocol = ClientProtocol(clock, "c", secret=SECRET)
        transport = StringTransport()
        protocol.makeConnection(transport)
        welcome_peer(protocol, transport, wire.Welcome("s", 1 << 16, 4096, 1000, 3))
        pending = []
        if submit:
            pending = [protocol.submit("sha256", b"x"), protocol.query(1, True), protocol.status()]
            clock.advance(0)
        deliver(protocol, b"".join(chunks), sizes)
        clock.advance(0)
        told_why_if_dropped(protocol, transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        for answer in pending:
            assert answer.called  # nothing waits forever once the connection is gone
            answer.addErrback(lambda failure: None)
        clock.advance(60)
