"""The worker core: slots, inline and blocking handlers, failures, and stopping."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from taskmesh.core.worker import Worker
from taskmesh.handlers import HandlerRegistry, ITaskHandler, Sha256Handler, SleepHandler
from taskmesh.wire import STATUS_FAILED, STATUS_OK

HELLO_DIGEST = b"dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f"


@implementer(ITaskHandler)
class Explodes:
    name = "explodes"
    blocking = False

    def run(self, payload: bytes) -> bytes:
        raise ValueError("payload " + payload.decode())


@implementer(ITaskHandler)
class Blocking:
    name = "blocking"
    blocking = True

    def run(self, payload: bytes) -> str:
        return "ran " + payload.decode()


@implementer(ITaskHandler)
class Returns:
    """Returns whatever the test put in ``value``."""

    name = "returns"
    blocking = False
    value: Any = None

    def run(self, payload: bytes) -> Any:
        return self.value


class Harness:
    def __init__(self, slots: int = 1, max_result: int = 1000) -> None:
        self.clock = Clock()
        self.reports: list[tuple[int, int, bytes]] = []
        self.blocking_calls: list[tuple[Any, Any, Deferred[Any]]] = []
        self.chunk_reports: list[tuple[int, list[tuple[int, bytes]]]] = []
        self.returns = Returns()
        registry = HandlerRegistry(
            [Sha256Handler(), SleepHandler(self.clock), Explodes(), Blocking(), self.returns]
        )
        self.worker = Worker(
            registry,
            slots,
            lambda *report: self.reports.append(report),
            self.run_blocking,
            max_result=max_result,
            report_chunk=lambda *report: self.chunk_reports.append(report),
        )

    def run_blocking(self, cpu_bound: bool, function: Any, argument: Any) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        self.blocking_calls.append((function, argument, waiting))
        return waiting


def test_quick_handler_answers_inline() -> None:
    h = Harness()
    h.worker.assign([(1, "sha256", b"Hello, World!")])
    assert h.reports == [(1, STATUS_OK, HELLO_DIGEST)]


def test_slots_bound_the_running_tasks() -> None:
    h = Harness(slots=2)
    h.worker.assign([(1, "sleep", b"1"), (2, "sleep", b"1"), (3, "sleep", b"1")])
    assert (h.worker.running, h.worker.waiting) == (2, 1)
    h.clock.advance(1)
    assert h.reports == [(1, STATUS_OK, b"slept 1"), (2, STATUS_OK, b"slept 1")]
    assert (h.worker.running, h.worker.waiting) == (1, 0)
    h.clock.advance(1)
    assert h.reports[-1] == (3, STATUS_OK, b"slept 1")


def test_a_handler_exception_fails_the_task_with_its_text() -> None:
    h = Harness()
    h.worker.assign([(1, "explodes", b"x"), (2, "sha256", b"Hello, World!")])
    assert h.reports == [(1, STATUS_FAILED, b"ValueError: payload x"), (2, STATUS_OK, HELLO_DIGEST)]


def test_bad_sleep_payload_fails_clearly() -> None:
    h = Harness()
    h.worker.assign([(1, "sleep", b"abc"), (2, "sleep", b"-1"), (3, "sleep", b"nan")])
    assert [status for _, status, _ in h.reports] == [STATUS_FAILED] * 3
    assert b"sleep wants a number of seconds" in h.reports[0][2]


def test_an_unknown_type_fails_instead_of_running() -> None:
    h = Harness()
    h.worker.assign([(1, "nope", b"")])
    assert h.reports == [(1, STATUS_FAILED, b"this worker does not run task type 'nope'")]


def test_blocking_handlers_go_to_run_blocking_and_hold_a_slot() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "blocking", b"a"), (2, "blocking", b"b")])
    assert len(h.blocking_calls) == 1 and h.worker.waiting == 1
    function, payload, waiting = h.blocking_calls[0]
    waiting.callback(function(payload))
    assert h.reports == [(1, STATUS_OK, b"ran a")]
    assert len(h.blocking_calls) == 2


def test_results_must_be_bytes_or_text_and_within_the_limit() -> None:
    h = Harness(max_result=10)
    h.returns.value = 42
    h.worker.assign([(1, "returns", b"")])
    h.returns.value = b"x" * 11
    h.worker.assign([(2, "returns", b"")])
    h.returns.value = "é"
    h.worker.assign([(3, "returns", b"")])
    assert h.reports[0][:2] == (1, STATUS_FAILED) and b"int" in h.reports[0][2]
    assert h.reports[1][:2] == (2, STATUS_FAILED) and b"exceeds" in h.reports[1][2]
    assert h.reports[2] == (3, STATUS_OK, "é".encode())


def test_stop_drops_waiting_tasks_and_late_outcomes() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "sleep", b"1"), (2, "sleep", b"1")])
    h.worker.stop()
    h.clock.advance(5)
    assert h.reports == []
    assert (h.worker.running, h.worker.waiting) == (0, 0)


def test_a_worker_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Harness(slots=0)


def test_cancel_drops_a_waiting_task_and_silences_a_running_one() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "sleep", b"5"), (2, "sleep", b"5"), (3, "sha256", b"Hello, World!")])
    h.worker.cancel([1, 2])
    assert h.reports == [(3, STATUS_OK, HELLO_DIGEST)]  # 3 ran as soon as 1's slot was free
    h.clock.advance(10)
    assert h.reports == [(3, STATUS_OK, HELLO_DIGEST)]
    assert (h.worker.running, h.worker.waiting) == (0, 0)


def test_a_cancelled_blocking_task_reports_nothing() -> None:
    h = Harness(slots=1)
    h.worker.assign([(1, "blocking", b"a")])
    h.worker.cancel([1])
    function, payload, waiting = h.blocking_calls[0]
    waiting.callback(function(payload))  # the thread finishes later; nobody hears of it
    assert h.reports == []


# -- chunks ---------------------------------------------------------------------


def test_a_chunk_of_quick_items_answers_at_once_item_by_item() -> None:
    h = Harness()
    h.worker.assign_chunks([(9, "sha256", [b"Hello, World!", b"x"]), (10, "explodes", [b"a", b"b"])])
    assert h.chunk_reports[0] == (9, [(STATUS_OK, HELLO_DIGEST), (STATUS_OK, Sha256Handler().run(b"x"))])
    assert h.chunk_reports[1] == (
        10,
        [(STATUS_FAILED, b"ValueError: payload a"), (STATUS_FAILED, b"ValueError: payload b")],
    )


def test_a_chunk_of_slow_items_runs_them_one_after_another_in_one_slot() -> None:
    h = Harness(slots=1)
    h.worker.assign_chunks([(1, "sleep", [b"1", b"nope", b"2"])])
    h.worker.assign([(2, "sha256", b"Hello, World!")])
    assert (h.worker.running, h.worker.waiting) == (1, 1)
    h.clock.advance(1)
    assert h.chunk_reports == []
    h.clock.advance(2)
    assert h.chunk_reports == [
        (
            1,
            [
                (STATUS_OK, b"slept 1"),
                (STATUS_FAILED, b"ValueError: sleep wants a number of seconds, not 'nope'"),
                (STATUS_OK, b"slept 2"),
            ],
        )
    ]
    assert h.reports == [(2, STATUS_OK, HELLO_DIGEST)]  # the slot was free again


def test_a_blocking_chunk_is_one_call_in_the_pool() -> None:
    h = Harness(slots=1)
    h.worker.assign_chunks([(1, "blocking", [b"a", b"b"])])
    ((function, argument, waiting),) = h.blocking_calls
    waiting.callback(function(argument))
    assert h.chunk_reports == [(1, [(STATUS_OK, b"ran a"), (STATUS_OK, b"ran b")])]


def test_a_cancelled_chunk_stops_and_reports_nothing() -> None:
    h = Harness(slots=1)
    h.worker.assign_chunks([(1, "sleep", [b"1", b"1"])])
    h.worker.cancel([1])
    h.clock.advance(5)
    assert h.chunk_reports == [] and h.worker.running == 0


def test_pbkdf2_rounds_and_default() -> None:
    import hashlib

    from taskmesh.handlers import Pbkdf2Handler

    handler = Pbkdf2Handler()
    assert handler.run(b"10:pw") == hashlib.pbkdf2_hmac("sha256", b"pw", b"taskmesh", 10).hex().encode()
    assert handler.run(b"a:b") == hashlib.pbkdf2_hmac("sha256", b"a:b", b"taskmesh", 100_000).hex().encode()
    with pytest.raises(ValueError, match="rounds"):
        handler.run(b"0:pw")


# -- handlers that misbehave (issue 10: workers survive any handler) --------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Surrogate(Exception):
    """An exception whose text UTF-8 cannot encode."""

    def __init__(self) -> None:
        super().__init__("bad \udc80 byte")


class Custom(BaseException):
    """Neither an Exception nor one of Python's own BaseExceptions."""


HOSTILE: dict[str, Any] = {
    "surrogate": (Surrogate, "Surrogate: bad \\udc80 byte"),
    "unprintable": (Unprintable, "Unprintable: <str() of the exception raised RuntimeError>"),
    "system-exit": (lambda: SystemExit(3), "SystemExit: 3"),
    "keyboard-interrupt": (KeyboardInterrupt, "KeyboardInterrupt"),
    "generator-exit": (GeneratorExit, "GeneratorExit"),
    "custom-base": (lambda: Custom("odd"), "Custom: odd"),
    "huge": (lambda: ValueError("x" * 10_000_000), None),
}


@implementer(ITaskHandler)
class Hostile:
    """Raises the exception its payload names: inline, from a Deferred, or in a pool."""

    def __init__(self, name: str, blocking: bool = False, deferred: bool = False) -> None:
        self.name = name
        self.blocking = blocking
        self.deferred = deferred

    def run(self, payload: bytes) -> Any:
        error = HOSTILE[payload.decode()][0]()
        if self.deferred:
            from twisted.internet.defer import fail

            return fail(error)
        raise error


def hostile_harness() -> Harness:
    h = Harness()
    for handler in (
        Hostile("inline"),
        Hostile("deferred", deferred=True),
        Hostile("pooled", blocking=True),
    ):
        h.worker._handlers.add(handler)
    return h


def check_reason(value: bytes, expected: str | None) -> None:
    text = value.decode("utf-8")  # always valid UTF-8
    if expected is None:
        assert text.startswith("ValueError: xxx") and len(text) <= 4096
    else:
        assert text == expected


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("task_type", ["inline", "deferred"])
def test_whatever_an_inline_handler_raises_fails_its_task_and_the_next_one_runs(
    kind: str, task_type: str
) -> None:
    h = hostile_harness()
    h.worker.assign([(1, task_type, kind.encode()), (2, "sha256", b"Hello, World!")])
    (first, second) = h.reports
    assert first[:2] == (1, STATUS_FAILED)
    check_reason(first[2], HOSTILE[kind][1])
    assert second == (2, STATUS_OK, HELLO_DIGEST)
    assert h.worker.running == 0


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_whatever_a_blocking_handler_raises_is_reported_and_its_slot_freed(kind: str) -> None:
    h = hostile_harness()
    h.worker.assign([(1, "pooled", kind.encode()), (2, "sha256", b"Hello, World!")])
    ((function, argument, waiting),) = h.blocking_calls
    outcome = function(argument)  # what the pool thread (or process) runs: it never raises
    waiting.callback(outcome)
    first, second = h.reports
    assert first[:2] == (1, STATUS_FAILED)
    check_reason(first[2], HOSTILE[kind][1])
    assert second == (2, STATUS_OK, HELLO_DIGEST)


@pytest.mark.parametrize("task_type", ["inline", "deferred", "pooled"])
def test_every_item_of_a_chunk_of_a_misbehaving_handler_fails_on_its_own(task_type: str) -> None:
    h = hostile_harness()
    kinds = sorted(HOSTILE)
    h.worker.assign_chunks([(5, task_type, [kind.encode() for kind in kinds])])
    if task_type == "pooled":
        ((function, argument, waiting),) = h.blocking_calls
        waiting.callback(function(argument))
    ((chunk_id, outcomes),) = h.chunk_reports
    assert chunk_id == 5 and len(outcomes) == len(kinds)
    for kind, (status, value) in zip(kinds, outcomes):
        assert status == STATUS_FAILED
        check_reason(value, HOSTILE[kind][1])


def test_a_pool_that_fails_fails_the_task_instead_of_hanging_it() -> None:
    h = hostile_harness()
    h.worker.assign([(1, "pooled", b"surrogate")])
    ((_, _, waiting),) = h.blocking_calls
    waiting.errback(Surrogate())  # e.g. the process pool could not pickle the call
    assert h.reports == [(1, STATUS_FAILED, b"Surrogate: bad \\udc80 byte")]
    assert h.worker.running == 0


def test_text_results_utf8_cannot_encode_fail_readably() -> None:
    h = Harness()
    h.returns.value = "lone \udc80"
    h.worker.assign([(1, "returns", b"")])
    ((task_id, status, value),) = h.reports
    assert (task_id, status) == (1, STATUS_FAILED)
    assert value.decode("utf-8").startswith("handler returned text that UTF-8 cannot encode")


def test_a_failure_is_logged_with_its_traceback() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness()
        h.worker.assign([(1, "explodes", b"x")])
    finally:
        globalLogPublisher.removeObserver(events.append)
    (text,) = [formatEvent(e) for e in events if "failed" in formatEvent(e)]
    assert "task 1 (explodes) failed: ValueError: payload x" in text
    assert "Traceback (most recent call last)" in text and 'raise ValueError("payload "' in text
