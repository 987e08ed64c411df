"""
The blocking client's Handle: the hand-off between the reactor thread, which
fires it as the connection core's answer, and the threads that wait on it.

A lost wake-up here would hang a Flask view, so the race is run for real,
between real threads, with every wait bounded.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.python.failure import Failure

from taskmesh.client.blocking import Handle
from taskmesh.errors import SchedulerGone, TaskFailed

#: A bound for waits that should end at once (a hang fails the test instead).
BOUND = 10.0


class _Thread:
    forked = False


class _Client:
    """What a Handle reads of its client: the default bound of a wait, and whether it forked."""

    wait_timeout: float | None = BOUND
    _thread = _Thread()


def handle() -> Handle:
    return Handle(_Client())  # type: ignore[arg-type]


def test_a_result_that_came_first_is_returned_without_an_event() -> None:
    done = handle()
    done.accepted(7)
    done.callback(b"digest")
    assert done.done() and done.called
    assert done.result() == b"digest"
    assert done._event is None  # nobody had to wait: no Event was made
    assert done.task_id == 7  # known: no trip to the reactor thread


def test_a_waiting_thread_is_woken_by_the_result() -> None:
    waiting = handle()
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(waiting.result()))
    reader.start()
    # The reader is (or is about to be) waiting; the reactor side fires.
    waiting.callback(42)
    reader.join(BOUND)
    assert got == [42]


def test_a_failure_is_raised_as_its_exception_whether_a_failure_or_an_exception() -> None:
    as_failure, as_exception = handle(), handle()
    as_failure.errback(Failure(TaskFailed("boom")))
    as_exception.errback(SchedulerGone("gone"))
    with pytest.raises(TaskFailed, match="boom"):
        as_failure.result()
    with pytest.raises(SchedulerGone, match="gone"):
        as_exception.result()


def test_a_failure_given_to_callback_is_a_failure_as_for_a_deferred() -> None:
    """The reconnect path may call back with a Failure (a result fetched again by id that failed)."""
    fetched = handle()
    fetched.callback(Failure(TaskFailed("failed on the worker")))
    with pytest.raises(TaskFailed, match="failed on the worker"):
        fetched.result()


def test_it_fires_at_most_once() -> None:
    once = handle()
    once.callback(1)
    once.callback(2)
    once.errback(TaskFailed("late"))
    assert once.result() == 1


def test_a_wait_is_bounded_and_the_task_goes_on() -> None:
    pending = handle()
    with pytest.raises(TimeoutError, match="no answer within 0.05 s"):
        pending.result(0.05)
    pending.callback(b"later")  # the task finished after its caller gave up waiting
    assert pending.result(0) == b"later"


def test_no_wake_up_is_lost_when_results_race_their_waiters() -> None:
    """Waiter and finisher threads race on many handles; each wait must end with its result."""
    handles = [handle() for _ in range(2000)]
    got: list[Any] = []
    start = threading.Barrier(2)

    def wait_all() -> None:
        start.wait(BOUND)
        got.extend(h.result() for h in handles)

    def finish_all() -> None:
        start.wait(BOUND)
        for index, h in enumerate(handles):
            h.callback(index)

    threads = [threading.Thread(target=wait_all), threading.Thread(target=finish_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 3)
    assert got == list(range(2000))


def test_the_id_is_given_to_who_asked_for_it_before_the_task_was_accepted() -> None:
    early = handle()
    asked = early._id()  # on the reactor thread, before the acknowledgement
    ids: list[int] = []
    asked.addCallback(ids.append)
    early.accepted(11)
    assert ids == [11] and early._id() == 11


def test_a_task_never_accepted_fails_its_id_with_its_reason() -> None:
    refused = handle()
    asked = refused._id()
    reasons: list[Failure] = []
    asked.addErrback(reasons.append)
    refused.errback(SchedulerGone("not connected to a scheduler"))
    assert reasons and reasons[0].check(SchedulerGone)
    with pytest.raises(SchedulerGone):
        refused._id()
