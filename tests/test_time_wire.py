"""
The wire's time fields: a delay and a due time on a submission, and the
schedule messages, each field range-checked (Hypothesis for the untrusted
bytes).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmesh import wire


def round_trip(message: wire.Message) -> wire.Message:
    return wire.decode(wire.encode(message))


def test_a_delay_and_a_due_time_travel_to_the_millisecond() -> None:
    for options in (wire.TaskOptions(delay=30.0), wire.TaskOptions(at=1_798_135_200.25, priority=3)):
        decoded = round_trip(wire.Submit([(1, "t", b"x", options)]))
        assert isinstance(decoded, wire.Submit)
        assert decoded.records[0][3] == options


@pytest.mark.parametrize(
    "options, reason",
    [
        (wire.TaskOptions(delay=-1.0), "delay"),
        (wire.TaskOptions(delay=float("nan")), "finite"),
        (wire.TaskOptions(delay=50 * 86400.0), "use at="),
        (wire.TaskOptions(at=float("inf")), "finite"),
        (wire.TaskOptions(at=-5.0), "1970"),
        (wire.TaskOptions(at=1e12), "9999"),
        (wire.TaskOptions(delay=1.0, at=2.0), "not both"),
    ],
)
def test_out_of_range_times_cannot_be_encoded(options: wire.TaskOptions, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        wire.encode(wire.Submit([(1, "t", b"x", options)]))


def test_a_due_time_past_the_year_9999_or_with_a_delay_is_refused_on_decode() -> None:
    head = wire.encode(wire.Submit([(1, "t", b"x", wire.DEFAULT_OPTIONS)]))[:-1]
    late = head + bytes([wire.OPTION_AT]) + struct.pack(">Q", 2**63)
    with pytest.raises(wire.ProtocolError, match="9999"):
        wire.decode(late)
    both = head + bytes([wire.OPTION_AT | wire.OPTION_DELAY]) + struct.pack(">IQ", 1, 1)
    with pytest.raises(wire.ProtocolError, match="both"):
        wire.decode(both)


def test_schedule_commands_and_answers_round_trip() -> None:
    messages: list[wire.Message] = [
        wire.ScheduleCommand(wire.SCHEDULE_LIST),
        wire.ScheduleCommand(wire.SCHEDULE_REMOVE, "nightly"),
        wire.ScheduleCommand(wire.SCHEDULE_PAUSE, "é" * 64),
        wire.ScheduleCommand(
            wire.SCHEDULE_ADD,
            "tidy",
            cron="*/5 * * * *",
            tz="Europe/Paris",
            task_type="sha256",
            payload=b"p",
            options=wire.TaskOptions(priority=2, timeout=3.0, max_attempts=4, retry_on_error=True),
            catch_up=False,
        ),
        wire.ScheduleCommand(wire.SCHEDULE_ADD, "fast", every=0.5, task_type="t"),
        wire.ScheduleAnswer(True, '{"name": "tidy"}'),
        wire.ScheduleAnswer(False, "bad cron expression"),
    ]
    for message in messages:
        assert round_trip(message) == message


@pytest.mark.parametrize(
    "command, reason",
    [
        (wire.ScheduleCommand(wire.SCHEDULE_REMOVE, "x" * 129), "schedule name"),
        (wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", cron="*" * 257, task_type="t"), "cron"),
        (wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=0.0, task_type="t"), "interval"),
        (wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=400 * 86400.0, task_type="t"), "interval"),
        (wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=float("nan"), task_type="t"), "interval"),
        (wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=1.0, tz="x" * 65, task_type="t"), "time zone"),
        (
            wire.ScheduleCommand(
                wire.SCHEDULE_ADD, "s", every=1.0, task_type="t", options=wire.TaskOptions(key="k")
            ),
            "no key",
        ),
        (wire.ScheduleCommand(9, "s"), "unknown schedule operation"),
    ],
)
def test_out_of_range_schedule_fields_cannot_be_encoded(command: wire.ScheduleCommand, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        wire.encode(command)


def test_schedule_fields_out_of_range_are_refused_on_decode() -> None:
    good = wire.encode(wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=1.0, task_type="t"))
    # name, cron length, every (u64 ms) follow the head
    head = bytes([wire.KIND_SCHEDULE, wire.SCHEDULE_ADD, 1]) + b"s"
    too_long_cron = head + struct.pack(">H", 300)
    with pytest.raises(wire.ProtocolError, match="cron"):
        wire.decode(too_long_cron + b"*" * 300)
    too_long_every = head + struct.pack(">HQ", 0, 2**60)
    with pytest.raises(wire.ProtocolError, match="interval"):
        wire.decode(too_long_every)
    neither = head + struct.pack(">HQ", 0, 0)
    with pytest.raises(wire.ProtocolError, match="exactly one"):
        wire.decode(neither)
    with pytest.raises(wire.ProtocolError, match="flag bits"):
        wire.decode(good[:-1] + b"\x80")
    with pytest.raises(wire.ProtocolError, match="no schedule name|needs one"):
        wire.decode(bytes([wire.KIND_SCHEDULE, wire.SCHEDULE_REMOVE, 0]))
    keyed = wire.encode(wire.ScheduleCommand(wire.SCHEDULE_ADD, "s", every=1.0, task_type="t"))
    options_at = len(keyed) - 2
    with pytest.raises(wire.ProtocolError, match="no key"):
        wire.decode(keyed[:options_at] + bytes([wire.OPTION_KEY, 1]) + b"k" + keyed[-1:])
    with pytest.raises(wire.ProtocolError, match="ok is"):
        wire.decode(bytes([wire.KIND_SCHEDULE_ANSWER, 2, 0, 0, 0, 0]))


@given(st.binary(max_size=200))
def test_any_bytes_after_a_schedule_kind_decode_or_raise_protocol_error(body: bytes) -> None:
    for kind in (wire.KIND_SCHEDULE, wire.KIND_SCHEDULE_ANSWER):
        try:
            wire.decode(bytes([kind]) + body)
        except wire.ProtocolError:
            pass


@given(
    st.text(min_size=1, max_size=32).filter(lambda n: len(n.encode()) <= 128),
    st.one_of(st.none(), st.integers(1, 366 * 86400 * 1000)),
    st.binary(max_size=64),
)
def test_any_valid_add_round_trips(name: str, every_ms: int | None, payload: bytes) -> None:
    command = wire.ScheduleCommand(
        wire.SCHEDULE_ADD,
        name,
        cron="* * * * *" if every_ms is None else None,
        every=None if every_ms is None else every_ms / 1000,
        task_type="t",
        payload=payload,
    )
    assert round_trip(command) == command
