"""
Every peer is bounded, in memory and with a Clock: frame reassembly and its
shared budget, the handshake and frame deadlines, unsent bytes, the close
grace, client heartbeats, and the per-connection caps.  Each bound costs only
the connection that passed it.
"""

from __future__ import annotations

import struct

import pytest
from handshakes import SECRET, SECRETS, frame, frames, shake, welcome_peer  # noqa: E402
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.core.logsummary import RepeatedEvents
from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.net.client_protocol import ClientProtocol
from taskmesh.net.frames import BudgetExhausted, FrameReader, FrameTooLarge, PartialFrameBudget
from taskmesh.net.framing import ConnectionLimits
from taskmesh.net.scheduler_protocol import SchedulerFactory, SchedulerProtocol


class Rig:
    """A scheduler core and factory with chosen bounds; connections on StringTransports."""

    def __init__(self, **factory_options: object) -> None:
        self.clock = Clock()
        self.core = Scheduler(self.clock, policy=Policy(prefetch=0, heartbeat_interval=2.0))
        options: dict[str, object] = {"max_frame": 1 << 20, "max_payload": 1 << 16}
        options.update(factory_options)
        self.factory = SchedulerFactory(self.core, self.clock, SECRETS, "s", **options)  # type: ignore[arg-type]

    def connect(self) -> tuple[SchedulerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def client(self) -> tuple[SchedulerProtocol, StringTransport]:
        protocol, transport = self.connect()
        shake(protocol, transport, wire.Hello(role=wire.ROLE_CLIENT, name="c"))
        return protocol, transport

    def worker(self, slots: int, types: tuple[str, ...]) -> tuple[SchedulerProtocol, StringTransport]:
        protocol, transport = self.connect()
        shake(protocol, transport, wire.Hello(role=wire.ROLE_WORKER, name="w", slots=slots, task_types=types))
        return protocol, transport

    def received(self, transport: StringTransport) -> list[wire.Message]:
        self.clock.advance(0)
        messages = frames(transport.value())
        transport.clear()
        return messages

    def error_of(self, transport: StringTransport) -> wire.Error:
        messages = self.received(transport)
        assert messages and isinstance(messages[-1], wire.Error), messages
        assert transport.disconnecting
        return messages[-1]


# -- reassembly ---------------------------------------------------------------


def test_a_frame_in_many_pieces_is_joined_once_and_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = struct.pack(">I", len(body)) + body
    reader = FrameReader(2 << 20)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    for piece in pieces[:-1]:
        assert reader.feed(piece) == []
        assert reader.partial
    assert reader.feed(pieces[-1]) == [body]
    assert not reader.partial and reader.buffered == 0


def test_a_prefix_split_over_reads_and_frames_sharing_a_read() -> None:
    first, second = b"a" * 10, b"b" * 3
    stream = struct.pack(">I", 10) + first + struct.pack(">I", 3) + second
    reader = FrameReader(100)
    assert reader.feed(stream[:2]) == []
    assert reader.feed(stream[2:5]) == []
    assert reader.feed(stream[5:16]) == [first]
    assert reader.feed(stream[16:]) == [second]


def test_frames_before_a_too_large_one_are_still_delivered() -> None:
    reader = FrameReader(8)
    stream = struct.pack(">I", 2) + b"ok" + struct.pack(">I", 9) + b"x" * 9
    assert reader.feed(stream) == [b"ok"]
    assert isinstance(reader.error, FrameTooLarge) and reader.error.length == 9
    assert reader.feed(b"more") == []


def test_the_budget_is_shared_reserved_only_by_unfinished_frames_and_given_back() -> None:
    budget = PartialFrameBudget(1000)
    first, second = FrameReader(4096, budget), FrameReader(4096, budget)
    assert first.feed(struct.pack(">I", 100) + b"x" * 100) == [b"x" * 100]
    assert budget.held == 0  # whole in one read: never reserved
    first.feed(struct.pack(">I", 800) + b"x" * 10)
    assert budget.held == 800
    second.feed(struct.pack(">I", 300) + b"y")
    assert isinstance(second.error, BudgetExhausted)
    assert "1000 bytes allowed for unfinished frames" in str(second.error)
    assert budget.held == 800
    assert first.feed(b"x" * 790) == [b"x" * 800]
    assert budget.held == 0
    first.feed(struct.pack(">I", 500) + b"x")
    first.close()
    assert budget.held == 0


def test_a_connection_past_the_budget_is_refused_and_the_others_go_on() -> None:
    rig = Rig(frame_budget=1 << 20)
    holder, holder_transport = rig.client()
    holder.dataReceived(struct.pack(">I", 900_000) + b"\x10" * 1000)
    late, late_transport = rig.client()
    late.dataReceived(struct.pack(">I", 200_000) + b"\x10")
    error = rig.error_of(late_transport)
    assert error.code == wire.ERROR_BUSY and "try again later" in error.message
    assert not holder_transport.disconnecting
    late.connectionLost(Failure(ConnectionDone()))
    holder.connectionLost(Failure(ConnectionDone()))
    assert rig.factory.budget.held == 0


def test_a_frame_over_the_limit_is_refused_by_its_prefix() -> None:
    rig = Rig(max_frame=4096, max_payload=1024)
    protocol, transport = rig.client()
    protocol.dataReceived(struct.pack(">I", 5000))
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_FRAME_TOO_LARGE and "limit of 4096" in error.message


# -- deadlines ----------------------------------------------------------------


def test_a_connection_without_a_hello_is_closed_after_the_handshake_timeout() -> None:
    rig = Rig(limits=ConnectionLimits(handshake_timeout=10.0))
    _, transport = rig.connect()
    rig.clock.advance(9.9)
    assert not transport.disconnecting
    rig.clock.advance(0.2)
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_TIMEOUT and "no handshake within 10 s" in error.message


def test_a_hello_in_time_cancels_the_handshake_deadline() -> None:
    rig = Rig(limits=ConnectionLimits(handshake_timeout=10.0))
    _, transport = rig.client()
    rig.clock.advance(3.0)
    assert not transport.disconnecting
    assert rig.clock.getDelayedCalls() == [] or all(
        call.getTime() != 10.0 for call in rig.clock.getDelayedCalls()
    )


def test_a_trickled_frame_is_cut_off_at_the_frame_timeout() -> None:
    rig = Rig(limits=ConnectionLimits(frame_timeout=5.0, handshake_timeout=None))
    protocol, transport = rig.client()
    protocol.dataReceived(struct.pack(">I", 100_000))
    for _ in range(49):
        rig.clock.advance(0.1)
        protocol.dataReceived(b"\x10")
    assert not transport.disconnecting
    rig.clock.advance(0.2)
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_TIMEOUT and "longer than 5 s" in error.message


def test_frames_that_finish_in_time_never_trip_the_frame_deadline() -> None:
    rig = Rig(limits=ConnectionLimits(frame_timeout=1.0, handshake_timeout=None))
    protocol, transport = rig.client()
    for _ in range(10):
        data = frame(wire.Heartbeat())
        protocol.dataReceived(data[:2])
        rig.clock.advance(0.9)
        protocol.dataReceived(data[2:])
        rig.clock.advance(0.9)
    assert not transport.disconnecting


# -- unsent bytes and closing -------------------------------------------------


def test_a_peer_that_does_not_read_stops_being_read_and_is_aborted_past_max_unsent() -> None:
    rig = Rig(limits=ConnectionLimits(max_unsent=4 << 20), max_frame=1 << 20)
    worker, worker_transport = rig.worker(4096, ("t",))
    client, client_transport = rig.client()
    client.pauseProducing()  # what the transport does when its buffer is full
    assert client_transport.producerState == "paused"  # its requests are not read meanwhile
    payload = b"r" * 60_000
    submitted = [(i, "t", b"p", wire.DEFAULT_OPTIONS) for i in range(100)]
    client.dataReceived(frame(wire.Submit(submitted)))
    rig.clock.advance(0)
    assigned = [
        record
        for message in frames(worker_transport.value())
        if isinstance(message, wire.AssignTasks)
        for record in message.records
    ]
    assert len(assigned) == 100
    for start in range(0, 100, 10):
        results = [(record[0], wire.STATUS_OK, payload) for record in assigned[start : start + 10]]
        worker.dataReceived(frame(wire.Results(results)))
    rig.clock.advance(0)
    assert not worker_transport.disconnecting
    assert client_transport.disconnected  # aborted, not closed politely
    assert "did not read" in (client.closed_because or "")


def test_reading_resumes_when_the_peer_drains() -> None:
    rig = Rig()
    client, transport = rig.client()
    client.pauseProducing()
    assert transport.producerState == "paused"
    client.resumeProducing()
    assert transport.producerState == "producing"


def test_flow_control_and_backpressure_pause_reading_independently() -> None:
    rig = Rig()
    client, transport = rig.client()
    rig.factory.pause(client)  # the queue is full
    client.pauseProducing()  # and the peer does not read
    client.resumeProducing()
    assert transport.producerState == "paused"  # still: the queue is full
    rig.factory._queue_full(False)
    assert transport.producerState == "producing"


def test_a_connection_we_give_up_on_is_aborted_if_it_does_not_close_in_time() -> None:
    rig = Rig(limits=ConnectionLimits(close_grace=10.0))
    protocol, transport = rig.client()
    protocol.dataReceived(frame(wire.Welcome("x", 1, 1)))  # a client may not send a welcome
    assert transport.disconnecting and not transport.disconnected
    rig.clock.advance(10.1)
    assert transport.disconnected


# -- client heartbeats ---------------------------------------------------------


def test_idle_clients_get_heartbeats_and_silent_ones_are_dropped() -> None:
    rig = Rig(limits=ConnectionLimits(handshake_timeout=None))
    rig.factory.startFactory()
    talking, talking_transport = rig.client()
    silent, silent_transport = rig.client()
    for _ in range(4):
        rig.clock.advance(2.0)
        talking.dataReceived(frame(wire.Heartbeat()))
    assert wire.Heartbeat() in rig.received(talking_transport)
    assert not talking_transport.disconnecting
    error = rig.error_of(silent_transport)
    assert error.code == wire.ERROR_SILENT and "no heartbeat" in error.message
    rig.factory.stopFactory()


def test_the_client_keeps_the_connection_alive_and_drops_a_silent_scheduler() -> None:
    clock = Clock()
    client = ClientProtocol(clock, "c", secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    welcome_peer(client, transport, wire.Welcome("s", 1 << 20, 1 << 16, heartbeat_ms=1000, tolerance=3))
    transport.clear()
    clock.advance(1.0)
    assert frames(transport.value()) == [wire.Heartbeat()]
    client.dataReceived(frame(wire.Heartbeat()))  # the scheduler's, answered by nothing
    for _ in range(3):
        clock.advance(1.0)
    assert not transport.disconnected
    clock.advance(1.1)
    assert transport.disconnected
    assert "silent" in (client.closed_because or "")


def test_a_scheduler_cannot_raise_the_clients_frame_limit() -> None:
    client = ClientProtocol(Clock(), "c", limits=ConnectionLimits(max_frame=1 << 20), secret=SECRET)
    transport = StringTransport()
    client.makeConnection(transport)
    welcome_peer(client, transport, wire.Welcome("s", 0xFFFFFFFF, 1 << 16))
    assert client.send_limit == 1 << 20 and client.MAX_LENGTH == 1 << 20


# -- per-connection caps ------------------------------------------------------


def test_too_many_waiting_queries_are_refused_by_name() -> None:
    rig = Rig(max_queries=3)
    client, transport = rig.client()
    client.dataReceived(frame(wire.Query([(1, True), (2, True), (3, True)])))
    assert not transport.disconnecting
    client.dataReceived(frame(wire.Query([(4, True)])))
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_LIMIT and "--max-queries" in error.message


def test_too_many_open_jobs_are_refused_by_name() -> None:
    rig = Rig(max_jobs=1)
    client, transport = rig.client()
    client.dataReceived(frame(wire.JobSubmit(1, "t")))
    client.dataReceived(frame(wire.JobSubmit(2, "t")))
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_LIMIT and "--max-jobs" in error.message


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    rig = Rig(max_connections=2)
    rig.connect()
    rig.connect()
    _, transport = rig.connect()
    error = rig.error_of(transport)
    assert error.code == wire.ERROR_LIMIT and "at most 2 connections" in error.message


def test_a_client_that_leaves_frees_every_wait_it_had() -> None:
    rig = Rig()
    submitter, _ = rig.client()
    submitter.dataReceived(
        frame(wire.Submit([(i, "nobody-runs-it", b"x", wire.DEFAULT_OPTIONS) for i in range(500)]))
    )
    rig.clock.advance(0)
    watcher, _ = rig.client()
    watcher.dataReceived(frame(wire.Query([(task_id, True) for task_id in range(1, 501)])))
    rig.clock.advance(0)
    assert len(rig.factory.watchers) == 500
    submitter.connectionLost(Failure(ConnectionDone()))
    watcher.connectionLost(Failure(ConnectionDone()))
    assert len(rig.factory.watchers) == 0


def test_many_queries_for_one_task_are_answered_once() -> None:
    rig = Rig()
    submitter, submitter_transport = rig.client()
    submitter.dataReceived(frame(wire.Submit([(1, "t", b"x", wire.DEFAULT_OPTIONS)])))
    rig.clock.advance(0)
    (task_id,) = (record[1] for record in rig.received(submitter_transport)[0].records)
    rig.core.cancel(task_id)
    rig.clock.advance(0)
    asker, transport = rig.client()
    asker.dataReceived(frame(wire.Query([(task_id, True)] * 200)))
    answers = [record for message in rig.received(transport) for record in message.records]
    assert len(answers) == 1 and answers[0][1] == wire.STATUS_CANCELLED


def test_a_peek_and_a_wait_on_one_submitted_task_are_both_answered() -> None:
    rig = Rig()
    client, transport = rig.client()
    client.dataReceived(frame(wire.Submit([(1, "t", b"x", wire.DEFAULT_OPTIONS)])))
    rig.clock.advance(0)
    (task_id,) = (record[1] for record in rig.received(transport)[0].records)
    client.dataReceived(frame(wire.Query([(task_id, False), (task_id, True)])))
    answers = [record for message in rig.received(transport) for record in message.records]
    assert answers == [(task_id, wire.STATUS_PENDING, b"queued")]
    rig.core.cancel(task_id)
    rig.clock.advance(0)
    answers = [record for message in rig.received(transport) for record in message.records]
    assert [status for _, status, _ in answers] == [wire.STATUS_CANCELLED]


# -- logs ---------------------------------------------------------------------


def test_repeated_events_from_one_peer_are_summarised() -> None:
    clock = Clock()
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        from twisted.logger import Logger

        events = RepeatedEvents(Logger(namespace="test.repeated"), clock, interval=10.0)
        for task_id in range(100_000):
            events.note("late results", "w1", "dropped a late result for task {task_id}", task_id=task_id)
        events.note("late results", "w2", "dropped a late result for task {task_id}", task_id=7)
        clock.advance(10.0)
        events.note("late results", "w1", "dropped a late result for task {task_id}", task_id=1)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    mine = [event for event in seen if event.get("log_namespace") == "test.repeated"]
    assert len(mine) == 4  # w1's first, w2's first, w1's summary, w1's first of the next interval
    (summary,) = [event for event in mine if "count" in event]
    assert summary["count"] == 99_999 and summary["peer"] == "w1"


def test_late_results_from_a_worker_cost_one_log_line_per_interval() -> None:
    rig = Rig()
    worker, _ = rig.worker(1, ("t",))
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for start in range(0, 100_000, 10_000):
            worker.dataReceived(
                frame(wire.Results([(10**12 + i, wire.STATUS_OK, b"") for i in range(start, start + 10_000)]))
            )
    finally:
        globalLogPublisher.removeObserver(seen.append)
    late = [event for event in seen if "late result" in event.get("log_format", "")]
    assert len(late) == 1


@pytest.mark.parametrize("field", ["max_frame", "max_unsent"])
def test_limits_are_checked(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConnectionLimits(**{field: 0})  # type: ignore[arg-type]


def test_a_paused_submitter_is_slowed_not_dropped_as_silent() -> None:
    rig = Rig(limits=ConnectionLimits(handshake_timeout=None))
    rig.factory.startFactory()
    client, transport = rig.client()
    rig.factory.pause(client)  # the queue is at its bound: its heartbeats wait unread
    for _ in range(10):
        rig.clock.advance(2.0)
    assert not transport.disconnecting
    assert wire.Heartbeat() in rig.received(transport)
    rig.factory._queue_full(False)
    for _ in range(4):
        rig.clock.advance(2.0)
    assert transport.disconnecting  # silent once it is read again
    rig.factory.stopFactory()


def test_a_prefetch_the_welcome_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        Policy(prefetch=0x10000)
