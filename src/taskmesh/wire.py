"""
The taskmesh wire format: the only module that knows bytes.

Every message travels as one frame of Twisted's ``Int32StringReceiver`` (a
4-byte big-endian length, then the body).  The body's first byte names the
message kind; the rest is a fixed layout of big-endian integers and
length-prefixed strings, decoded with precompiled ``struct`` formats because
this is the hot path: a generic serialiser would cost more than hashing the
task itself.  No pickle, ever: a frame is data, never code.

Messages that carry tasks or results carry a *list* of records, so that
everything a peer has to say in one reactor turn fits in one frame.

``docs/protocol.md`` describes the same format for implementers in other
languages; keep the two in step.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 2
MAGIC = b"TMSH"

#: Frames larger than this are refused (the receiver answers with an error
#: and drops the connection).  The scheduler announces its limit in the
#: welcome, and it binds both directions of the connection: senders split
#: batches below it and refuse payloads that cannot fit.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: A single task payload or result larger than this is refused with a clear
#: error; it must also fit in a frame with room to spare.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: The largest frame limit a welcome can announce (u32).
MAX_FRAME_LIMIT = 0xFFFFFFFF

# Roles a peer announces in its hello.
ROLE_CLIENT = 1
ROLE_WORKER = 2
ROLE_NAMES = {ROLE_CLIENT: "client", ROLE_WORKER: "worker"}

# Status of a task in a result record.
STATUS_OK = 0  # value: the result
STATUS_FAILED = 1  # value: the reason, UTF-8
STATUS_CANCELLED = 2  # value: who cancelled it, UTF-8
STATUS_PENDING = 3  # value: the state, "queued" or "running" (answers a query without wait)
STATUS_UNKNOWN = 4  # value: why, UTF-8 (never submitted, or its result was pruned)
STATUS_RETRY = 5  # worker to scheduler only: the attempt failed and asks for another (see retry_value)
_STATUSES = frozenset(range(6))
#: What a worker may report for a task or a chunk's item.
WORKER_STATUSES = frozenset((STATUS_OK, STATUS_FAILED, STATUS_RETRY))

# Bits of the flags byte in an accepted record.
ACCEPTED_NO_WORKER = 0x01  # no connected worker runs this task type yet
ACCEPTED_DUPLICATE = 0x02  # a task with this key existed: this is its id, nothing new was queued

# Bits of the options byte of a submit record; each set bit but the last two
# adds a field after the payload, in this order.
OPTION_PRIORITY = 0x01  # i32
OPTION_TIMEOUT = 0x02  # u32 milliseconds
OPTION_MAX_ATTEMPTS = 0x04  # u16
OPTION_KEY = 0x08  # u8 length + UTF-8
OPTION_RETRY_ON_ERROR = 0x10  # no field
OPTION_NO_RESULT = 0x20  # no field: do not send this task's result on this connection
OPTION_DELAY = 0x40  # u32 milliseconds: run this long after the scheduler accepts it
OPTION_AT = 0x80  # u64 milliseconds since the epoch (UTC): run at this time

# Error codes carried by ``Error``; the sender closes the connection after it.
ERROR_MALFORMED = 1
ERROR_VERSION = 2
ERROR_FRAME_TOO_LARGE = 3
ERROR_UNEXPECTED = 4
ERROR_INTERNAL = 5
ERROR_SILENT = 6  # no heartbeat for too long
ERROR_TIMEOUT = 7  # the handshake, or a frame, did not finish in time
ERROR_BUSY = 8  # the scheduler cannot take this now (unfinished-frame budget spent): try again later
ERROR_LIMIT = 9  # a per-connection limit was passed (outstanding queries, open jobs, connections)
ERROR_AUTH = 10  # the handshake's proof does not match: no secret, the wrong secret, or a replay

#: Bytes of a handshake nonce, and of an HMAC-SHA256 proof.
NONCE_SIZE = 32
PROOF_SIZE = 32

#: The largest task, chunk or job id, and job item index: what a signed 64-bit
#: integer holds (SQLite's INTEGER), so every id fits every store.
MAX_ID = 2**63 - 1

# Message kinds: the first byte of every frame body.
KIND_HELLO = 0x01
KIND_WELCOME = 0x02
KIND_ERROR = 0x03
KIND_HEARTBEAT = 0x04
KIND_STATUS_REQUEST = 0x05
KIND_STATUS_REPORT = 0x06
KIND_CHALLENGE = 0x07
KIND_PROOF = 0x08
KIND_STANDBY = 0x09
KIND_SUBMIT = 0x10
KIND_ACCEPTED = 0x11
KIND_REJECTED = 0x12
KIND_RESULTS = 0x13
KIND_QUERY = 0x14
KIND_CANCEL = 0x15
KIND_JOB_SUBMIT = 0x16
KIND_JOB_ACCEPTED = 0x17
KIND_JOB_ITEMS = 0x18
KIND_JOB_END = 0x19
KIND_JOB_RESULTS = 0x1A
KIND_SCHEDULE = 0x1B
KIND_SCHEDULE_ANSWER = 0x1C
KIND_LIST_TASKS = 0x1D
KIND_RETRY_TASKS = 0x1E
KIND_PURGE_TASKS = 0x1F
KIND_ASSIGN = 0x20
KIND_ASSIGN_CHUNKS = 0x21
KIND_CHUNK_RESULTS = 0x22
KIND_ASSIGN_TASKS = 0x23
KIND_ASSIGN_GROUPS = 0x24
KIND_PROGRESS = 0x25
KIND_DRAIN = 0x26
KIND_ANSWER = 0x27  # scheduler to client (its number came after the worker ones)

# Record and header layouts (all big-endian, no padding).
_KIND = struct.Struct(">B")
_COUNT = struct.Struct(">BI")  # kind, record count
_HELLO_HEAD = struct.Struct(">B4sHBIH")  # kind, magic, version, role, slots, name length
# kind, version, max frame, max payload, heartbeat ms, tolerance, prefetch, name length
_WELCOME_HEAD = struct.Struct(">BHIIIHHH")
_ERROR_HEAD = struct.Struct(">BHH")  # kind, code, message length
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_SUBMIT_REC = struct.Struct(">IB")  # request id, type length; then type, then u32 payload length
_ASSIGN_REC = struct.Struct(">QB")  # task id, type length; then type, then u32 payload length
_U32 = struct.Struct(">I")
_ACCEPTED_REC = struct.Struct(">IQB")  # request id, task id, flags
_REJECTED_REC = struct.Struct(">IH")  # request id, reason length
_RESULT_REC = struct.Struct(">QBI")  # task id, status, value length
_QUERY_REC = struct.Struct(">QB")  # task id, wait
_TASK_ID = struct.Struct(">Q")
_I32 = struct.Struct(">i")

#: Fixed bytes of the largest record layout: with the record's variable bytes
#: (payload and type name), what a sender adds up to split long batches below
#: the peer's frame limit.
RECORD_OVERHEAD = 13
#: The most one record can need beyond its payload: a chunk of one item with
#: a 255-byte type name (chunk id 8, type 1 + 255, count 4, length 4).
MAX_RECORD_OVERHEAD = 8 + 1 + 255 + 4 + 4
#: Bytes each item adds to a chunk beyond its payload (its length prefix),
#: counted with a margin for the answer's status byte.
CHUNK_ITEM_OVERHEAD = 5


def chunk_record_overhead(task_type: str) -> int:
    """Bytes of a chunk record before its items: chunk id, type name, count."""
    return 8 + 1 + len(task_type.encode("utf-8")) + 4


FRAME_OVERHEAD = _COUNT.size


class ProtocolError(Exception):
    """A frame that does not decode: the connection it came from is dropped."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame a client or worker sends: who it is and what it runs."""

    role: int
    name: str
    slots: int = 0
    task_types: tuple[str, ...] = ()
    version: int = PROTOCOL_VERSION
    #: Fresh random bytes for the handshake's challenge (NONCE_SIZE of them).
    nonce: bytes = bytes(NONCE_SIZE)


@dataclass(frozen=True, slots=True)
class Welcome:
    """
    The scheduler's answer to a hello: the limits the peer must respect, and
    the heartbeat: a worker sends one every ``heartbeat_ms`` and treats a
    scheduler silent for ``tolerance`` intervals as gone (and vice versa).
    """

    name: str
    max_frame: int
    max_payload: int
    heartbeat_ms: int = 0
    tolerance: int = 0
    version: int = PROTOCOL_VERSION
    #: Tasks (or chunks) the scheduler may send a worker beyond its slots.
    prefetch: int = 0


@dataclass(frozen=True, slots=True)
class Challenge:
    """
    The scheduler's answer to a hello: its name, a fresh nonce, and its proof
    that it knows the role's secret (HMAC-SHA256 over the handshake so far).
    """

    name: str
    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """The peer's proof that it knows the role's secret; the scheduler welcomes it, or refuses."""

    proof: bytes


#: The longest leader address a Standby may carry, in bytes.
MAX_LEADER_ADDRESS = 255


@dataclass(frozen=True, slots=True)
class Standby:
    """
    Instead of the Welcome: this scheduler is a hot standby, not the leader;
    the leader's advertised address is ``leader`` (``host:port``), or empty
    while no leader is known.  The scheduler closes the connection next.
    """

    leader: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """I am alive (worker and scheduler, both ways)."""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Client to scheduler: describe yourself."""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Scheduler to client: workers and task counts, as a JSON object."""

    json: str


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a submitted task is to be run; the defaults cost nothing on the wire."""

    priority: int = 0
    timeout: float | None = None  # seconds of execution before the attempt fails
    max_attempts: int = 0  # 0: the scheduler's default
    key: str | None = None  # deduplication key
    retry_on_error: bool = False
    no_result: bool = False
    delay: float | None = None  # seconds after acceptance before it may run (delayed task)
    at: float | None = None  # seconds since the epoch at which it may run (at most one of the two)


DEFAULT_OPTIONS = TaskOptions()

#: The latest due time the wire carries (``at``): the end of the year 9999, UTC.
MAX_AT_SECONDS = 253402300799.999
#: The longest delay the wire carries: the same u32 milliseconds as a timeout (about 49.7 days).
MAX_DELAY_SECONDS = 0xFFFFFFFF / 1000


def delay_milliseconds(seconds: float) -> int:
    """A delay as the wire carries it; ValueError outside 0 to ~49.7 days (NaN and infinity too)."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"a delay must be a finite number of seconds, not {seconds!r}")
    milliseconds = round(seconds * 1000)
    if not 0 <= milliseconds <= 0xFFFFFFFF:
        raise ValueError(f"a delay must be 0 to {MAX_DELAY_SECONDS:g} seconds (use at= for later)")
    return milliseconds


def at_milliseconds(seconds: float) -> int:
    """A due time as the wire carries it; ValueError outside the epoch to the year 9999."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"a due time must be a finite number of seconds since the epoch, not {seconds!r}")
    milliseconds = round(seconds * 1000)
    if not 0 <= milliseconds <= round(MAX_AT_SECONDS * 1000):
        raise ValueError("a due time must be from 1970 to the end of 9999 (UTC)")
    return milliseconds


@dataclass(frozen=True, slots=True)
class Error:
    """A fatal complaint; whoever sends it closes the connection next."""

    code: int
    message: str


# Records are plain tuples: a frame of ten thousand tasks should not cost ten
# thousand extra objects.

#: (request id, task type, payload, options): a client's request id is its
#: own correlation number, echoed back in Accepted or Rejected.
SubmitRecord = tuple[int, str, bytes, TaskOptions]
#: (request id, task id, flags)
AcceptedRecord = tuple[int, int, int]
#: (request id, reason)
RejectedRecord = tuple[int, str]
#: (task id, status, value): value is the result, or a UTF-8 reason on failure.
ResultRecord = tuple[int, int, bytes]
#: (task id, task type, payload)
AssignRecord = tuple[int, str, bytes]
#: (task id, wait): wait=True answers when the task is finished
QueryRecord = tuple[int, bool]


@dataclass(frozen=True, slots=True)
class Submit:
    """Client to scheduler: run these tasks."""

    records: list[SubmitRecord]


@dataclass(frozen=True, slots=True)
class Accepted:
    """Scheduler to client: these submissions are queued under these ids."""

    records: list[AcceptedRecord]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Scheduler to client: these submissions were refused, and why."""

    records: list[RejectedRecord]


@dataclass(frozen=True, slots=True)
class Results:
    """Outcomes of tasks: worker to scheduler, and scheduler to client."""

    records: list[ResultRecord]


@dataclass(frozen=True, slots=True)
class Assign:
    """Scheduler to worker: run these tasks."""

    records: list[AssignRecord]


@dataclass(frozen=True, slots=True)
class Query:
    """Client to scheduler: tell me (now, or when finished) how these tasks ended."""

    records: list[QueryRecord]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Client to scheduler, and scheduler to worker: stop these tasks (by id)."""

    records: list[int]


@dataclass(frozen=True, slots=True)
class JobSubmit:
    """
    Client to scheduler: open a job (a map): many payloads of one task type,
    run in chunks, answered by index.  ``chunk_size`` 0 lets the scheduler
    choose; ``size_hint`` 0 means the number of items is not known.
    """

    request: int
    task_type: str
    priority: int = 0
    chunk_size: int = 0
    size_hint: int = 0


@dataclass(frozen=True, slots=True)
class JobAccepted:
    """Scheduler to client: the job is open under this id (flags as in Accepted)."""

    request: int
    job_id: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class JobItems:
    """Client to scheduler: payloads of a job, indexes first_index, first_index + 1, ..."""

    job_id: int
    first_index: int
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class JobEnd:
    """Client to scheduler: the job has ``total`` items; no more will come."""

    job_id: int
    total: int


#: (job id, item index, status, value)
JobResultRecord = tuple[int, int, int, bytes]
#: (chunk id, task type, payloads)
ChunkRecord = tuple[int, str, list[bytes]]
#: (chunk id, offset, [(status, value) per payload from the offset on, in order]):
#: a chunk may be answered in several parts, in order, so that no answer
#: has to fit in one frame whatever the chunk's results weigh.
ChunkResultRecord = tuple[int, int, list[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class JobResults:
    """Scheduler to client: outcomes of job items, in any order."""

    records: list[JobResultRecord]


@dataclass(frozen=True, slots=True)
class AssignChunks:
    """Scheduler to worker: run each chunk's payloads, one after another, in one slot."""

    records: list[ChunkRecord]


@dataclass(frozen=True, slots=True)
class ChunkResults:
    """Worker to scheduler: outcomes of chunks' payloads, each chunk in one or more parts."""

    records: list[ChunkResultRecord]


#: (task id, task type, payload, attempt, max attempts, timeout ms): a task
#: with what it knows about itself while it runs (``taskmesh.current_task()``).
#: Attempt counts from 1; max attempts and timeout 0: not set.
TaskRecord = tuple[int, str, bytes, int, int, int]
#: (group id, task type, [(task id, attempt, max attempts, payload), ...])
GroupRecord = tuple[int, str, list[tuple[int, int, int, bytes]]]
#: (task id, done, total, note): total 0 means unknown.
ProgressRecord = tuple[int, float, float, str]

#: The longest progress note, in bytes of UTF-8.
MAX_PROGRESS_NOTE = 1024


@dataclass(frozen=True, slots=True)
class AssignTasks:
    """Scheduler to worker: run these tasks (Assign, with each task's attempt, attempts and timeout)."""

    records: list[TaskRecord]


@dataclass(frozen=True, slots=True)
class AssignGroups:
    """
    Scheduler to worker: run each group's tasks one after another in one
    slot, answered as a chunk (ChunkResults); unlike a job's chunk, every
    item is a task with its own id.
    """

    records: list[GroupRecord]


@dataclass(frozen=True, slots=True)
class Progress:
    """Worker to scheduler: how far these running tasks have come (the latest report of each)."""

    records: list[ProgressRecord]


# -- periodic schedules ---------------------------------------------------------

SCHEDULE_ADD = 1  # create or replace the named schedule
SCHEDULE_REMOVE = 2
SCHEDULE_PAUSE = 3
SCHEDULE_RESUME = 4
SCHEDULE_LIST = 5  # every schedule (the name is empty)
SCHEDULE_OPS = {
    SCHEDULE_ADD: "add",
    SCHEDULE_REMOVE: "remove",
    SCHEDULE_PAUSE: "pause",
    SCHEDULE_RESUME: "resume",
    SCHEDULE_LIST: "list",
}
#: Bounds on a schedule's fields (the scheduler core checks the same).
MAX_SCHEDULE_NAME = 128  # bytes of UTF-8
MAX_CRON_LENGTH = 256  # bytes
MAX_TZ_LENGTH = 64  # bytes
#: The longest interval of an ``every`` schedule: 366 days (u32 milliseconds cannot carry more than 49.7).
MAX_EVERY_SECONDS = 366 * 24 * 3600.0
#: Schedule flag bits.
SCHEDULE_SKIP_MISSED = 0x01  # ticks missed while no scheduler ran are skipped (default: the latest runs once)
_SCHEDULE_HEAD = struct.Struct(">BBB")  # kind, op, name length
_SCHEDULE_ANSWER_HEAD = struct.Struct(">BBI")  # kind, ok, JSON length
#: Options a schedule's tasks may carry: no key (each tick has its own), no delay or due time.
_SCHEDULE_OPTION_BITS = OPTION_PRIORITY | OPTION_TIMEOUT | OPTION_MAX_ATTEMPTS | OPTION_RETRY_ON_ERROR


@dataclass(frozen=True, slots=True)
class ScheduleCommand:
    """
    Client to scheduler: add, remove, pause, resume or list periodic
    schedules; answered, in order, by one ScheduleAnswer each.  For ``add``,
    exactly one of ``cron`` (five fields, in the zone ``tz``) and ``every``
    (seconds) is set, and the task each tick submits is described.
    """

    op: int
    name: str = ""
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    task_type: str = ""
    payload: bytes = b""
    options: TaskOptions = DEFAULT_OPTIONS
    catch_up: bool = True


@dataclass(frozen=True, slots=True)
class ScheduleAnswer:
    """Scheduler to client: ``ok`` and the schedule(s) as JSON, or not ``ok`` and the reason (text)."""

    ok: bool
    json: str


def encode_schedule_command(message: ScheduleCommand) -> bytes:
    if message.op not in SCHEDULE_OPS:
        raise ValueError(f"unknown schedule operation {message.op}")
    name = _short(message.name, "schedule name", MAX_SCHEDULE_NAME)
    parts = [_SCHEDULE_HEAD.pack(KIND_SCHEDULE, message.op, len(name)), name]
    if message.op == SCHEDULE_ADD:
        cron = _short(message.cron or "", "cron expression", MAX_CRON_LENGTH)
        every = 0
        if message.every is not None:
            if not math.isfinite(message.every) or not 0.001 <= message.every <= MAX_EVERY_SECONDS:
                raise ValueError(f"an interval must be 0.001 to {MAX_EVERY_SECONDS:g} seconds")
            every = round(message.every * 1000)
        tz = _short(message.tz, "time zone", MAX_TZ_LENGTH)
        task_type = _short(check_task_type(message.task_type), "task type", 0xFF)
        options = message.options
        if (
            options.key is not None
            or options.delay is not None
            or options.at is not None
            or options.no_result
        ):
            raise ValueError(
                "a schedule's task takes no key, delay, due time or no_result: each tick has its own"
            )
        parts += [
            _U16.pack(len(cron)),
            cron,
            _U64.pack(every),
            _U8.pack(len(tz)),
            tz,
            _U8.pack(len(task_type)),
            task_type,
            _U32.pack(len(message.payload)),
            message.payload,
            _encode_options(options),
            _U8.pack(0 if message.catch_up else SCHEDULE_SKIP_MISSED),
        ]
    return b"".join(parts)


def encode_schedule_answer(message: ScheduleAnswer) -> bytes:
    text = message.json.encode("utf-8")
    return _SCHEDULE_ANSWER_HEAD.pack(KIND_SCHEDULE_ANSWER, 1 if message.ok else 0, len(text)) + text


@dataclass(frozen=True, slots=True)
class Drain:
    """
    Worker to scheduler: this worker is shutting down (warm): assign it
    nothing more, and take back these leases (task, group or chunk ids),
    which it held without starting them.  It may come more than once: work
    assigned before the scheduler read the first is handed back the same way.
    """

    records: list[int]


#: ListTasks' state filter: 0 any; then unfinished, succeeded, failed, cancelled.
LIST_STATES = ("any", "unfinished", "succeeded", "failed", "cancelled")
#: Rows one ListTasks may ask for, at the most.
MAX_LIST_LIMIT = 1000
#: Task ids one RetryTasks may name, at the most.
MAX_RETRY_IDS = 10000
#: Bytes of JSON in one Answer, at the most (it is also bound by the frame limit).
MAX_ANSWER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ListTasks:
    """
    Client to scheduler: a page of the task list, newest first (answered
    with an Answer).  ``state`` indexes LIST_STATES; ``before_id`` 0 starts
    from the newest; ``task_type`` None: every type.
    """

    request: int
    state: int = 0
    limit: int = 100
    before_id: int = 0
    task_type: str | None = None


@dataclass(frozen=True, slots=True)
class RetryTasks:
    """
    Client to scheduler: run these failed or cancelled tasks again, under
    their ids, with fresh attempts; with ``every_failed``, also every failed
    task (of ``task_type``, if given).  Answered with an Answer.
    """

    request: int
    task_ids: list[int]
    every_failed: bool = False
    task_type: str | None = None


@dataclass(frozen=True, slots=True)
class PurgeTasks:
    """Client to scheduler: cancel every queued task of this type (answered with an Answer)."""

    request: int
    task_type: str


@dataclass(frozen=True, slots=True)
class Answer:
    """Scheduler to client: the answer to ListTasks, RetryTasks or PurgeTasks, as a JSON object."""

    request: int
    json: str


Message = (
    Hello
    | Welcome
    | Challenge
    | Proof
    | Standby
    | Error
    | Heartbeat
    | StatusRequest
    | StatusReport
    | Submit
    | Accepted
    | Rejected
    | Results
    | Query
    | Cancel
    | Assign
    | JobSubmit
    | JobAccepted
    | JobItems
    | JobEnd
    | JobResults
    | AssignChunks
    | ChunkResults
    | AssignTasks
    | AssignGroups
    | Progress
    | ScheduleCommand
    | ScheduleAnswer
    | Drain
    | ListTasks
    | RetryTasks
    | PurgeTasks
    | Answer
)


def check_task_type(name: object) -> str:
    """A task type name the wire can carry: 1 to 255 bytes of UTF-8; else ValueError."""
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8")) <= 0xFF:
        raise ValueError(f"a task type must be 1 to 255 bytes of UTF-8, not {name!r}")
    return name


def check_key(key: str) -> str:
    """A deduplication key the wire can carry: at most 255 bytes of UTF-8; else ValueError."""
    if len(key.encode("utf-8")) > 0xFF:
        raise ValueError("a key must be at most 255 bytes of UTF-8")
    return key


def _short(text: str, what: str, limit: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ValueError(f"{what} is {len(data)} bytes long; the most is {limit}")
    return data


def _exact(data: bytes, what: str, size: int) -> bytes:
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def encode_hello(message: Hello) -> bytes:
    name = _short(message.name, "name", 0xFFFF)
    parts = [
        _HELLO_HEAD.pack(KIND_HELLO, MAGIC, message.version, message.role, message.slots, len(name)),
        name,
        _U16.pack(len(message.task_types)),
    ]
    for task_type in message.task_types:
        encoded = _short(task_type, "task type", 0xFF)
        parts.append(_U8.pack(len(encoded)))
        parts.append(encoded)
    parts.append(_exact(message.nonce, "a nonce", NONCE_SIZE))
    return b"".join(parts)


def encode_challenge(message: Challenge) -> bytes:
    name = _short(message.name, "name", 0xFFFF)
    return b"".join(
        (
            _U8.pack(KIND_CHALLENGE),
            _U16.pack(len(name)),
            name,
            _exact(message.nonce, "a nonce", NONCE_SIZE),
            _exact(message.proof, "a proof", PROOF_SIZE),
        )
    )


def encode_proof(message: Proof) -> bytes:
    return _U8.pack(KIND_PROOF) + _exact(message.proof, "a proof", PROOF_SIZE)


def encode_welcome(message: Welcome) -> bytes:
    name = _short(message.name, "name", 0xFFFF)
    return (
        _WELCOME_HEAD.pack(
            KIND_WELCOME,
            message.version,
            message.max_frame,
            message.max_payload,
            message.heartbeat_ms,
            message.tolerance,
            message.prefetch,
            len(name),
        )
        + name
    )


def check_leader_address(address: str) -> str:
    """
    A Standby's leader address: at most MAX_LEADER_ADDRESS bytes of printable
    ASCII without spaces (a ``host:port``), or empty.
    """
    if len(address) > MAX_LEADER_ADDRESS or not all("!" <= c <= "~" for c in address):
        raise ProtocolError(
            f"a leader address is up to {MAX_LEADER_ADDRESS} printable ASCII characters "
            f"without spaces, not {address[:80]!r}"
        )
    return address


def encode_standby(message: Standby) -> bytes:
    leader = check_leader_address(message.leader).encode("ascii")
    return _U8.pack(KIND_STANDBY) + _U8.pack(len(leader)) + leader


def encode_error(message: Error) -> bytes:
    text = message.message.encode("utf-8")[:0xFFFF]
    return _ERROR_HEAD.pack(KIND_ERROR, message.code, len(text)) + text


_NO_OPTIONS = b"\x00"

#: The longest task timeout the wire can carry (u32 milliseconds).
MAX_TIMEOUT_SECONDS = 0xFFFFFFFF / 1000


def timeout_milliseconds(seconds: float) -> int:
    """A task timeout as the wire carries it; ValueError outside 1 ms to ~49.7 days."""
    milliseconds = round(seconds * 1000)
    if not 1 <= milliseconds <= 0xFFFFFFFF:
        raise ValueError(f"a task timeout must be 0.001 to {MAX_TIMEOUT_SECONDS:g} seconds")
    return milliseconds


def _encode_options(options: TaskOptions) -> bytes:
    if options is DEFAULT_OPTIONS:
        return _NO_OPTIONS
    flags = 0
    fields = []
    if options.priority:
        flags |= OPTION_PRIORITY
        fields.append(_I32.pack(options.priority))
    if options.timeout is not None:
        flags |= OPTION_TIMEOUT
        fields.append(_U32.pack(timeout_milliseconds(options.timeout)))
    if options.max_attempts:
        flags |= OPTION_MAX_ATTEMPTS
        fields.append(_U16.pack(options.max_attempts))
    if options.key is not None:
        flags |= OPTION_KEY
        key = _short(options.key, "key", 0xFF)
        fields.append(_U8.pack(len(key)) + key)
    if options.retry_on_error:
        flags |= OPTION_RETRY_ON_ERROR
    if options.no_result:
        flags |= OPTION_NO_RESULT
    if options.delay is not None:
        flags |= OPTION_DELAY
        fields.append(_U32.pack(delay_milliseconds(options.delay)))
    if options.at is not None:
        if options.delay is not None:
            raise ValueError("a task takes a delay or a due time (at), not both")
        flags |= OPTION_AT
        fields.append(_U64.pack(at_milliseconds(options.at)))
    return _U8.pack(flags) + b"".join(fields)


def encode_submit(message: Submit) -> bytes:
    parts = [_COUNT.pack(KIND_SUBMIT, len(message.records))]
    append = parts.append
    pack = _SUBMIT_REC.pack
    pack_len = _U32.pack
    for request, task_type, payload, options in message.records:
        encoded_type = task_type.encode("utf-8")
        append(pack(request, len(encoded_type)))
        append(encoded_type)
        append(pack_len(len(payload)))
        append(payload)
        append(_NO_OPTIONS if options is DEFAULT_OPTIONS else _encode_options(options))
    return b"".join(parts)


def encode_assign(message: Assign) -> bytes:
    parts = [_COUNT.pack(KIND_ASSIGN, len(message.records))]
    append = parts.append
    pack = _ASSIGN_REC.pack
    pack_len = _U32.pack
    for task_id, task_type, payload in message.records:
        encoded_type = task_type.encode("utf-8")
        append(pack(task_id, len(encoded_type)))
        append(encoded_type)
        append(pack_len(len(payload)))
        append(payload)
    return b"".join(parts)


def encode_accepted(message: Accepted) -> bytes:
    pack = _ACCEPTED_REC.pack
    return _COUNT.pack(KIND_ACCEPTED, len(message.records)) + b"".join(
        [pack(request, task_id, flags) for request, task_id, flags in message.records]
    )


def encode_rejected(message: Rejected) -> bytes:
    parts = [_COUNT.pack(KIND_REJECTED, len(message.records))]
    for request, reason in message.records:
        text = reason.encode("utf-8")[:0xFFFF]
        parts.append(_REJECTED_REC.pack(request, len(text)))
        parts.append(text)
    return b"".join(parts)


def encode_results(message: Results) -> bytes:
    parts = [_COUNT.pack(KIND_RESULTS, len(message.records))]
    append = parts.append
    pack = _RESULT_REC.pack
    for task_id, status, value in message.records:
        append(pack(task_id, status, len(value)))
        append(value)
    return b"".join(parts)


def encode_status_report(message: StatusReport) -> bytes:
    text = message.json.encode("utf-8")
    return _U8.pack(KIND_STATUS_REPORT) + _U32.pack(len(text)) + text


def encode_query(message: Query) -> bytes:
    pack = _QUERY_REC.pack
    return _COUNT.pack(KIND_QUERY, len(message.records)) + b"".join(
        [pack(task_id, 1 if wait else 0) for task_id, wait in message.records]
    )


def encode_cancel(message: Cancel) -> bytes:
    pack = _TASK_ID.pack
    return _COUNT.pack(KIND_CANCEL, len(message.records)) + b"".join(
        [pack(task_id) for task_id in message.records]
    )


_JOB_SUBMIT_HEAD = struct.Struct(">BIiIQB")  # kind, request, priority, chunk size, size hint, type length
_JOB_ACCEPTED = struct.Struct(">BIQB")  # kind, request, job id, flags
_JOB_ITEMS_HEAD = struct.Struct(">BQQI")  # kind, job id, first index, count
_JOB_END = struct.Struct(">BQQ")  # kind, job id, total
_JOB_RESULT_REC = struct.Struct(">QQBI")  # job id, index, status, value length
_CHUNK_HEAD = struct.Struct(">QBI")  # chunk id, type length (type follows), then u32 count
_U64 = struct.Struct(">Q")
_CHUNK_PART = struct.Struct(">QII")  # chunk id, offset, count
_STATUS_LEN = struct.Struct(">BI")


def encode_job_submit(message: JobSubmit) -> bytes:
    task_type = _short(message.task_type, "task type", 0xFF)
    return (
        _JOB_SUBMIT_HEAD.pack(
            KIND_JOB_SUBMIT,
            message.request,
            message.priority,
            message.chunk_size,
            message.size_hint,
            len(task_type),
        )
        + task_type
    )


def encode_job_items(message: JobItems) -> bytes:
    pack = _U32.pack
    parts = [_JOB_ITEMS_HEAD.pack(KIND_JOB_ITEMS, message.job_id, message.first_index, len(message.payloads))]
    for payload in message.payloads:
        parts.append(pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def encode_job_results(message: JobResults) -> bytes:
    pack = _JOB_RESULT_REC.pack
    parts = [_COUNT.pack(KIND_JOB_RESULTS, len(message.records))]
    for job_id, index, status, value in message.records:
        parts.append(pack(job_id, index, status, len(value)))
        parts.append(value)
    return b"".join(parts)


def encode_assign_chunks(message: AssignChunks) -> bytes:
    parts = [_COUNT.pack(KIND_ASSIGN_CHUNKS, len(message.records))]
    pack_len = _U32.pack
    for chunk_id, task_type, payloads in message.records:
        encoded_type = task_type.encode("utf-8")
        parts.append(_U64.pack(chunk_id) + _U8.pack(len(encoded_type)) + encoded_type)
        parts.append(pack_len(len(payloads)))
        for payload in payloads:
            parts.append(pack_len(len(payload)))
            parts.append(payload)
    return b"".join(parts)


def encode_chunk_results(message: ChunkResults) -> bytes:
    parts = [_COUNT.pack(KIND_CHUNK_RESULTS, len(message.records))]
    pack = _STATUS_LEN.pack
    for chunk_id, offset, outcomes in message.records:
        parts.append(_CHUNK_PART.pack(chunk_id, offset, len(outcomes)))
        for status, value in outcomes:
            parts.append(pack(status, len(value)))
            parts.append(value)
    return b"".join(parts)


_TASK_TAIL = struct.Struct(">HHII")  # attempt, max attempts, timeout ms, payload length
_MEMBER_HEAD = struct.Struct(">QHHI")  # task id, attempt, max attempts, payload length
_PROGRESS_REC = struct.Struct(">QddH")  # task id, done, total, note length


def encode_assign_tasks(message: AssignTasks) -> bytes:
    parts = [_COUNT.pack(KIND_ASSIGN_TASKS, len(message.records))]
    append = parts.append
    pack = _ASSIGN_REC.pack
    pack_tail = _TASK_TAIL.pack
    for task_id, task_type, payload, attempt, max_attempts, timeout_ms in message.records:
        encoded_type = task_type.encode("utf-8")
        append(pack(task_id, len(encoded_type)))
        append(encoded_type)
        append(pack_tail(attempt, max_attempts, timeout_ms, len(payload)))
        append(payload)
    return b"".join(parts)


def encode_assign_groups(message: AssignGroups) -> bytes:
    parts = [_COUNT.pack(KIND_ASSIGN_GROUPS, len(message.records))]
    append = parts.append
    pack_member = _MEMBER_HEAD.pack
    for group_id, task_type, members in message.records:
        encoded_type = task_type.encode("utf-8")
        append(_U64.pack(group_id) + _U8.pack(len(encoded_type)) + encoded_type + _U32.pack(len(members)))
        for task_id, attempt, max_attempts, payload in members:
            append(pack_member(task_id, attempt, max_attempts, len(payload)))
            append(payload)
    return b"".join(parts)


def encode_progress(message: Progress) -> bytes:
    parts = [_COUNT.pack(KIND_PROGRESS, len(message.records))]
    for task_id, done, total, note in message.records:
        text = _short(note, "progress note", MAX_PROGRESS_NOTE)
        parts.append(_PROGRESS_REC.pack(task_id, done, total, len(text)))
        parts.append(text)
    return b"".join(parts)


#: A retry's delay that leaves the choice to the scheduler (its backoff).
RETRY_BACKOFF = 0xFFFFFFFF


def retry_value(delay: float | None, reason: bytes) -> bytes:
    """
    The value of a STATUS_RETRY outcome: the delay asked for (u32
    milliseconds, or RETRY_BACKOFF), then the reason, encoded as a failure's.
    """
    milliseconds = RETRY_BACKOFF if delay is None else min(round(delay * 1000), RETRY_BACKOFF - 1)
    return _U32.pack(milliseconds) + reason


def split_retry(value: bytes) -> tuple[float | None, bytes]:
    """(delay in seconds or None for the backoff, reason) of a STATUS_RETRY value; ValueError if too short."""
    if len(value) < 4:
        raise ValueError(f"a retry's value needs its 4-byte delay; this one has {len(value)} bytes")
    (milliseconds,) = _U32.unpack_from(value, 0)
    return (None if milliseconds == RETRY_BACKOFF else milliseconds / 1000), value[4:]


def pending_value(
    state: str, progress: tuple[float, float, str] | None = None, due: float | None = None
) -> bytes:
    """
    The value of a STATUS_PENDING answer: the state (``scheduled``,
    ``queued`` or ``running``), then, for a running task that reported
    progress, a space and ``{"done": D, "total": T, "note": "..."}`` (JSON;
    total 0: unknown), or for a scheduled one a space and ``{"due": T}``
    (seconds since the epoch).
    """
    if due is not None:
        return f"{state} {json.dumps({'due': due})}".encode()
    if progress is None:
        return state.encode("utf-8")
    done, total, note = progress
    report = json.dumps({"done": done, "total": total, "note": note}, separators=(",", ":"))
    return f"{state} {report}".encode()


def parse_due(value: bytes) -> float | None:
    """A STATUS_PENDING value's due time (a scheduled task's), or None; lenient."""
    _, _, report = value.decode("utf-8", "replace").partition(" ")
    try:
        due = json.loads(report)["due"] if report else None
    except (ValueError, TypeError, KeyError):
        return None
    return float(due) if isinstance(due, int | float) and math.isfinite(due) else None


def parse_pending(value: bytes) -> tuple[str, tuple[float, float, str] | None]:
    """(state, (done, total, note) or None) of a STATUS_PENDING value; lenient: bad progress is None."""
    text = value.decode("utf-8", "replace")
    state, _, report = text.partition(" ")
    if not report:
        return text, None
    try:
        fields = json.loads(report)
        done, total, note = float(fields["done"]), float(fields["total"]), str(fields.get("note", ""))
    except (ValueError, TypeError, KeyError):
        return state, None
    return state, (done, total, note)


_LIST_HEAD = struct.Struct(">BIBHQB")  # kind, request, state, limit, before id, type length
_RETRY_HEAD = struct.Struct(">BIBB")  # kind, request, flags, type length; then type, u32 count, ids
_PURGE_HEAD = struct.Struct(">BIB")  # kind, request, type length
_ANSWER_HEAD = struct.Struct(">BII")  # kind, request, JSON length
RETRY_EVERY_FAILED = 0x01


def _optional_type(task_type: str | None) -> bytes:
    return b"" if task_type is None else check_task_type(task_type).encode("utf-8")


def encode_drain(message: Drain) -> bytes:
    pack = _TASK_ID.pack
    return _COUNT.pack(KIND_DRAIN, len(message.records)) + b"".join([pack(i) for i in message.records])


def encode_list_tasks(message: ListTasks) -> bytes:
    kind = _optional_type(message.task_type)
    return (
        _LIST_HEAD.pack(
            KIND_LIST_TASKS, message.request, message.state, message.limit, message.before_id, len(kind)
        )
        + kind
    )


def encode_retry_tasks(message: RetryTasks) -> bytes:
    kind = _optional_type(message.task_type)
    flags = RETRY_EVERY_FAILED if message.every_failed else 0
    pack = _TASK_ID.pack
    return b"".join(
        [
            _RETRY_HEAD.pack(KIND_RETRY_TASKS, message.request, flags, len(kind)),
            kind,
            _U32.pack(len(message.task_ids)),
            *[pack(task_id) for task_id in message.task_ids],
        ]
    )


def encode_purge_tasks(message: PurgeTasks) -> bytes:
    kind = check_task_type(message.task_type).encode("utf-8")
    return _PURGE_HEAD.pack(KIND_PURGE_TASKS, message.request, len(kind)) + kind


def encode_answer(message: Answer) -> bytes:
    text = message.json.encode("utf-8")
    return _ANSWER_HEAD.pack(KIND_ANSWER, message.request, len(text)) + text


_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    Drain: encode_drain,
    ListTasks: encode_list_tasks,
    RetryTasks: encode_retry_tasks,
    PurgeTasks: encode_purge_tasks,
    Answer: encode_answer,
    JobSubmit: encode_job_submit,
    JobAccepted: lambda m: _JOB_ACCEPTED.pack(KIND_JOB_ACCEPTED, m.request, m.job_id, m.flags),
    JobItems: encode_job_items,
    JobEnd: lambda m: _JOB_END.pack(KIND_JOB_END, m.job_id, m.total),
    JobResults: encode_job_results,
    AssignChunks: encode_assign_chunks,
    ChunkResults: encode_chunk_results,
    Hello: encode_hello,
    Welcome: encode_welcome,
    Challenge: encode_challenge,
    Proof: encode_proof,
    Standby: encode_standby,
    Error: encode_error,
    Heartbeat: lambda message: bytes([KIND_HEARTBEAT]),
    StatusRequest: lambda message: bytes([KIND_STATUS_REQUEST]),
    StatusReport: encode_status_report,
    Query: encode_query,
    Cancel: encode_cancel,
    Submit: encode_submit,
    Accepted: encode_accepted,
    Rejected: encode_rejected,
    Results: encode_results,
    Assign: encode_assign,
    ScheduleCommand: encode_schedule_command,
    ScheduleAnswer: encode_schedule_answer,
    AssignTasks: encode_assign_tasks,
    AssignGroups: encode_assign_groups,
    Progress: encode_progress,
}


def encode(message: Message) -> bytes:
    """Turn a message into one frame body (without the length prefix)."""
    return _ENCODERS[type(message)](message)


class _Reader:
    """A cursor over one frame body that raises ProtocolError on any overrun."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        end = self.offset + layout.size
        if end > len(self.data):
            raise ProtocolError("frame ends in the middle of a field")
        values = layout.unpack_from(self.data, self.offset)
        self.offset = end
        return values

    def take(self, length: int) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise ProtocolError(
                f"a field claims {length} bytes but the frame has {len(self.data) - self.offset} left"
            )
        value = self.data[self.offset : end]
        self.offset = end
        return value

    def text(self, length: int, what: str) -> str:
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.offset} unexpected bytes after the message")


def _decode_hello(data: bytes) -> Hello:
    reader = _Reader(data, 0)
    _, magic, version, role, slots, name_length = reader.unpack(_HELLO_HEAD)
    if magic != MAGIC:
        raise ProtocolError("hello without the taskmesh magic: not a taskmesh peer")
    if version != PROTOCOL_VERSION:
        # Another version may lay out the rest differently: its version is
        # all the receiver needs, to refuse it with the right error.
        return Hello(role=role, name="", version=version)
    name = reader.text(name_length, "name")
    (count,) = reader.unpack(_U16)
    task_types = []
    for _ in range(count):
        (length,) = reader.unpack(_U8)
        task_types.append(reader.text(length, "task type"))
    nonce = reader.take(NONCE_SIZE)
    reader.finish()
    return Hello(
        role=role, name=name, slots=slots, task_types=tuple(task_types), version=version, nonce=nonce
    )


def _decode_challenge(data: bytes) -> Challenge:
    reader = _Reader(data, 1)
    (name_length,) = reader.unpack(_U16)
    name = reader.text(name_length, "name")
    nonce = reader.take(NONCE_SIZE)
    proof = reader.take(PROOF_SIZE)
    reader.finish()
    return Challenge(name=name, nonce=nonce, proof=proof)


def _decode_proof(data: bytes) -> Proof:
    reader = _Reader(data, 1)
    proof = reader.take(PROOF_SIZE)
    reader.finish()
    return Proof(proof)


def _decode_standby(data: bytes) -> Standby:
    reader = _Reader(data, 1)
    (length,) = reader.unpack(_U8)
    raw = reader.take(length)
    reader.finish()
    return Standby(check_leader_address(raw.decode("latin-1")))


def _decode_welcome(data: bytes) -> Welcome:
    reader = _Reader(data, 0)
    if len(data) >= 3 and _U16.unpack_from(data, 1)[0] != PROTOCOL_VERSION:
        # Another version's welcome: its version is what the peer needs to refuse it.
        return Welcome(name="", max_frame=0, max_payload=0, version=_U16.unpack_from(data, 1)[0])
    _, version, max_frame, max_payload, heartbeat_ms, tolerance, prefetch, name_length = reader.unpack(
        _WELCOME_HEAD
    )
    name = reader.text(name_length, "name")
    reader.finish()
    return Welcome(
        name=name,
        max_frame=max_frame,
        max_payload=max_payload,
        heartbeat_ms=heartbeat_ms,
        tolerance=tolerance,
        version=version,
        prefetch=prefetch,
    )


def _decode_error(data: bytes) -> Error:
    reader = _Reader(data, 0)
    _, code, length = reader.unpack(_ERROR_HEAD)
    message = reader.take(length).decode("utf-8", "replace")
    reader.finish()
    return Error(code=code, message=message)


# Task type names repeat endlessly; decode each distinct one once.
_type_names: dict[bytes, str] = {}


def _type_name(raw: bytes) -> str:
    name = _type_names.get(raw)
    if name is None:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("task type is not valid UTF-8") from None
        if len(_type_names) < 4096:
            _type_names[raw] = name
    return name


#: Options made only of flags, decoded to one shared object each: a million
#: queued tasks submitted alike should not hold a million equal objects.
_FLAG_ONLY = OPTION_RETRY_ON_ERROR | OPTION_NO_RESULT
_SHARED_OPTIONS = {
    flags: TaskOptions(
        retry_on_error=bool(flags & OPTION_RETRY_ON_ERROR),
        no_result=bool(flags & OPTION_NO_RESULT),
    )
    for flags in range(_FLAG_ONLY + 1)
    if not flags & ~_FLAG_ONLY
}


def _decode_options(reader: _Reader) -> TaskOptions:
    (flags,) = reader.unpack(_U8)
    shared = _SHARED_OPTIONS.get(flags)
    if shared is not None:
        return shared
    priority = reader.unpack(_I32)[0] if flags & OPTION_PRIORITY else 0
    timeout = None
    if flags & OPTION_TIMEOUT:
        (milliseconds,) = reader.unpack(_U32)
        if milliseconds == 0:
            raise ProtocolError("a task timeout of 0 ms")
        timeout = milliseconds / 1000
    max_attempts = reader.unpack(_U16)[0] if flags & OPTION_MAX_ATTEMPTS else 0
    key = reader.text(reader.unpack(_U8)[0], "key") if flags & OPTION_KEY else None
    delay = reader.unpack(_U32)[0] / 1000 if flags & OPTION_DELAY else None
    at = None
    if flags & OPTION_AT:
        if delay is not None:
            raise ProtocolError("a task with both a delay and a due time")
        (milliseconds,) = reader.unpack(_U64)
        if milliseconds > round(MAX_AT_SECONDS * 1000):
            raise ProtocolError(f"a due time of {milliseconds} ms since the epoch is past the year 9999")
        at = milliseconds / 1000
    return TaskOptions(
        priority=priority,
        timeout=timeout,
        max_attempts=max_attempts,
        key=key,
        retry_on_error=bool(flags & OPTION_RETRY_ON_ERROR),
        no_result=bool(flags & OPTION_NO_RESULT),
        delay=delay,
        at=at,
    )


def _decode_submit(data: bytes) -> Submit:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records = []
    for _ in range(count):
        request, type_length = reader.unpack(_SUBMIT_REC)
        task_type = _type_name(reader.take(type_length))
        (payload_length,) = reader.unpack(_U32)
        payload = reader.take(payload_length)
        if reader.offset < len(data) and data[reader.offset] == 0:
            reader.offset += 1
            options = DEFAULT_OPTIONS
        else:
            options = _decode_options(reader)
        records.append((request, task_type, payload, options))
    reader.finish()
    return Submit(records)


def _decode_assign(data: bytes) -> Assign:
    """The hot path of every worker: unpack in place, no cursor object."""
    if len(data) < _COUNT.size:
        raise ProtocolError("frame too short for its header")
    _, count = _COUNT.unpack_from(data, 0)
    offset = _COUNT.size
    size = len(data)
    rec_size = _ASSIGN_REC.size
    unpack = _ASSIGN_REC.unpack_from
    unpack_len = _U32.unpack_from
    records: list[AssignRecord] = []
    append = records.append
    for _ in range(count):
        if offset + rec_size > size:
            raise ProtocolError("frame ends in the middle of a record")
        number, type_length = unpack(data, offset)
        offset += rec_size
        type_end = offset + type_length
        if type_end + 4 > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_type = _type_name(data[offset:type_end])
        (payload_length,) = unpack_len(data, type_end)
        offset = type_end + 4 + payload_length
        if offset > size:
            raise ProtocolError("a payload runs past the end of the frame")
        append((number, task_type, data[type_end + 4 : offset]))
    if offset != size:
        raise ProtocolError(f"{size - offset} unexpected bytes after the records")
    return Assign(records)


def _decode_accepted(data: bytes) -> Accepted:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    if len(data) != _COUNT.size + count * _ACCEPTED_REC.size:
        raise ProtocolError("accepted frame length does not match its record count")
    unpack = _ACCEPTED_REC.unpack_from
    return Accepted([unpack(data, _COUNT.size + i * _ACCEPTED_REC.size) for i in range(count)])


def _decode_rejected(data: bytes) -> Rejected:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records = []
    for _ in range(count):
        request, length = reader.unpack(_REJECTED_REC)
        records.append((request, reader.take(length).decode("utf-8", "replace")))
    reader.finish()
    return Rejected(records)


def _decode_results(data: bytes) -> Results:
    if len(data) < _COUNT.size:
        raise ProtocolError("frame too short for its header")
    _, count = _COUNT.unpack_from(data, 0)
    offset = _COUNT.size
    size = len(data)
    unpack = _RESULT_REC.unpack_from
    rec_size = _RESULT_REC.size
    records: list[ResultRecord] = []
    append = records.append
    for _ in range(count):
        if offset + rec_size > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_id, status, length = unpack(data, offset)
        start = offset + rec_size
        offset = start + length
        if offset > size:
            raise ProtocolError("a result runs past the end of the frame")
        if status not in _STATUSES:
            raise ProtocolError(f"unknown result status {status}")
        append((task_id, status, data[start:offset]))
    if offset != size:
        raise ProtocolError(f"{size - offset} unexpected bytes after the records")
    return Results(records)


def _decode_query(data: bytes) -> Query:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    if len(data) != _COUNT.size + count * _QUERY_REC.size:
        raise ProtocolError("query frame length does not match its record count")
    unpack = _QUERY_REC.unpack_from
    records = []
    for i in range(count):
        task_id, wait = unpack(data, _COUNT.size + i * _QUERY_REC.size)
        if task_id > MAX_ID:
            raise ProtocolError(f"task id {task_id} is out of range (at most {MAX_ID})")
        records.append((task_id, bool(wait)))
    return Query(records)


def _decode_cancel(data: bytes) -> Cancel:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    if len(data) != _COUNT.size + count * _TASK_ID.size:
        raise ProtocolError("cancel frame length does not match its record count")
    unpack = _TASK_ID.unpack_from
    task_ids = [unpack(data, _COUNT.size + i * _TASK_ID.size)[0] for i in range(count)]
    if task_ids and max(task_ids) > MAX_ID:
        raise ProtocolError(f"task id {max(task_ids)} is out of range (at most {MAX_ID})")
    return Cancel(task_ids)


def _decode_empty(message: Message) -> Callable[[bytes], Message]:
    def decode_empty(data: bytes) -> Message:
        if len(data) != 1:
            raise ProtocolError(f"{type(message).__name__} carries no body")
        return message

    return decode_empty


def _decode_status_report(data: bytes) -> StatusReport:
    reader = _Reader(data, 1)
    (length,) = reader.unpack(_U32)
    report = StatusReport(reader.text(length, "status report"))
    reader.finish()
    return report


def _decode_job_submit(data: bytes) -> JobSubmit:
    reader = _Reader(data, 0)
    _, request, priority, chunk_size, size_hint, type_length = reader.unpack(_JOB_SUBMIT_HEAD)
    task_type = _type_name(reader.take(type_length))
    reader.finish()
    return JobSubmit(request, task_type, priority, chunk_size, size_hint)


def _decode_job_accepted(data: bytes) -> JobAccepted:
    reader = _Reader(data, 0)
    _, request, job_id, flags = reader.unpack(_JOB_ACCEPTED)
    reader.finish()
    return JobAccepted(request, job_id, flags)


def _payloads(reader: _Reader, count: int) -> list[bytes]:
    data = reader.data
    size = len(data)
    offset = reader.offset
    unpack = _U32.unpack_from
    payloads: list[bytes] = []
    append = payloads.append
    for _ in range(count):
        if offset + 4 > size:
            raise ProtocolError("frame ends in the middle of a payload length")
        (length,) = unpack(data, offset)
        start = offset + 4
        offset = start + length
        if offset > size:
            raise ProtocolError("a payload runs past the end of the frame")
        append(data[start:offset])
    reader.offset = offset
    return payloads


def _decode_job_items(data: bytes) -> JobItems:
    reader = _Reader(data, 0)
    _, job_id, first_index, count = reader.unpack(_JOB_ITEMS_HEAD)
    if first_index + count - 1 > MAX_ID:
        raise ProtocolError(
            f"item indexes up to {first_index + count - 1} are out of range (at most {MAX_ID})"
        )
    payloads = _payloads(reader, count)
    reader.finish()
    return JobItems(job_id, first_index, payloads)


def _decode_job_end(data: bytes) -> JobEnd:
    reader = _Reader(data, 0)
    _, job_id, total = reader.unpack(_JOB_END)
    if total > MAX_ID:
        raise ProtocolError(f"a job total of {total} items is out of range (at most {MAX_ID})")
    reader.finish()
    return JobEnd(job_id, total)


def _decode_job_results(data: bytes) -> JobResults:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records = []
    for _ in range(count):
        job_id, index, status, length = reader.unpack(_JOB_RESULT_REC)
        if status not in _STATUSES:
            raise ProtocolError(f"unknown result status {status}")
        records.append((job_id, index, status, reader.take(length)))
    reader.finish()
    return JobResults(records)


def _decode_assign_chunks(data: bytes) -> AssignChunks:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records = []
    for _ in range(count):
        (chunk_id,) = reader.unpack(_U64)
        (type_length,) = reader.unpack(_U8)
        task_type = _type_name(reader.take(type_length))
        (items,) = reader.unpack(_U32)
        records.append((chunk_id, task_type, _payloads(reader, items)))
    reader.finish()
    return AssignChunks(records)


def _decode_chunk_results(data: bytes) -> ChunkResults:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records = []
    for _ in range(count):
        chunk_id, offset, items = reader.unpack(_CHUNK_PART)
        outcomes = []
        for _ in range(items):
            status, length = reader.unpack(_STATUS_LEN)
            if status not in WORKER_STATUSES:
                raise ProtocolError(f"a chunk outcome may only succeed, fail or retry, not status {status}")
            outcomes.append((status, reader.take(length)))
        records.append((chunk_id, offset, outcomes))
    reader.finish()
    return ChunkResults(records)


def _decode_assign_tasks(data: bytes) -> AssignTasks:
    """A worker's hot path, as _decode_assign: unpacked in place, no cursor object."""
    if len(data) < _COUNT.size:
        raise ProtocolError("frame too short for its header")
    _, count = _COUNT.unpack_from(data, 0)
    offset = _COUNT.size
    size = len(data)
    unpack = _ASSIGN_REC.unpack_from
    unpack_tail = _TASK_TAIL.unpack_from
    records: list[TaskRecord] = []
    append = records.append
    for _ in range(count):
        if offset + 9 > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_id, type_length = unpack(data, offset)
        type_end = offset + 9 + type_length
        if type_end + 12 > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_type = _type_name(data[offset + 9 : type_end])
        attempt, max_attempts, timeout_ms, payload_length = unpack_tail(data, type_end)
        if attempt == 0:
            raise ProtocolError("a task's attempt counts from 1, not 0")
        start = type_end + 12
        offset = start + payload_length
        if offset > size:
            raise ProtocolError("a payload runs past the end of the frame")
        append((task_id, task_type, data[start:offset], attempt, max_attempts, timeout_ms))
    if offset != size:
        raise ProtocolError(f"{size - offset} unexpected bytes after the records")
    return AssignTasks(records)


def _decode_assign_groups(data: bytes) -> AssignGroups:
    """A worker's hot path too (quick tasks travel in groups): unpacked in place."""
    if len(data) < _COUNT.size:
        raise ProtocolError("frame too short for its header")
    _, count = _COUNT.unpack_from(data, 0)
    offset = _COUNT.size
    size = len(data)
    unpack_member = _MEMBER_HEAD.unpack_from
    records: list[GroupRecord] = []
    for _ in range(count):
        if offset + 9 > size:
            raise ProtocolError("frame ends in the middle of a record")
        group_id, type_length = _ASSIGN_REC.unpack_from(data, offset)
        type_end = offset + 9 + type_length
        if type_end + 4 > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_type = _type_name(data[offset + 9 : type_end])
        (items,) = _U32.unpack_from(data, type_end)
        offset = type_end + 4
        members: list[tuple[int, int, int, bytes]] = []
        append = members.append
        for _ in range(items):
            if offset + 16 > size:
                raise ProtocolError("frame ends in the middle of a group's task")
            task_id, attempt, max_attempts, length = unpack_member(data, offset)
            if attempt == 0:
                raise ProtocolError("a task's attempt counts from 1, not 0")
            start = offset + 16
            offset = start + length
            if offset > size:
                raise ProtocolError("a payload runs past the end of the frame")
            append((task_id, attempt, max_attempts, data[start:offset]))
        records.append((group_id, task_type, members))
    if offset != size:
        raise ProtocolError(f"{size - offset} unexpected bytes after the records")
    return AssignGroups(records)


def _decode_progress(data: bytes) -> Progress:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    records: list[ProgressRecord] = []
    for _ in range(count):
        task_id, done, total, length = reader.unpack(_PROGRESS_REC)
        for value in (done, total):
            if not (math.isfinite(value) and value >= 0):
                raise ProtocolError(f"progress must be finite and 0 or more, not {value!r}")
        if length > MAX_PROGRESS_NOTE:
            raise ProtocolError(f"a progress note of {length} bytes; the most is {MAX_PROGRESS_NOTE}")
        records.append((task_id, done, total, reader.text(length, "progress note")))
    reader.finish()
    return Progress(records)


def _decode_schedule_command(data: bytes) -> ScheduleCommand:
    reader = _Reader(data, 0)
    _, op, name_length = reader.unpack(_SCHEDULE_HEAD)
    if op not in SCHEDULE_OPS:
        raise ProtocolError(f"unknown schedule operation {op}")
    if name_length > MAX_SCHEDULE_NAME:
        raise ProtocolError(f"a schedule name of {name_length} bytes (at most {MAX_SCHEDULE_NAME})")
    name = reader.text(name_length, "schedule name")
    if (op == SCHEDULE_LIST) != (not name):
        raise ProtocolError("list takes no schedule name; every other operation needs one")
    if op != SCHEDULE_ADD:
        reader.finish()
        return ScheduleCommand(op, name)
    (cron_length,) = reader.unpack(_U16)
    if cron_length > MAX_CRON_LENGTH:
        raise ProtocolError(f"a cron expression of {cron_length} bytes (at most {MAX_CRON_LENGTH})")
    cron = reader.text(cron_length, "cron expression") or None
    (every_ms,) = reader.unpack(_U64)
    if every_ms > MAX_EVERY_SECONDS * 1000:
        raise ProtocolError(f"an interval of {every_ms} ms (at most {MAX_EVERY_SECONDS:g} s)")
    every = every_ms / 1000 if every_ms else None
    if (cron is None) == (every is None):
        raise ProtocolError("a schedule needs a cron expression or an interval, exactly one")
    (tz_length,) = reader.unpack(_U8)
    if not 0 < tz_length <= MAX_TZ_LENGTH:
        raise ProtocolError(f"a time zone name of {tz_length} bytes (1 to {MAX_TZ_LENGTH})")
    tz = reader.text(tz_length, "time zone")
    (type_length,) = reader.unpack(_U8)
    if not type_length:
        raise ProtocolError("a schedule's task type is empty")
    task_type = _type_name(reader.take(type_length))
    (payload_length,) = reader.unpack(_U32)
    payload = reader.take(payload_length)
    if reader.offset < len(data) and data[reader.offset] & ~_SCHEDULE_OPTION_BITS:
        raise ProtocolError("a schedule's task takes no key, delay, due time or no_result")
    options = _decode_options(reader)
    (flags,) = reader.unpack(_U8)
    if flags & ~SCHEDULE_SKIP_MISSED:
        raise ProtocolError(f"unknown schedule flag bits 0x{flags:02x}")
    reader.finish()
    return ScheduleCommand(
        op, name, cron, every, tz, task_type, payload, options, not flags & SCHEDULE_SKIP_MISSED
    )


def _decode_schedule_answer(data: bytes) -> ScheduleAnswer:
    reader = _Reader(data, 0)
    _, ok, length = reader.unpack(_SCHEDULE_ANSWER_HEAD)
    if ok > 1:
        raise ProtocolError(f"a schedule answer's ok is {ok} (0 or 1)")
    answer = ScheduleAnswer(bool(ok), reader.text(length, "schedule answer"))
    reader.finish()
    return answer


def _ids(reader: _Reader, count: int, what: str, most: int) -> list[int]:
    if count > most:
        raise ProtocolError(f"{what} names {count} ids; the most is {most}")
    data = reader.take(count * _TASK_ID.size)
    ids = [value for (value,) in _TASK_ID.iter_unpack(data)]
    if ids and max(ids) > MAX_ID:
        raise ProtocolError(f"task id {max(ids)} is out of range (at most {MAX_ID})")
    return ids


def _decode_drain(data: bytes) -> Drain:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    # A worker holds at most its slots plus prefetch (both bounded): far fewer than this.
    ids = _ids(reader, count, "a drain", MAX_RETRY_IDS)
    reader.finish()
    return Drain(ids)


def _decode_optional_type(reader: _Reader, length: int) -> str | None:
    return _type_name(reader.take(length)) if length else None


def _decode_list_tasks(data: bytes) -> ListTasks:
    reader = _Reader(data, 0)
    _, request, state, limit, before_id, type_length = reader.unpack(_LIST_HEAD)
    if state >= len(LIST_STATES):
        raise ProtocolError(f"unknown task list state {state}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ProtocolError(f"a task list of {limit} rows; 1 to {MAX_LIST_LIMIT} may be asked for")
    if before_id > MAX_ID:
        raise ProtocolError(f"task id {before_id} is out of range (at most {MAX_ID})")
    task_type = _decode_optional_type(reader, type_length)
    reader.finish()
    return ListTasks(request, state, limit, before_id, task_type)


def _decode_retry_tasks(data: bytes) -> RetryTasks:
    reader = _Reader(data, 0)
    _, request, flags, type_length = reader.unpack(_RETRY_HEAD)
    if flags & ~RETRY_EVERY_FAILED:
        raise ProtocolError(f"unknown retry flags 0x{flags:02x}")
    task_type = _decode_optional_type(reader, type_length)
    (count,) = reader.unpack(_U32)
    ids = _ids(reader, count, "a retry", MAX_RETRY_IDS)
    reader.finish()
    return RetryTasks(request, ids, bool(flags & RETRY_EVERY_FAILED), task_type)


def _decode_purge_tasks(data: bytes) -> PurgeTasks:
    reader = _Reader(data, 0)
    _, request, type_length = reader.unpack(_PURGE_HEAD)
    if not type_length:
        raise ProtocolError("a purge needs a task type")
    task_type = _type_name(reader.take(type_length))
    reader.finish()
    return PurgeTasks(request, task_type)


def _decode_answer(data: bytes) -> Answer:
    reader = _Reader(data, 0)
    _, request, length = reader.unpack(_ANSWER_HEAD)
    if length > MAX_ANSWER:
        raise ProtocolError(f"an answer of {length} bytes; the most is {MAX_ANSWER}")
    answer = Answer(request, reader.text(length, "answer"))
    reader.finish()
    return answer


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    KIND_DRAIN: _decode_drain,
    KIND_LIST_TASKS: _decode_list_tasks,
    KIND_RETRY_TASKS: _decode_retry_tasks,
    KIND_PURGE_TASKS: _decode_purge_tasks,
    KIND_ANSWER: _decode_answer,
    KIND_JOB_SUBMIT: _decode_job_submit,
    KIND_JOB_ACCEPTED: _decode_job_accepted,
    KIND_JOB_ITEMS: _decode_job_items,
    KIND_JOB_END: _decode_job_end,
    KIND_JOB_RESULTS: _decode_job_results,
    KIND_ASSIGN_CHUNKS: _decode_assign_chunks,
    KIND_CHUNK_RESULTS: _decode_chunk_results,
    KIND_HELLO: _decode_hello,
    KIND_WELCOME: _decode_welcome,
    KIND_CHALLENGE: _decode_challenge,
    KIND_PROOF: _decode_proof,
    KIND_STANDBY: _decode_standby,
    KIND_ERROR: _decode_error,
    KIND_HEARTBEAT: _decode_empty(Heartbeat()),
    KIND_STATUS_REQUEST: _decode_empty(StatusRequest()),
    KIND_STATUS_REPORT: _decode_status_report,
    KIND_QUERY: _decode_query,
    KIND_CANCEL: _decode_cancel,
    KIND_SUBMIT: _decode_submit,
    KIND_ACCEPTED: _decode_accepted,
    KIND_REJECTED: _decode_rejected,
    KIND_RESULTS: _decode_results,
    KIND_ASSIGN: _decode_assign,
    KIND_ASSIGN_TASKS: _decode_assign_tasks,
    KIND_ASSIGN_GROUPS: _decode_assign_groups,
    KIND_PROGRESS: _decode_progress,
    KIND_SCHEDULE: _decode_schedule_command,
    KIND_SCHEDULE_ANSWER: _decode_schedule_answer,
}


def decode(data: bytes) -> Message:
    """Turn one frame body into a message, or raise ProtocolError."""
    if not data:
        raise ProtocolError("empty frame")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise ProtocolError(f"unknown message kind 0x{data[0]:02x}")
    return decoder(data)
