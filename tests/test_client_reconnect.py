"""
The Twisted Client's reconnect, in memory on a Clock: bounded by
``reconnect_timeout``, and saying when the connection drops and is back.
"""

from __future__ import annotations

from handshakes import SECRET, frame, frames, welcome_peer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.client import Client
from taskmesh.errors import SchedulerGone
from taskmesh.net.client_protocol import ClientProtocol

WELCOME = wire.Welcome("s", 4096, 1024, 2000, 3)


def welcomed(clock: Clock) -> tuple[ClientProtocol, StringTransport]:
    protocol = ClientProtocol(clock, "c", secret=SECRET)
    transport = StringTransport()
    protocol.makeConnection(transport)
    welcome_peer(protocol, transport, WELCOME)
    transport.clear()
    return protocol, transport


def drop(protocol: ClientProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


def test_a_scheduler_that_stays_away_fails_every_pending_call_after_the_timeout() -> None:
    clock = Clock()
    protocol, _ = welcomed(clock)
    attempts: list[float] = []
    said: list[str] = []

    def refused() -> Deferred[ClientProtocol]:
        attempts.append(clock.seconds())
        return fail(ConnectionRefusedError())

    client = Client(
        protocol,
        reactor=clock,
        reconnect=refused,
        reconnect_timeout=5,
        on_lost=lambda: said.append("lost"),
        on_reconnected=lambda: said.append("back"),
    )
    waiting: list[object] = []
    client.result(7).addBoth(waiting.append)
    unaccepted: list[object] = []
    client.enqueue("x", "sha256").addBoth(unaccepted.append)
    drop(protocol)
    assert said == ["lost"]
    clock.advance(4.9)
    assert waiting == [] and unaccepted == []  # still trying
    clock.advance(0.2)
    for box in (waiting, unaccepted):
        assert isinstance(box[0], Failure) and box[0].check(SchedulerGone)
        assert "could not reconnect within 5 seconds" in str(box[0].value)
        assert "refused" in str(box[0].value)
    assert attempts[-1] >= 5 - 1e-9 and said == ["lost"]
    later: list[object] = []
    client.status().addBoth(later.append)
    assert isinstance(later[0], Failure) and "within 5 seconds" in str(later[0].value)
    count = len(attempts)
    clock.advance(60)
    assert len(attempts) == count  # it gave up: no more attempts


def test_a_scheduler_back_in_time_answers_the_waiting_result_on_the_new_connection() -> None:
    clock = Clock()
    first, _ = welcomed(clock)
    second, transport = welcomed(clock)
    answers: list[Deferred[ClientProtocol]] = [fail(ConnectionRefusedError()), succeed(second)]
    said: list[str] = []
    client = Client(
        first,
        reactor=clock,
        reconnect=lambda: answers.pop(0),
        reconnect_timeout=5,
        on_lost=lambda: said.append("lost"),
        on_reconnected=lambda: said.append("back"),
    )
    waiting: list[object] = []
    client.result(7).addBoth(waiting.append)
    drop(first)
    clock.advance(5)  # the second attempt, within the bound
    assert said == ["lost", "back"] and client.reconnections == 1
    clock.advance(0)
    sent = frames(transport.value())
    assert any(isinstance(message, wire.Query) for message in sent), sent
    second.dataReceived(frame(wire.Results([(7, wire.STATUS_OK, b"done")])))
    assert waiting == [b"done"]
    # The bound is per drop: the next one has its full time again.
    drop(second)
    assert said == ["lost", "back", "lost"]


def test_without_a_timeout_it_keeps_trying() -> None:
    clock = Clock()
    protocol, _ = welcomed(clock)
    attempts: list[float] = []

    def refused() -> Deferred[ClientProtocol]:
        attempts.append(clock.seconds())
        return fail(ConnectionRefusedError())

    client = Client(protocol, reactor=clock, reconnect=refused)
    waiting: list[object] = []
    client.result(7).addBoth(waiting.append)
    drop(protocol)
    clock.pump([1.0] * 600)
    assert waiting == [] and len(attempts) > 10
    client.close()
    assert isinstance(waiting[0], Failure) and waiting[0].check(SchedulerGone)


def test_a_blocking_handle_re_attached_after_a_drop_raises_its_task_s_failure() -> None:
    """The blocking client's Handle takes the reconnect path too: a task that failed meanwhile raises."""
    from taskmesh.client.blocking import Handle
    from taskmesh.errors import TaskFailed

    class Bounds:
        wait_timeout = 0.0

        class _thread:  # noqa: N801  (what a Handle reads of its client's thread)
            forked = False

    clock = Clock()
    first, sent_first = welcomed(clock)
    second, sent_second = welcomed(clock)
    client = Client(first, reactor=clock, reconnect=lambda: succeed(second), reconnect_timeout=5)
    answer = Handle(Bounds())  # type: ignore[arg-type]
    client.submit_into(answer, ("sha256", b"x", wire.DEFAULT_OPTIONS, None))
    clock.advance(0)
    (submit,) = frames(sent_first.value())
    assert isinstance(submit, wire.Submit)
    first.dataReceived(frame(wire.Accepted([(submit.records[0][0], 41, 0)])))
    assert answer.accepted_id == 41
    drop(first)
    clock.advance(1)
    assert any(isinstance(message, wire.Query) for message in frames(sent_second.value()))
    second.dataReceived(frame(wire.Results([(41, wire.STATUS_FAILED, b"ValueError: boom")])))
    assert answer.done()
    try:
        answer.result(0)
    except TaskFailed as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("a failed task's handle returned instead of raising")
