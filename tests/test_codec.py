"""The bytes of a task function's call, result and failure (taskmesh.codec)."""

from __future__ import annotations

import json

import pytest

from taskmesh.codec import (
    MAX_REASON,
    MAX_TRACEBACK,
    ArgumentsError,
    add_note,
    decode_arguments,
    decode_result,
    describe_error,
    encode_arguments,
    encode_failure,
    encode_result,
    failure_summary,
    format_task_traceback,
    parse_failure,
    task_failed,
)
from taskmesh.errors import TaskCancelled, TaskFailed


def test_positional_arguments_are_a_json_array() -> None:
    assert encode_arguments((2, 3), {}) == b"[2,3]"
    assert decode_arguments(b"[2,3]") == ([2, 3], {})
    assert decode_arguments(b"[]") == ([], {})


def test_keyword_arguments_travel_in_an_object_beside_the_positional_ones() -> None:
    payload = encode_arguments((1,), {"y": "é"})
    assert json.loads(payload) == {"args": [1], "kwargs": {"y": "é"}}
    assert payload.isascii()  # non-ASCII text is escaped: the payload is plain ASCII
    assert decode_arguments(payload) == ([1], {"y": "é"})
    assert decode_arguments(b'{"kwargs": {"x": 1}}') == ([], {"x": 1})
    assert decode_arguments(b'{"args": [1]}') == ([1], {})


def test_an_argument_that_is_a_dict_is_not_mistaken_for_the_envelope() -> None:
    payload = encode_arguments(({"args": [9]},), {})
    assert decode_arguments(payload) == ([{"args": [9]}], {})


def test_values_json_cannot_carry_are_refused_before_sending() -> None:
    for args in [({1, 2},), (b"bytes",), (float("nan"),), (object(),)]:
        with pytest.raises(TypeError, match="not JSON"):
            encode_arguments(args, {})


def test_lone_surrogates_in_text_survive_the_trip() -> None:
    assert decode_arguments(encode_arguments(("\udc80",), {})) == (["\udc80"], {})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"5",
        b'"text"',
        b"{}x",
        b'{"args": 1}',
        b'{"other": []}',
        b"[" * 100_000,
    ],
)
def test_a_payload_that_is_not_arguments_is_refused_clearly(payload: bytes) -> None:
    with pytest.raises(ArgumentsError, match="arguments"):
        decode_arguments(payload)


def test_results_are_one_json_value() -> None:
    for value in [5, "five", [1, {"a": None}], None, 1.5, True]:
        assert decode_result(encode_result(value)) == value
    assert decode_result(encode_result((1, 2))) == [1, 2]  # tuples come back as lists
    with pytest.raises(TypeError, match="returned set, which is not JSON"):
        encode_result({1})
    with pytest.raises(ValueError, match="not JSON"):
        decode_result(b"dffd60")


def fails() -> None:
    def inner() -> None:
        raise ZeroDivisionError("division by zero")

    inner()


def caught(function: object) -> BaseException:
    try:
        function()  # type: ignore[operator]
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def test_a_failure_carries_type_message_and_traceback() -> None:
    value = encode_failure(caught(fails), 1 << 20)
    assert value.startswith(b'{"type":')
    failure = parse_failure(value)
    assert failure is not None
    assert (failure.type, failure.message, failure.note) == ("ZeroDivisionError", "division by zero", None)
    assert failure.traceback is not None
    assert "in inner" in failure.traceback and failure.traceback.endswith(
        "ZeroDivisionError: division by zero\n"
    )
    assert failure.summary == "ZeroDivisionError: division by zero"


def test_a_failure_names_a_user_exception_with_its_module() -> None:
    class Declined(Exception):
        pass

    failure = parse_failure(encode_failure(Declined("card"), 1 << 20))
    assert (
        failure is not None
        and failure.type
        == "test_codec.test_a_failure_names_a_user_exception_with_its_module.<locals>.Declined"
    )


def test_the_traceback_starts_at_the_task_not_at_taskmesh() -> None:
    from taskmesh.context import TaskContext
    from taskmesh.core.worker import run_one
    from taskmesh.functions import task

    @task(blocking=False)
    def divide(x: int) -> float:
        return 1 / x

    status, value, trace = run_one(divide, 1 << 20, TaskContext(1, "divide"), b"[0]")
    assert trace is not None and trace.startswith("Traceback (most recent call last):\n")
    assert "in divide" in trace.splitlines()[1]  # the first frame is the task's own
    assert "taskmesh" not in trace  # the worker's machinery is left out
    failure = parse_failure(value)
    assert failure is not None and failure.traceback == trace


def test_failures_are_bounded_to_fit_the_limit() -> None:
    huge = ValueError("x" * 1_000_000)
    value = encode_failure(huge, 1 << 20)
    failure = parse_failure(value)
    assert failure is not None and len(failure.message) == MAX_REASON
    for limit in (200, 1000, 5000):
        value = encode_failure(huge, limit)
        assert len(value) <= limit
        assert value.decode("utf-8")  # always valid UTF-8, even when cut


def test_a_long_traceback_keeps_its_start_and_end() -> None:
    trace = format_task_traceback(caught(lambda: fails_with("x" * 100_000)))
    assert len(trace) <= MAX_TRACEBACK + 100
    assert trace.startswith("Traceback (most recent call last):")
    assert "characters cut" in trace and trace.endswith("xxx\n")


def fails_with(message: str) -> None:
    raise ValueError(message)


def test_a_failure_is_readable_whatever_its_exception() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError

    for error in [Unprintable(), ValueError("lone \udc80"), SystemExit(2)]:
        value = encode_failure(error, 1 << 20)
        value.decode("utf-8")
        assert parse_failure(value) is not None
        describe_error(error).encode("utf-8")


def test_plain_reasons_are_not_structured() -> None:
    for reason in [b"ValueError: bad", b"timed out after 1 s", b"{not json", b'{"type": 1}', b"\xff"]:
        assert parse_failure(reason) is None
        assert failure_summary(reason) == reason.decode("utf-8", "replace")


def test_the_scheduler_s_note_is_added_to_either_kind() -> None:
    assert (
        add_note(b"ValueError: bad", "attempt 3 of 3; giving up")
        == b"ValueError: bad (attempt 3 of 3; giving up)"
    )
    structured = add_note(add_note(encode_failure(ValueError("bad"), 1 << 20), "one"), "two")
    failure = parse_failure(structured)
    assert failure is not None and failure.note == "one; two"
    assert failure.summary == "ValueError: bad (one; two)"


def test_a_client_s_exception_for_a_failure() -> None:
    error = task_failed(encode_failure(caught(fails), 1 << 20))
    assert isinstance(error, TaskFailed) and not isinstance(error, TaskCancelled)
    assert str(error) == "ZeroDivisionError: division by zero"
    assert (error.type, error.message) == ("ZeroDivisionError", "division by zero")
    assert error.traceback is not None and "in inner" in error.traceback
    assert any("Remote traceback" in note for note in error.__notes__)  # shown when uncaught
    plain = task_failed(b"poison: lost its worker 3 times")
    assert (str(plain), plain.type, plain.traceback, plain.message) == (
        "poison: lost its worker 3 times",
        None,
        None,
        "poison: lost its worker 3 times",
    )
    assert isinstance(task_failed(b"cancelled by c", cancelled=True), TaskCancelled)


def test_a_task_failed_survives_pickling() -> None:
    import pickle

    error = task_failed(encode_failure(caught(fails), 1 << 20))
    again = pickle.loads(pickle.dumps(error))
    assert (again.type, again.message, again.traceback, str(again)) == (
        error.type,
        error.message,
        error.traceback,
        str(error),
    )
