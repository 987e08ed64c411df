"""
The client's map driver, against a fake connection: answers in any order
are written in input order, the window bounds what is in flight, and a
dropped connection sends the unanswered items again on a new one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.client.mapping import MapSummary, run_map
from taskmesh.net.client_protocol import SchedulerGone


class FakeConnection:
    """Records what the driver sends; the test plays the scheduler."""

    def __init__(self, max_frame: int = 1 << 20, max_payload: int = 1000) -> None:
        self.welcome = wire.Welcome("s", max_frame, max_payload)
        self.lost: Deferred[None] = Deferred()
        self.frames: list[int] = []
        self.sent: dict[int, bytes] = {}
        self.ended: int | None = None
        self.listener: Any = None

    def open_job(self, task_type: str, on_results: Any, *args: Any) -> Deferred[tuple[int, int]]:
        self.listener = on_results
        return succeed((1, 0))

    def send_items(self, job_id: int, first_index: int, payloads: list[bytes]) -> None:
        self.frames.append(len(wire.encode(wire.JobItems(job_id, first_index, payloads))))
        for offset, payload in enumerate(payloads):
            self.sent[first_index + offset] = payload

    def end_job(self, job_id: int, total: int) -> None:
        self.ended = total

    def forget_job(self, job_id: int) -> None:
        pass

    def answer(self, *indexes: int, status: int = wire.STATUS_OK) -> None:
        self.listener([(i, status, b"r" + self.sent[i]) for i in indexes])


def lines(count: int) -> Iterator[bytes]:
    return (b"%d" % i for i in range(count))


def start(
    connections: list[FakeConnection], count: int, window: int = 100, reconnect: bool = False, items=None
):  # type: ignore[no-untyped-def]
    written: list[tuple[int, bool, bytes]] = []
    pending = list(connections)

    async def connect() -> Any:
        return pending.pop(0)

    done: Deferred[MapSummary] = Deferred.fromCoroutine(
        run_map(
            connect,
            lines(count) if items is None else iter(items),
            lambda *w: written.append(w),
            "sha256",
            window=window,
            reconnect=reconnect,
        )
    )
    return written, done


def test_answers_are_written_in_input_order_as_prefixes_complete() -> None:
    connection = FakeConnection()
    written, done = start([connection], 5)
    connection.answer(2, 4)
    assert written == []
    connection.answer(0)
    assert [w[0] for w in written] == [0]
    connection.answer(1)
    assert [w[0] for w in written] == [0, 1, 2]
    connection.answer(3, status=wire.STATUS_FAILED)
    summary = done.result
    assert [w[0] for w in written] == [0, 1, 2, 3, 4]
    assert written[3] == (3, False, b"r3")
    assert (summary.done, summary.failed, summary.failures) == (5, 1, [(3, "r3")])
    assert connection.ended == 5


def test_no_more_than_the_window_is_in_flight() -> None:
    connection = FakeConnection()
    written, done = start([connection], 1000, window=100)
    assert len(connection.sent) == 100
    connection.answer(*range(40))
    assert len(connection.sent) == 100  # refilled only below half the window
    connection.answer(*range(40, 60))
    assert len(connection.sent) == 160
    answered = set(range(60))
    while not done.called:
        batch = [i for i in sorted(connection.sent) if i not in answered][:50]
        answered.update(batch)
        connection.answer(*batch)
        assert len(connection.sent) - len(answered) <= 100
    assert [w[0] for w in written] == list(range(1000))


def test_a_dropped_connection_resends_what_was_unanswered_on_a_new_one() -> None:
    first, second = FakeConnection(), FakeConnection()
    written, done = start([first, second], 10, reconnect=True)
    first.answer(0, 1, 5)
    first.lost.callback(None)
    assert sorted(second.sent) == [2, 3, 4, 6, 7, 8, 9]
    second.answer(2, 3, 4, 6, 7, 8, 9)
    summary = done.result
    assert [w[0] for w in written] == list(range(10)) and summary.reconnections == 1
    assert second.ended == 7


def test_without_reconnect_a_dropped_connection_ends_the_map() -> None:
    connection = FakeConnection()
    written, done = start([connection], 10)
    connection.lost.callback(None)
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert failures[0].check(SchedulerGone)


@pytest.mark.parametrize("task_type, window", [("", 10), ("sha256", 0)])
def test_an_unusable_task_type_or_window_is_refused(task_type: str, window: int) -> None:
    failures: list[Failure] = []
    Deferred.fromCoroutine(
        run_map(None, iter(()), print, task_type, window=window)  # type: ignore[arg-type]
    ).addErrback(failures.append)
    assert failures[0].check(ValueError)


def test_frames_stay_well_inside_the_schedulers_limit() -> None:
    connection = FakeConnection(max_frame=4000, max_payload=900)
    written, done = start([connection], 0, window=1000, items=[b"x" * 500] * 40)
    assert max(connection.frames) <= 2000 and len(connection.sent) == 40


def test_an_item_over_the_payload_limit_is_failed_without_being_sent() -> None:
    connection = FakeConnection(max_payload=10)
    written, done = start([connection], 0, items=[b"short", b"x" * 11, b"fine"])
    assert sorted(connection.sent) == [0, 2]
    connection.answer(0, 2)
    assert [w[:2] for w in written] == [(0, True), (1, False), (2, True)]
    assert b"exceeds" in written[1][2]
