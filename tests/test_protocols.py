"""
The protocols in memory: handshake, batching, byte-at-a-time delivery, and
every kind of bad input dropping only the offending connection.
"""

from __future__ import annotations

import json
import struct

import pytest
from handshakes import SECRET, SECRETS, frame, frames, shake, welcome_peer  # noqa: E402
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from taskmesh import wire
from taskmesh.core.scheduler import Policy, Scheduler, TaskFailed
from taskmesh.handlers import HandlerRegistry, Sha256Handler, SleepHandler
from taskmesh.net.client_protocol import ClientProtocol, SchedulerGone, TaskRejected
from taskmesh.net.scheduler_protocol import SchedulerFactory, SchedulerProtocol
from taskmesh.net.worker_protocol import WorkerFactory, WorkerProtocol

HELLO_DIGEST = b"dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f"


def welcomed_client(welcome: wire.Welcome) -> tuple[ClientProtocol, StringTransport, Clock]:
    """A client protocol that went through the real handshake with a scheduler saying ``welcome``."""
    clock = Clock()
    client = ClientProtocol(clock, "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    welcome_peer(client, transport, welcome)
    transport.clear()
    return client, transport, clock


def welcomed_worker(
    welcome: wire.Welcome, factory: WorkerFactory
) -> tuple[WorkerProtocol, StringTransport, Clock]:
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    welcome_peer(worker, transport, welcome)
    transport.clear()
    return worker, transport, factory.clock  # type: ignore[return-value]


class Rig:
    """A scheduler core and factory, with connections on StringTransports."""

    def __init__(self, max_frame: int = 4096, max_payload: int = 1024) -> None:
        self.clock = Clock()
        self.core = Scheduler(self.clock, policy=Policy(prefetch=0))
        self.factory = SchedulerFactory(self.core, self.clock, SECRETS, "s", max_frame, max_payload)

    @property
    def welcome(self) -> wire.Welcome:
        return wire.Welcome("s", self.factory.max_frame, self.factory.max_payload, 2000, 3, prefetch=0)

    def connect(self) -> tuple[SchedulerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def received(self, transport: StringTransport) -> list[wire.Message]:
        self.clock.advance(0)  # let batched records flush
        messages = frames(transport.value())
        transport.clear()
        return messages

    def worker(self, slots: int = 1, types: tuple[str, ...] = ("sha256",)):  # type: ignore[no-untyped-def]
        protocol, transport = self.connect()
        hello = wire.Hello(role=wire.ROLE_WORKER, name="w", slots=slots, task_types=types)
        # The welcome goes out at once; batched records wait for the clock.
        assert shake(protocol, transport, hello) == [self.welcome]
        return protocol, transport

    def client(self):  # type: ignore[no-untyped-def]
        protocol, transport = self.connect()
        assert shake(protocol, transport, wire.Hello(role=wire.ROLE_CLIENT, name="c")) == [self.welcome]
        return protocol, transport


def assert_dropped_with(rig: Rig, transport: StringTransport, code: int) -> str:
    messages = rig.received(transport)
    assert isinstance(messages[-1], wire.Error), messages
    assert messages[-1].code == code
    assert transport.disconnecting
    return messages[-1].message


def test_full_round_trip_fed_one_byte_at_a_time() -> None:
    rig = Rig()
    worker, worker_transport = rig.connect()
    hello = wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=("sha256",))
    assert shake(worker, worker_transport, hello, bytewise=True) == [rig.welcome]

    client, client_transport = rig.connect()
    assert shake(client, client_transport, wire.Hello(role=wire.ROLE_CLIENT, name="c"), bytewise=True) == [
        rig.welcome
    ]
    for byte in frame(wire.Submit([(7, "sha256", b"Hello, World!", wire.DEFAULT_OPTIONS)])):
        client.dataReceived(bytes([byte]))
    assert rig.received(client_transport) == [wire.Accepted([(7, 1, 0)])]
    assert rig.received(worker_transport) == [wire.AssignTasks([(1, "sha256", b"Hello, World!", 1, 3, 0)])]
    for byte in frame(wire.Results([(1, wire.STATUS_OK, HELLO_DIGEST)])):
        worker.dataReceived(bytes([byte]))
    assert rig.received(client_transport) == [wire.Results([(1, wire.STATUS_OK, HELLO_DIGEST)])]


def test_records_of_one_turn_leave_in_one_frame() -> None:
    rig = Rig()
    worker, worker_transport = rig.worker(slots=50)
    client, client_transport = rig.client()
    client.dataReceived(frame(wire.Submit([(i, "sha256", b"x", wire.DEFAULT_OPTIONS) for i in range(20)])))
    accepted = rig.received(client_transport)
    assert len(accepted) == 1 and len(accepted[0].records) == 20
    assigned = rig.received(worker_transport)
    assert len(assigned) == 1 and len(assigned[0].records) == 20


def test_batches_are_split_below_the_frame_limit() -> None:
    rig = Rig(max_frame=4096, max_payload=1024)
    worker, worker_transport = rig.worker(slots=50)
    client, _ = rig.client()
    for i in range(10):
        client.dataReceived(frame(wire.Submit([(i, "sha256", b"p" * 1000, wire.DEFAULT_OPTIONS)])))
    rig.clock.advance(0)
    data = worker_transport.value()
    sizes = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        sizes.append(length)
        data = data[4 + length :]
    assert len(sizes) > 1 and max(sizes) <= 4096
    assigned = rig.received(worker_transport)
    assert [record[0] for message in assigned for record in message.records] == list(range(1, 11))


def test_payload_over_the_limit_is_rejected_with_a_reason() -> None:
    rig = Rig(max_payload=1024)
    client, transport = rig.client()
    client.dataReceived(
        frame(
            wire.Submit(
                [(1, "sha256", b"x" * 1025, wire.DEFAULT_OPTIONS), (2, "", b"x", wire.DEFAULT_OPTIONS)]
            )
        )
    )
    (rejected,) = rig.received(transport)
    assert rejected == wire.Rejected(
        [(1, "payload of 1025 bytes exceeds the limit of 1024 bytes"), (2, "the task type is empty")]
    )
    assert not transport.disconnecting


def test_a_task_whose_type_no_worker_runs_is_accepted_with_a_flag() -> None:
    rig = Rig()
    client, transport = rig.client()
    client.dataReceived(frame(wire.Submit([(1, "nobody-runs-this", b"", wire.DEFAULT_OPTIONS)])))
    assert rig.received(transport) == [wire.Accepted([(1, 1, wire.ACCEPTED_NO_WORKER)])]


@pytest.mark.parametrize(
    "garbage, code",
    [
        (b"\x00\x00\x00\x00", wire.ERROR_MALFORMED),  # empty frame
        (b"\x00\x00\x00\x01\x7f", wire.ERROR_MALFORMED),  # unknown kind
        (b"\x00\x00\x00\x03\x01TM", wire.ERROR_MALFORMED),  # truncated hello
        (frame(wire.Hello(role=9, name="x")), wire.ERROR_UNEXPECTED),  # unknown role
        (
            frame(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])),
            wire.ERROR_UNEXPECTED,
        ),  # no hello first
        (frame(wire.Hello(role=wire.ROLE_CLIENT, name="c", version=99)), wire.ERROR_VERSION),
        (
            frame(wire.Hello(role=wire.ROLE_WORKER, name="w", slots=0, task_types=("a",))),
            wire.ERROR_UNEXPECTED,
        ),
        (frame(wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1)), wire.ERROR_UNEXPECTED),
        (b"\x00\x10\x00\x01" + b"x" * 10, wire.ERROR_FRAME_TOO_LARGE),
    ],
)
def test_bad_input_drops_only_that_connection(garbage: bytes, code: int) -> None:
    rig = Rig()
    worker, worker_transport = rig.worker()
    client, client_transport = rig.client()
    bad, bad_transport = rig.connect()
    bad.dataReceived(garbage)
    reason = assert_dropped_with(rig, bad_transport, code)
    assert reason
    # everybody else is still served
    client.dataReceived(frame(wire.Submit([(1, "sha256", b"Hello, World!", wire.DEFAULT_OPTIONS)])))
    assert rig.received(client_transport) == [wire.Accepted([(1, 1, 0)])]
    worker.dataReceived(frame(wire.Results([(1, wire.STATUS_OK, HELLO_DIGEST)])))
    assert rig.received(client_transport) == [wire.Results([(1, wire.STATUS_OK, HELLO_DIGEST)])]


@pytest.mark.parametrize(
    "greeting, sent",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "'GET / HTTP/1.1' (an HTTP request"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "'SSH-2.0-OpenSSH_9.2'"),
    ],
)
def test_a_peer_speaking_text_is_named_at_once_and_only_it_is_dropped(greeting: bytes, sent: str) -> None:
    """Its first bytes cannot start a frame (a length over any limit) and read as text: say what it sent."""
    rig = Rig()
    client, client_transport = rig.client()
    bad, bad_transport = rig.connect()
    bad.dataReceived(greeting)
    assert bad_transport.disconnecting
    assert bad.closed_because is not None and f"is not a taskmesh peer: it sent {sent}" in bad.closed_because
    answer = bad_transport.value()
    if greeting.startswith(b"GET"):  # a browser is answered in HTTP, saying where it is
        assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n") and b"not HTTP" in answer
    else:
        assert answer == b""
    client.dataReceived(frame(wire.Submit([(1, "sha256", b"Hello, World!", wire.DEFAULT_OPTIONS)])))
    assert rig.received(client_transport) == [wire.Accepted([(1, 1, wire.ACCEPTED_NO_WORKER)])]


@pytest.mark.parametrize(
    "role_hello, message",
    [
        (wire.Hello(role=wire.ROLE_CLIENT, name="c"), wire.Results([(1, 0, b"")])),
        (wire.Hello(role=wire.ROLE_CLIENT, name="c"), wire.Hello(role=wire.ROLE_CLIENT, name="c")),
        (wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=("a",)), wire.Submit([])),
        (wire.Hello(role=wire.ROLE_CLIENT, name="c"), wire.Assign([])),
    ],
)
def test_a_message_the_role_may_not_send_drops_the_connection(role_hello, message) -> None:  # type: ignore[no-untyped-def]
    rig = Rig()
    protocol, transport = rig.connect()
    shake(protocol, transport, role_hello)
    protocol.dataReceived(frame(message))
    assert "may not send" in assert_dropped_with(rig, transport, wire.ERROR_UNEXPECTED)


def test_frames_after_a_fatal_error_are_ignored() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(b"\x00\x00\x00\x01\x7f" + frame(wire.Hello(role=wire.ROLE_CLIENT, name="c")))
    messages = rig.received(transport)
    assert [type(m) for m in messages] == [wire.Error]


def test_a_worker_that_disconnects_gives_its_tasks_back() -> None:
    rig = Rig()
    first, first_transport = rig.worker()
    client, client_transport = rig.client()
    client.dataReceived(frame(wire.Submit([(1, "sha256", b"Hello, World!", wire.DEFAULT_OPTIONS)])))
    rig.received(client_transport)
    assert rig.received(first_transport) == [wire.AssignTasks([(1, "sha256", b"Hello, World!", 1, 3, 0)])]
    first.connectionLost(Failure(ConnectionDone()))
    second, second_transport = rig.worker()
    assert rig.received(second_transport) == [wire.AssignTasks([(1, "sha256", b"Hello, World!", 1, 3, 0)])]


def test_results_for_a_departed_client_are_not_sent_and_do_not_break_anything() -> None:
    rig = Rig()
    worker, _ = rig.worker(slots=2)
    client, client_transport = rig.client()
    client.dataReceived(
        frame(
            wire.Submit(
                [(1, "sha256", b"x", wire.DEFAULT_OPTIONS), (2, "sha256", b"y", wire.DEFAULT_OPTIONS)]
            )
        )
    )
    client.connectionLost(Failure(ConnectionDone()))
    worker.dataReceived(frame(wire.Results([(1, wire.STATUS_OK, b"a"), (2, wire.STATUS_FAILED, b"b")])))
    rig.clock.advance(0)
    tasks = rig.core.stats()["tasks"]
    assert (tasks["succeeded"], tasks["failed"]) == (1, 1)


# -- all three roles wired together in memory (iosim) ------------------------


def test_client_worker_and_scheduler_in_memory() -> None:
    clock = Clock()
    core = Scheduler(clock)
    factory = SchedulerFactory(core, clock, SECRETS)
    registry = HandlerRegistry([Sha256Handler(), SleepHandler(clock)])
    worker_factory = WorkerFactory(clock, registry, 2, "w", run_blocking=lambda f, p: None, secret=SECRET)  # type: ignore[arg-type,return-value]

    _, _, worker_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: worker_factory.buildProtocol(None), clock=clock
    )
    client, _, client_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: ClientProtocol(clock, "c", secret=SECRET), clock=clock
    )

    def pump() -> None:
        for _ in range(5):
            worker_pump.flush()
            client_pump.flush()

    pump()
    assert core.stats()["workers"][0]["slots"] == 2
    results = [client.submit("sha256", b"Hello, World!"), client.submit("sleep", b"3")]
    failed = client.submit("sleep", b"soon")
    box: list[object] = []
    for d in results + [failed]:
        d.addBoth(box.append)
    pump()
    assert box[0] == HELLO_DIGEST
    assert isinstance(box[1], Failure) and box[1].check(TaskFailed)
    clock.advance(3)
    pump()
    assert box[2] == b"slept 3"


def test_client_refuses_an_oversized_payload_before_sending() -> None:
    client, transport, clock = welcomed_client(wire.Welcome("s", 4096, 10))
    box: list[Failure] = []
    client.submit("sha256", b"x" * 11).addErrback(box.append)
    clock.advance(0)
    assert box[0].check(TaskRejected) and "exceeds" in str(box[0].value)
    assert transport.value() == b""


def test_client_fails_every_pending_task_when_the_connection_drops() -> None:
    client, _, clock = welcomed_client(wire.Welcome("s", 4096, 1024))
    box: list[Failure] = []
    client.submit("sha256", b"x").addErrback(box.append)
    clock.advance(0)
    client.dataReceived(frame(wire.Accepted([(1, 5, 0)])))
    client.submit("sha256", b"y").addErrback(box.append)
    client.connectionLost(Failure(ConnectionDone()))
    assert len(box) == 2 and all(f.check(SchedulerGone) for f in box)
    assert client.lost.called


def test_nagle_is_off_so_lone_replies_are_not_delayed() -> None:
    class Transport(StringTransport):
        no_delay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    rig = Rig()
    protocol = rig.factory.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    assert transport.no_delay


def test_a_bug_while_sending_drops_the_connection_instead_of_hanging() -> None:
    client, transport, clock = welcomed_client(wire.Welcome("s", 4096, 1024))
    box: list[Failure] = []
    client.submit("sha256", b"x").addErrback(box.append)
    client.queue(wire.Submit, ("not", "a", "record"), 0)  # cannot be encoded
    clock.advance(0)
    assert transport.disconnecting
    client.connectionLost(Failure(ConnectionDone()))
    assert box and box[0].check(SchedulerGone)


# -- answers, limits and refusals ---------------------------------------------


def test_answers_to_one_submit_come_in_its_order() -> None:
    rig = Rig(max_payload=1024)
    client, transport = rig.client()
    client.dataReceived(
        frame(
            wire.Submit(
                [
                    (1, "sha256", b"ok", wire.DEFAULT_OPTIONS),
                    (2, "sha256", b"x" * 2000, wire.DEFAULT_OPTIONS),
                    (3, "sha256", b"ok", wire.DEFAULT_OPTIONS),
                ]
            )
        )
    )
    answers = rig.received(transport)
    assert [type(m) for m in answers] == [wire.Accepted, wire.Rejected, wire.Accepted]


def test_a_worker_may_only_report_success_or_failure() -> None:
    rig = Rig()
    worker, transport = rig.worker()
    worker.dataReceived(frame(wire.Results([(1, wire.STATUS_PENDING, b"")])))
    assert "may not report status" in assert_dropped_with(rig, transport, wire.ERROR_UNEXPECTED)


def test_a_result_over_the_payload_limit_fails_the_task_instead() -> None:
    rig = Rig(max_payload=1024)
    worker, _ = rig.worker()
    client, client_transport = rig.client()
    client.dataReceived(frame(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])))
    rig.received(client_transport)
    worker.dataReceived(frame(wire.Results([(1, wire.STATUS_OK, b"r" * 1025)])))
    ((task_id, status, reason),) = rig.received(client_transport)[0].records
    assert status == wire.STATUS_FAILED and b"exceeds the limit of 1024 bytes" in reason


def test_an_error_as_first_frame_is_not_answered() -> None:
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(frame(wire.Error(wire.ERROR_INTERNAL, "bye")))
    assert rig.received(transport) == []
    assert transport.disconnecting


def test_another_versions_hello_gets_a_version_error_whatever_follows() -> None:
    body = bytearray(wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="c")))
    body[5:7] = (3).to_bytes(2, "big")
    body += b"fields of version 3"
    rig = Rig()
    protocol, transport = rig.connect()
    protocol.dataReceived(len(body).to_bytes(4, "big") + bytes(body))
    assert "version 3" in assert_dropped_with(rig, transport, wire.ERROR_VERSION)


def connected_client() -> tuple[ClientProtocol, StringTransport, Clock]:
    return welcomed_client(wire.Welcome("s", 4096, 1024, 2000, 3))


def test_a_waiting_query_is_not_answered_by_a_pending_record() -> None:
    client, transport, clock = connected_client()
    waiting: list[object] = []
    peek: list[object] = []
    client.query(5, wait=True).addBoth(waiting.append)
    client.query(5, wait=False).addBoth(peek.append)
    client.dataReceived(frame(wire.Results([(5, wire.STATUS_PENDING, b"running")])))
    assert peek == [(wire.STATUS_PENDING, b"running")] and waiting == []
    client.dataReceived(frame(wire.Results([(5, wire.STATUS_OK, b"done")])))
    assert waiting == [(wire.STATUS_OK, b"done")]


def test_requests_before_the_welcome_send_nothing() -> None:
    client = ClientProtocol(Clock(), "c")
    transport = StringTransport()
    client.makeConnection(transport)
    transport.clear()
    failures: list[Failure] = []
    client.cancel(1).addErrback(failures.append)
    client.query(1, wait=False).addErrback(failures.append)
    assert len(failures) == 2 and transport.value() == b""


def test_a_welcome_of_another_version_is_refused_by_the_client() -> None:
    client = ClientProtocol(Clock(), "c")
    transport = StringTransport()
    client.makeConnection(transport)
    failures: list[Failure] = []
    client.ready.addErrback(failures.append)
    client.dataReceived(frame(wire.Welcome("s", 4096, 1024, version=9)))
    assert transport.disconnecting
    client.connectionLost(Failure(ConnectionDone()))
    assert "version 9" in str(failures[0].value)


def test_a_refused_worker_gives_up_instead_of_reconnecting() -> None:
    clock = Clock()
    refusals: list[str] = []
    registry = HandlerRegistry([Sha256Handler()])
    factory = WorkerFactory(
        clock, registry, 1, "w", lambda f, p: None, on_refused=refusals.append, secret=SECRET
    )  # type: ignore[arg-type,return-value]
    worker = factory.buildProtocol(None)
    transport = StringTransport()
    worker.makeConnection(transport)
    worker.dataReceived(frame(wire.Error(wire.ERROR_VERSION, "version 1 is not supported")))
    assert refusals == ["version 1 is not supported"] and transport.disconnecting


def test_a_worker_drops_a_silent_scheduler_and_heartbeats_a_live_one() -> None:
    clock = Clock()
    registry = HandlerRegistry([Sha256Handler()])
    factory = WorkerFactory(clock, registry, 1, "w", lambda f, p: None, secret=SECRET)  # type: ignore[arg-type,return-value]
    worker, transport, _ = welcomed_worker(
        wire.Welcome("s", 4096, 1024, heartbeat_ms=1000, tolerance=3), factory
    )
    for _ in range(3):
        clock.advance(1)
    assert frames(transport.value()) == [wire.Heartbeat()] * 3
    worker.dataReceived(frame(wire.Heartbeat()))
    clock.advance(3)
    assert not transport.disconnecting
    clock.advance(1)  # 4 s of silence > 3 intervals
    assert transport.disconnecting


def test_submitters_are_paused_while_the_queue_is_full_and_resumed_after() -> None:
    clock = Clock()
    core = Scheduler(clock, policy=Policy(prefetch=0, max_queued=3))
    factory = SchedulerFactory(core, clock, SECRETS, "s", 4096, 1024)
    rig = Rig()
    rig.clock, rig.core, rig.factory = clock, core, factory
    client, transport = rig.client()
    client.dataReceived(frame(wire.Submit([(i, "sha256", b"x", wire.DEFAULT_OPTIONS) for i in range(4)])))
    assert transport.producerState == "paused"
    # Another connection is still served: status, queries, results.
    other, other_transport = rig.client()
    other.dataReceived(frame(wire.StatusRequest()))
    assert other_transport.producerState == "producing"
    (report,) = frames(other_transport.value())
    assert '"paused_submitters": true' in report.json
    worker, _ = rig.worker(slots=2)
    assert transport.producerState == "producing"


def test_a_large_chunk_answer_leaves_in_parts_that_fit_the_frame_limit() -> None:
    clock = Clock()
    registry = HandlerRegistry([Sha256Handler()])
    factory = WorkerFactory(clock, registry, 1, "w", lambda *a: None, secret=SECRET)  # type: ignore[arg-type,return-value]
    worker, transport, _ = welcomed_worker(wire.Welcome("s", 1000, 400), factory)
    worker._report_chunk(7, [(wire.STATUS_OK, b"r" * 100)] * 12)
    clock.advance(0)
    data = transport.value()
    parts = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        assert length <= 1000
        parts.extend(wire.decode(data[4 : 4 + length]).records)
        data = data[4 + length :]
    assert [offset for _, offset, _ in parts] == [0, 4, 8]
    assert sum(len(outcomes) for _, _, outcomes in parts) == 12


def test_a_chunk_answer_over_the_payload_limit_fails_that_item() -> None:
    rig = Rig(max_payload=1024)
    worker, worker_transport = rig.worker()
    client, _ = rig.client()
    core = rig.core
    answers: list = []
    job = core.open_job("sha256", lambda job, records: answers.extend(records), chunk_size=2)
    core.add_job_items(job, 0, [b"a", b"b"])
    (chunk,) = rig.received(worker_transport)[0].records
    worker.dataReceived(frame(wire.ChunkResults([(chunk[0], 0, [(0, b"ok"), (0, b"x" * 2000)])])))
    assert answers[0] == (0, wire.STATUS_OK, b"ok")
    assert answers[1][1] == wire.STATUS_FAILED and b"exceeds the limit" in answers[1][2]


def test_the_factory_fits_chunks_to_its_frame_limit() -> None:
    core = Scheduler(Clock())
    SchedulerFactory(core, Clock(), SECRETS, "s", max_frame=8192, max_payload=1024)
    assert core.policy.max_chunk_bytes == 4096


def test_a_worker_keeps_its_connection_whatever_its_handlers_raise() -> None:
    """Issue 10: exceptions that used to drop the worker's connection now fail only their task."""
    from test_worker_core import HOSTILE, Hostile

    clock = Clock()
    core = Scheduler(clock)
    factory = SchedulerFactory(core, clock, SECRETS)
    registry = HandlerRegistry([Sha256Handler(), Hostile("inline"), Hostile("deferred", deferred=True)])
    worker_factory = WorkerFactory(clock, registry, 1, "w", run_blocking=lambda *a: None, secret=SECRET)  # type: ignore[arg-type,return-value]
    _, worker, worker_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: worker_factory.buildProtocol(None), clock=clock
    )
    client, _, client_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: ClientProtocol(clock, "c", secret=SECRET), clock=clock
    )

    def pump() -> None:
        for _ in range(6):
            clock.advance(0)
            worker_pump.flush()
            client_pump.flush()

    pump()
    outcomes: list[object] = []
    for kind in sorted(HOSTILE):
        for task_type in ("inline", "deferred"):
            client.submit(task_type, kind.encode()).addBoth(outcomes.append)
    client.submit("sha256", b"Hello, World!").addBoth(outcomes.append)
    pump()
    *failures, digest = outcomes
    assert digest == HELLO_DIGEST
    assert len(failures) == 2 * len(HOSTILE)
    for failure in failures:
        assert isinstance(failure, Failure) and failure.check(TaskFailed)
        str(failure.value).encode("utf-8")  # readable: valid UTF-8 whatever the exception's text
    assert not worker.transport.disconnecting
    assert len(core.stats()["workers"]) == 1


def test_task_functions_through_all_three_roles_in_memory() -> None:
    """Arguments, results, progress seen while running, Retry and a traceback, over the real protocols."""
    import taskmesh
    from taskmesh import Client
    from taskmesh.errors import TaskPending
    from taskmesh.functions import task

    clock = Clock()
    gate: Deferred[None] = Deferred()

    @task(blocking=False)
    def add(x: int, y: int) -> int:
        return x + y

    @task
    async def slow(n: int) -> int:
        taskmesh.report_progress(1, n, "first")
        await gate
        return n

    @task(blocking=False)
    def flaky() -> int:
        context = taskmesh.current_task()
        assert context is not None
        if context.attempt < 2:
            raise taskmesh.Retry(delay=0.5)
        return context.attempt

    @task(blocking=False)
    def broken() -> None:
        raise KeyError("missing")

    core = Scheduler(clock)
    factory = SchedulerFactory(core, clock, SECRETS)
    registry = HandlerRegistry([add, slow, flaky, broken])
    worker_factory = WorkerFactory(clock, registry, 4, "w", run_blocking=lambda *a: None, secret=SECRET)  # type: ignore[arg-type,return-value]
    _, _, worker_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: worker_factory.buildProtocol(None), clock=clock
    )
    protocol, _, client_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: ClientProtocol(clock, "c", secret=SECRET), clock=clock
    )

    def pump() -> None:
        for _ in range(8):
            clock.advance(0)
            worker_pump.flush()
            client_pump.flush()

    pump()
    client = Client(protocol)
    box: list[object] = []
    client.submit(add, 2, 3).addBoth(box.append)
    slow_id: list[int] = []
    client.enqueue(slow, 3).addCallback(slow_id.append)
    client.submit(flaky).addBoth(box.append)
    client.submit(broken).addBoth(box.append)
    pump()
    assert box[0] == 5
    assert isinstance(box[1], Failure) and box[1].check(TaskFailed)
    error = box[1].value
    assert (error.type, error.message) == ("KeyError", "'missing'")
    assert "raise KeyError" in error.traceback

    pending: list[object] = []
    client.result(slow_id[0], wait=False).addErrback(pending.append)
    pump()
    (failure,) = pending
    assert isinstance(failure, Failure) and failure.check(TaskPending)
    assert failure.value.state == "running"
    assert failure.value.progress == taskmesh.TaskProgress(1.0, 3.0, "first")
    assert core.stats()["progress"][0]["note"] == "first"

    clock.advance(0.5)  # flaky's retry
    pump()
    assert box[2] == 2
    gate.callback(None)
    pump()
    done: list[object] = []
    client.result(slow_id[0], json=True).addBoth(done.append)
    pump()
    assert done == [3]


def test_a_task_function_s_map_in_memory() -> None:
    from taskmesh import Client
    from taskmesh.functions import task

    clock = Clock()

    @task(blocking=False)
    def add(x: int, y: int = 10) -> int:
        return x + y

    core = Scheduler(clock)
    factory = SchedulerFactory(core, clock, SECRETS)
    worker_factory = WorkerFactory(
        clock, HandlerRegistry([add]), 2, "w", run_blocking=lambda *a: None, secret=SECRET
    )  # type: ignore[arg-type,return-value]
    _, _, worker_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: worker_factory.buildProtocol(None), clock=clock
    )
    protocol, _, client_pump = connectedServerAndClient(
        lambda: factory.buildProtocol(None), lambda: ClientProtocol(clock, "c", secret=SECRET), clock=clock
    )

    def run(coroutine: object) -> list[object]:
        box: list[object] = []
        waiting = coroutine if isinstance(coroutine, Deferred) else Deferred.fromCoroutine(coroutine)  # type: ignore[arg-type]
        waiting.addBoth(box.append)
        for _ in range(20):
            clock.advance(0)
            worker_pump.flush()
            client_pump.flush()
        return box

    client = Client(protocol)
    (results,) = run(client.map(add, [(1, 2), 5, (3, "x")]))
    assert isinstance(results, list) and results[:2] == [3, 15]  # a tuple is the arguments, else one argument
    assert isinstance(results[2], TaskFailed) and results[2].type == "TypeError"
    (refused,) = run(client.map(add, [(1, 2, 3)]))
    assert isinstance(refused, Failure) and refused.check(TypeError)  # checked before anything is sent
    written: list[tuple[int, bool, object]] = []
    (summary,) = run(client.map_stream(add, [(1,), (1, 2, 3), (2,)], lambda *answer: written.append(answer)))
    assert [(index, ok) for index, ok, _ in written] == [(0, True), (1, False), (2, True)]
    assert "too many" in str(written[1][2])  # that item failed alone, unsent
    assert summary.failed == 1  # type: ignore[attr-defined]


# -- what the independent implementation of docs/protocol.md found (issue 18) ----


def test_paused_submitters_resume_when_the_queue_drains_by_cancels() -> None:
    clock = Clock()
    core = Scheduler(clock, policy=Policy(prefetch=0, max_queued=3))
    changes: list[bool] = []
    core.on_queue_full = changes.append
    ids = [core.submit("nobody-runs-it", b"x")[0] for _ in range(4)]
    assert changes == [True]
    for task_id in ids:
        core.cancel(task_id)
    assert changes == [True, False]


def test_the_status_report_fits_the_announced_frame_limit() -> None:
    rig = Rig(max_frame=400, max_payload=100)
    client, transport = rig.client()
    for n in range(12):  # one frame each: twelve would not fit in 400 bytes
        record = (n, f"type-{n}-with-a-long-name", b"x", wire.DEFAULT_OPTIONS)
        client.dataReceived(frame(wire.Submit([record])))
    rig.received(transport)
    client.dataReceived(frame(wire.StatusRequest()))
    data = transport.value()
    (length,) = struct.unpack(">I", data[:4])
    assert length <= 400
    (report,) = frames(data)
    status = json.loads(report.json)
    assert status["truncated"]["waiting_by_type"] == 12
    assert len(status.get("waiting_by_type", {})) < 12 and status["tasks"]["queued"] == 12


def _welcomed_client(heartbeat_ms: int, tolerance: int):  # type: ignore[no-untyped-def]
    from taskmesh.net.client_protocol import ClientProtocol

    clock = Clock()
    protocol = ClientProtocol(clock, "c", secret=SECRET)
    transport = StringTransport()
    protocol.makeConnection(transport)
    welcome_peer(
        protocol,
        transport,
        wire.Welcome("s", 1 << 20, 1 << 16, heartbeat_ms=heartbeat_ms, tolerance=tolerance),
    )
    assert protocol.ready.called
    return clock, protocol, transport


def test_a_silent_scheduler_is_dropped_after_its_tolerance() -> None:
    clock, protocol, transport = _welcomed_client(1000, 3)
    for _ in range(3):
        clock.advance(1.0)
    assert not transport.disconnecting
    clock.advance(1.0)  # silent for 4 s > 3 intervals
    assert transport.disconnecting or protocol.closing
    assert protocol.closed_because is not None and "silent" in protocol.closed_because


def test_a_blocked_reactor_does_not_make_a_live_scheduler_look_silent() -> None:
    clock, protocol, transport = _welcomed_client(1000, 3)
    clock.advance(30.0)  # the application blocked the reactor for 30 s: one late beat
    assert not protocol.closing
    protocol.dataReceived(frame(wire.Heartbeat()))  # what the scheduler sent meanwhile, read now
    clock.advance(1.0)
    assert not protocol.closing
    for _ in range(4):  # and if it then really goes silent, it is dropped as before
        clock.advance(1.0)
    assert protocol.closing and "silent" in (protocol.closed_because or "")
