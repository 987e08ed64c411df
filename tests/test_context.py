"""
Inside a task, in the worker core driven with a Clock: current_task(),
report_progress() and its coalescing, Retry, and structured failures.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

import taskmesh
from taskmesh import wire
from taskmesh.codec import parse_failure
from taskmesh.context import PROGRESS_INTERVAL, ThreadReporter, current_task
from taskmesh.core.worker import Worker
from taskmesh.handlers import HandlerRegistry

CLOCK = Clock()


@taskmesh.task(blocking=False)
def whoami() -> list[Any]:
    context = current_task()
    assert context is not None
    return [context.id, context.type, context.attempt, context.max_attempts, context.deadline]


@taskmesh.task
def whoami_blocking() -> list[Any]:
    return whoami.function()  # type: ignore[misc]


@taskmesh.task
async def whoami_later() -> list[Any]:
    await deferLater(CLOCK, 1, lambda: None)
    return whoami.function()  # type: ignore[misc]


@taskmesh.task
async def progressing(steps: int) -> str:
    for step in range(steps):
        taskmesh.report_progress(step + 1, steps, f"step {step + 1}")
        await deferLater(CLOCK, 0.01, lambda: None)
    await deferLater(CLOCK, 5, lambda: None)
    return "done"


@taskmesh.task(blocking=False)
def retries(delay: float | None) -> None:
    raise taskmesh.Retry(delay=delay, reason="not yet")


@taskmesh.task(blocking=False)
def retries_from() -> None:
    try:
        {}["missing"]
    except KeyError as e:
        raise taskmesh.Retry(delay=1) from e


@taskmesh.task(blocking=False)
def divides(x: int) -> float:
    return 1 / x


class Harness:
    def __init__(self) -> None:
        global CLOCK
        self.clock = CLOCK = Clock()
        self.reports: list[tuple[int, int, bytes]] = []
        self.chunks: list[tuple[int, list[tuple[int, bytes]]]] = []
        self.progress: list[list[wire.ProgressRecord]] = []
        self.blocking: list[tuple[Any, Any, Deferred[Any]]] = []
        registry = HandlerRegistry(
            [whoami, whoami_blocking, whoami_later, progressing, retries, retries_from, divides]
        )
        self.worker = Worker(
            registry,
            4,
            lambda *report: self.reports.append(report),
            self.run_blocking,
            max_result=1 << 20,
            report_chunk=lambda *report: self.chunks.append(report),
            report_progress=self.progress.append,
            clock=self.clock,
        )

    def run_blocking(self, cpu_bound: bool, function: Any, argument: Any) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        self.blocking.append((function, argument, waiting))
        return waiting

    def run_pool(self) -> None:
        for function, argument, waiting in self.blocking:
            waiting.callback(function(argument))
        self.blocking.clear()

    def result(self, index: int = -1) -> Any:
        task_id, status, value = self.reports[index]
        assert status == wire.STATUS_OK, value
        return taskmesh.codec.decode_result(value)


def test_outside_a_task_there_is_no_current_task_and_progress_goes_nowhere() -> None:
    assert current_task() is None
    taskmesh.report_progress(1, 2, "ignored")
    with pytest.raises(TypeError):
        taskmesh.report_progress("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        taskmesh.report_progress(float("nan"))


def test_a_task_knows_its_id_type_attempt_and_deadline() -> None:
    h = Harness()
    h.clock.advance(1000)
    h.worker.assign_tasks([(7, "whoami", b"[]", 2, 5, 30_000), (8, "whoami", b"[]", 1, 3, 0)])
    assert h.result(0) == [7, "whoami", 2, 5, 1030.0]
    assert h.result(1) == [8, "whoami", 1, 3, None]
    assert current_task() is None  # left behind: nothing leaks out of the task
    h.worker.assign([(9, "whoami", b"[]")])  # a plain Assign says less
    assert h.result() == [9, "whoami", 1, None, None]


def test_the_context_reaches_pool_threads_and_survives_awaits() -> None:
    h = Harness()
    h.worker.assign_tasks([(1, "whoami_blocking", b"[]", 3, 3, 0), (2, "whoami_later", b"[]", 1, 2, 0)])
    h.run_pool()
    assert h.result() == [1, "whoami_blocking", 3, 3, None]
    h.clock.advance(1)
    assert h.result() == [2, "whoami_later", 1, 2, None]


def test_each_task_of_a_group_has_its_own_context_and_a_map_item_has_no_id() -> None:
    h = Harness()
    h.worker.assign_groups([(50, "whoami", [(11, 1, 3, b"[]"), (12, 2, 3, b"[]")])])
    h.worker.assign_chunks([(60, "whoami", [b"[]"])])
    group, chunk = h.chunks
    assert [taskmesh.codec.decode_result(value) for _, value in group[1]] == [
        [11, "whoami", 1, 3, None],
        [12, "whoami", 2, 3, None],
    ]
    assert taskmesh.codec.decode_result(chunk[1][0][1]) == [None, "whoami", 1, None, None]


def test_progress_is_coalesced_and_sent_only_while_the_task_runs() -> None:
    h = Harness()
    h.worker.assign_tasks([(1, "progressing", b"[3]", 1, 3, 0)])
    h.clock.advance(0)
    assert h.progress == [[(1, 1.0, 3.0, "step 1")]]  # the first report goes out at once
    h.clock.pump([0.01, 0.01])
    assert len(h.progress) == 1  # within the interval: kept, not sent
    h.clock.advance(PROGRESS_INTERVAL)
    assert h.progress[-1] == [(1, 3.0, 3.0, "step 3")]  # the latest, once the interval is over
    h.clock.advance(10)
    assert h.reports[-1][1:] == (wire.STATUS_OK, b'"done"')
    sent = len(h.progress)
    h.worker.post_progress(1, 9, 9, "late")  # the task is done: not heard
    h.worker.post_progress(99, 1, 1, "never ran here")
    h.clock.advance(10)
    assert len(h.progress) == sent


def test_progress_from_pool_threads_takes_one_hop_for_many_reports() -> None:
    hops: list[Any] = []
    posted: list[tuple[Any, ...]] = []
    reporter = ThreadReporter(hops.append, lambda *record: posted.append(record))
    for done in range(1000):
        reporter(5, done, 1000, "")
    reporter(6, 1, 2, "other")
    assert len(hops) == 1  # one call_from_thread in flight, whatever the reports
    hops.pop()()
    assert posted == [(5, 999, 1000, ""), (6, 1, 2, "other")]
    reporter(5, 1000, 1000, "")
    assert len(hops) == 1


def test_retry_asks_for_another_attempt_with_its_delay() -> None:
    h = Harness()
    h.worker.assign_tasks([(1, "retries", b"[2.5]", 1, 3, 0), (2, "retries", b"[null]", 1, 3, 0)])
    (_, first, value), (_, second, other) = h.reports
    assert first == second == wire.STATUS_RETRY
    delay, reason = wire.split_retry(value)
    assert delay == 2.5
    failure = parse_failure(reason)
    assert failure is not None and failure.summary == "taskmesh.errors.Retry: not yet"
    assert wire.split_retry(other)[0] is None  # the scheduler's backoff


def test_retry_from_an_error_fails_with_that_error_once_attempts_are_spent() -> None:
    h = Harness()
    h.worker.assign_tasks([(1, "retries_from", b"[]", 1, 3, 0)])
    delay, reason = wire.split_retry(h.reports[0][2])
    failure = parse_failure(reason)
    assert delay == 1.0 and failure is not None
    assert (
        failure.type == "KeyError" and failure.traceback is not None and "retries_from" in failure.traceback
    )


def test_a_retry_s_delay_is_checked() -> None:
    with pytest.raises(ValueError):
        taskmesh.Retry(delay=-1)
    with pytest.raises(ValueError):
        taskmesh.Retry(delay=float("nan"))
    with pytest.raises(ValueError):
        taskmesh.Retry(delay=10**12)


def test_a_task_function_fails_with_type_message_and_traceback() -> None:
    h = Harness()
    h.worker.assign_tasks([(1, "divides", b"[0]", 1, 3, 0), (2, "divides", b"not json", 1, 3, 0)])
    (_, status, value), (_, other_status, other) = h.reports
    assert status == other_status == wire.STATUS_FAILED
    failure = parse_failure(value)
    assert failure is not None and failure.summary == "ZeroDivisionError: division by zero"
    assert failure.traceback is not None and "return 1 / x" in failure.traceback
    bad = parse_failure(other)
    assert bad is not None and bad.type == "taskmesh.codec.ArgumentsError"
