"""The wire format: every message round-trips, and anything malformed raises ProtocolError."""

from __future__ import annotations

import random
import struct

import pytest

from taskmesh import wire

MESSAGES = [
    wire.Hello(role=wire.ROLE_CLIENT, name="c"),
    wire.Hello(role=wire.ROLE_WORKER, name="wörker", slots=4, task_types=("sha256", "sleep")),
    wire.Welcome(name="s", max_frame=1 << 20, max_payload=1 << 16, heartbeat_ms=500, tolerance=3),
    wire.Error(code=wire.ERROR_MALFORMED, message="bad ✗"),
    wire.Heartbeat(),
    wire.StatusRequest(),
    wire.StatusReport('{"workers": []}'),
    wire.Submit(
        [
            (1, "sha256", b"Hello", wire.DEFAULT_OPTIONS),
            (2, "sleep", b"", wire.TaskOptions(priority=-5, timeout=1.5, max_attempts=7)),
            (3, "x", b"\x00" * 300, wire.TaskOptions(key="k✗", retry_on_error=True, no_result=True)),
            (0xFFFFFFFF, "x", b"", wire.TaskOptions(priority=2**31 - 1)),
        ]
    ),
    wire.Submit([]),
    wire.Query([(1, True), (wire.MAX_ID, False)]),
    wire.Cancel([1, 2, 3]),
    wire.Accepted([(1, 10, 0), (2, 2**64 - 1, wire.ACCEPTED_NO_WORKER | wire.ACCEPTED_DUPLICATE)]),
    wire.Rejected([(7, "payload too large")]),
    wire.Results(
        [
            (10, wire.STATUS_OK, b"digest"),
            (11, wire.STATUS_FAILED, "why ✗".encode()),
            (12, wire.STATUS_PENDING, b"queued"),
            (13, wire.STATUS_UNKNOWN, b"never heard of it"),
            (14, wire.STATUS_CANCELLED, b"cancelled"),
        ]
    ),
    wire.Assign([(10, "sha256", b"Hello"), (11, "sleep", b"0.5")]),
    wire.JobSubmit(request=3, task_type="sha256", priority=-2, chunk_size=50, size_hint=10**6),
    wire.JobAccepted(request=3, job_id=2**63, flags=wire.ACCEPTED_NO_WORKER),
    wire.JobItems(job_id=7, first_index=1000, payloads=[b"a", b"", b"\xff" * 100]),
    wire.JobEnd(job_id=7, total=1003),
    wire.JobResults([(7, 1000, wire.STATUS_OK, b"d"), (7, 1001, wire.STATUS_FAILED, b"why")]),
    wire.AssignChunks([(5, "sha256", [b"a", b"b"]), (6, "sleep", [])]),
    wire.ChunkResults([(5, 0, [(wire.STATUS_OK, b"x"), (wire.STATUS_FAILED, b"E")]), (6, 2, [])]),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message)) == message


def test_records_are_plain_tuples() -> None:
    decoded = wire.decode(wire.encode(wire.Assign([(1, "sha256", b"x")])))
    assert isinstance(decoded, wire.Assign)
    assert decoded.records == [(1, "sha256", b"x")]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_refused(message: wire.Message) -> None:
    """Cutting a frame anywhere must raise ProtocolError, never decode or crash otherwise."""
    data = wire.encode(message)
    for cut in range(len(data)):
        with pytest.raises(wire.ProtocolError):
            wire.decode(data[:cut])


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_trailing_bytes_are_refused(message: wire.Message) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode(wire.encode(message) + b"\x00")


def test_unknown_kind() -> None:
    with pytest.raises(wire.ProtocolError, match="unknown message kind 0x7f"):
        wire.decode(b"\x7f")


def test_hello_without_magic_is_not_a_taskmesh_peer() -> None:
    data = bytearray(wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="c")))
    data[1:5] = b"HTTP"
    with pytest.raises(wire.ProtocolError, match="magic"):
        wire.decode(bytes(data))


def test_invalid_utf8_type_is_refused() -> None:
    body = struct.pack(">BI", wire.KIND_SUBMIT, 1) + struct.pack(">IB", 1, 2) + b"\xff\xfe"
    body += struct.pack(">IB", 0, 0)
    with pytest.raises(wire.ProtocolError, match="UTF-8"):
        wire.decode(body)


def test_unknown_result_status_is_refused() -> None:
    body = struct.pack(">BI", wire.KIND_RESULTS, 1) + struct.pack(">QBI", 1, 9, 0)
    with pytest.raises(wire.ProtocolError, match="status"):
        wire.decode(body)


def test_record_count_larger_than_frame() -> None:
    body = struct.pack(">BI", wire.KIND_ACCEPTED, 1000) + struct.pack(">IQB", 1, 1, 0)
    with pytest.raises(wire.ProtocolError):
        wire.decode(body)


def test_random_bytes_never_escape_as_other_errors() -> None:
    """Fuzz: arbitrary bodies either decode or raise ProtocolError, nothing else."""
    rng = random.Random(1234)
    kinds = [*range(0x01, 0x07), *range(0x10, 0x1B), 0x20, 0x21, 0x22, 0x7F]
    for _ in range(5000):
        body = bytes([rng.choice(kinds)]) + rng.randbytes(rng.randrange(0, 40))
        try:
            wire.decode(body)
        except wire.ProtocolError:
            pass


def test_names_too_long_to_encode() -> None:
    with pytest.raises(ValueError, match="task type"):
        wire.encode(wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=("x" * 256,)))


def test_default_options_cost_one_byte() -> None:
    plain = wire.encode(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)]))
    assert plain.endswith(b"x\x00")


def test_an_option_bit_without_its_field_is_refused() -> None:
    # Every bit of the option byte has a meaning now (0x80: a due time, u64 follows).
    data = bytearray(wire.encode(wire.Submit([(1, "sha256", b"x", wire.DEFAULT_OPTIONS)])))
    data[-1] = 0x80
    with pytest.raises(wire.ProtocolError, match="middle of a field"):
        wire.decode(bytes(data))


def test_a_zero_timeout_is_refused() -> None:
    data = bytearray(wire.encode(wire.Submit([(1, "t", b"", wire.TaskOptions(timeout=1.0))])))
    data[-4:] = b"\x00\x00\x00\x00"
    with pytest.raises(wire.ProtocolError, match="0 ms"):
        wire.decode(bytes(data))


@pytest.mark.parametrize("seconds", [0, 0.0001, 5e6])
def test_timeouts_the_wire_cannot_carry(seconds: float) -> None:
    with pytest.raises(ValueError):
        wire.timeout_milliseconds(seconds)


@pytest.mark.parametrize("name", ["", "x" * 256, 5])
def test_unusable_task_types(name: object) -> None:
    with pytest.raises(ValueError):
        wire.check_task_type(name)


@pytest.mark.parametrize(
    "message, field",
    [
        (wire.Query([(wire.MAX_ID + 1, True)]), "task id"),
        (wire.Query([(2**64 - 1, False)]), "task id"),
        (wire.Cancel([1, 2**63]), "task id"),
        (wire.JobItems(job_id=1, first_index=wire.MAX_ID, payloads=[b"a", b"b"]), "item indexes"),
        (wire.JobItems(job_id=1, first_index=2**64 - 1, payloads=[b"a"]), "item indexes"),
        (wire.JobEnd(job_id=1, total=2**63), "job total"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_ids_and_indexes_beyond_what_a_store_holds_are_refused(message: wire.Message, field: str) -> None:
    """Every id must fit a signed 64-bit integer (SQLite's INTEGER): larger ones are refused by name."""
    with pytest.raises(wire.ProtocolError, match=field):
        wire.decode(wire.encode(message))


def test_the_largest_ids_and_indexes_are_accepted() -> None:
    for message in (
        wire.Query([(wire.MAX_ID, True)]),
        wire.Cancel([wire.MAX_ID]),
        wire.JobItems(job_id=1, first_index=wire.MAX_ID, payloads=[b"a"]),
        wire.JobEnd(job_id=1, total=wire.MAX_ID),
    ):
        assert wire.decode(wire.encode(message)) == message


# -- task functions: context in assignments, progress, retries (issue 13) ----------

TASK_MESSAGES = [
    wire.AssignTasks(
        [(10, "add", b"[2,3]", 1, 3, 0), (2**64 - 1, "sleep", b"1", 0xFFFF, 0xFFFF, 0xFFFFFFFF)]
    ),
    wire.AssignTasks([]),
    wire.AssignGroups([(5, "add", [(6, 1, 3, b"[1,2]"), (7, 2, 3, b"")]), (8, "x", [])]),
    wire.Progress([(6, 1.0, 3.0, "step 1 ✓"), (7, 0.5, 0.0, "")]),
    wire.Results([(10, wire.STATUS_RETRY, wire.retry_value(1.5, b"Retry: later"))]),
    wire.ChunkResults([(5, 0, [(wire.STATUS_RETRY, wire.retry_value(None, b"E")), (wire.STATUS_OK, b"1")])]),
]


@pytest.mark.parametrize("message", TASK_MESSAGES, ids=lambda m: type(m).__name__)
def test_task_function_messages_round_trip_and_refuse_truncation(message: wire.Message) -> None:
    data = wire.encode(message)
    assert wire.decode(data) == message
    for cut in range(len(data)):
        with pytest.raises(wire.ProtocolError):
            wire.decode(data[:cut])
    with pytest.raises(wire.ProtocolError):
        wire.decode(data + b"\x00")


def test_an_assignment_s_attempt_counts_from_one() -> None:
    for message in (
        wire.AssignTasks([(1, "t", b"", 0, 3, 0)]),
        wire.AssignGroups([(1, "t", [(2, 0, 3, b"")])]),
    ):
        with pytest.raises(wire.ProtocolError, match="attempt"):
            wire.decode(wire.encode(message))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_progress_numbers_are_range_checked(bad: float) -> None:
    for record in [(1, bad, 1.0, ""), (1, 1.0, bad, "")]:
        data = bytearray(wire.encode(wire.Progress([(1, 0.0, 0.0, "")])))
        struct.pack_into(">dd", data, 5 + 8, record[1], record[2])
        with pytest.raises(wire.ProtocolError, match="progress"):
            wire.decode(bytes(data))


def test_a_progress_note_is_bounded() -> None:
    with pytest.raises(ValueError):
        wire.encode(wire.Progress([(1, 0.0, 0.0, "x" * (wire.MAX_PROGRESS_NOTE + 1))]))
    data = bytearray(wire.encode(wire.Progress([(1, 0.0, 0.0, "")])))
    struct.pack_into(">H", data, 5 + 24, wire.MAX_PROGRESS_NOTE + 1)
    with pytest.raises(wire.ProtocolError, match="note"):
        wire.decode(bytes(data) + b"x" * (wire.MAX_PROGRESS_NOTE + 1))


def test_a_retry_value_carries_its_delay_then_its_reason() -> None:
    assert wire.split_retry(wire.retry_value(2.5, b"why")) == (2.5, b"why")
    assert wire.split_retry(wire.retry_value(None, b"")) == (None, b"")
    assert wire.split_retry(wire.retry_value(10**9, b""))[0] == (wire.RETRY_BACKOFF - 1) / 1000
    with pytest.raises(ValueError):
        wire.split_retry(b"abc")


def test_a_pending_value_is_the_state_then_the_progress() -> None:
    assert wire.pending_value("queued") == b"queued"
    value = wire.pending_value("running", (3.0, 10.0, "three ✓"))
    assert value.startswith(b"running {")
    assert wire.parse_pending(value) == ("running", (3.0, 10.0, "three ✓"))
    assert wire.parse_pending(b"running") == ("running", None)
    assert wire.parse_pending(b"running {broken") == ("running", None)
