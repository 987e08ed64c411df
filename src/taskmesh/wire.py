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

import struct
from dataclasses import dataclass
from typing import Union

PROTOCOL_VERSION = 1
MAGIC = b"TMSH"

#: Frames larger than this are refused (the receiver answers with an error
#: and drops the connection).  The sender learns the receiver's limit from
#: the handshake and must split or refuse before sending.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: A single task payload or result larger than this is refused with a clear
#: error; it must also fit in a frame with room to spare.
DEFAULT_MAX_PAYLOAD = 1024 * 1024

# Roles a peer announces in its hello.
ROLE_CLIENT = 1
ROLE_WORKER = 2
ROLE_NAMES = {ROLE_CLIENT: "client", ROLE_WORKER: "worker"}

# Outcome of a task.
STATUS_OK = 0
STATUS_FAILED = 1

# Bits of the flags byte in an accepted record.
ACCEPTED_NO_WORKER = 0x01  # no connected worker runs this task type yet

# Error codes carried by ``Error``; the sender closes the connection after it.
ERROR_MALFORMED = 1
ERROR_VERSION = 2
ERROR_FRAME_TOO_LARGE = 3
ERROR_UNEXPECTED = 4
ERROR_INTERNAL = 5

# Message kinds: the first byte of every frame body.
KIND_HELLO = 0x01
KIND_WELCOME = 0x02
KIND_ERROR = 0x03
KIND_SUBMIT = 0x10
KIND_ACCEPTED = 0x11
KIND_REJECTED = 0x12
KIND_RESULTS = 0x13
KIND_ASSIGN = 0x20

# Record and header layouts (all big-endian, no padding).
_KIND = struct.Struct(">B")
_COUNT = struct.Struct(">BI")  # kind, record count
_HELLO_HEAD = struct.Struct(">B4sHBIH")  # kind, magic, version, role, slots, name length
_WELCOME_HEAD = struct.Struct(">BHIIH")  # kind, version, max frame, max payload, name length
_ERROR_HEAD = struct.Struct(">BHH")  # kind, code, message length
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_SUBMIT_REC = struct.Struct(">IB")  # request id, type length; then type, then u32 payload length
_ASSIGN_REC = struct.Struct(">QB")  # task id, type length; then type, then u32 payload length
_U32 = struct.Struct(">I")
_ACCEPTED_REC = struct.Struct(">IQB")  # request id, task id, flags
_REJECTED_REC = struct.Struct(">IH")  # request id, reason length
_RESULT_REC = struct.Struct(">QBI")  # task id, status, value length

#: Fixed bytes of the largest record layout: with the record's variable bytes
#: (payload and type name), what a sender adds up to split long batches below
#: the peer's frame limit.
RECORD_OVERHEAD = 13
#: The most one record can need beyond its payload (a 255-byte type name).
MAX_RECORD_OVERHEAD = RECORD_OVERHEAD + 255
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


@dataclass(frozen=True, slots=True)
class Welcome:
    """The scheduler's answer to a hello: the limits the peer must respect."""

    name: str
    max_frame: int
    max_payload: int
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Error:
    """A fatal complaint; whoever sends it closes the connection next."""

    code: int
    message: str


# Records are plain tuples: a frame of ten thousand tasks should not cost ten
# thousand extra objects.

#: (request id, task type, payload): a client's request id is its own
#: correlation number, echoed back in Accepted or Rejected.
SubmitRecord = tuple[int, str, bytes]
#: (request id, task id, flags)
AcceptedRecord = tuple[int, int, int]
#: (request id, reason)
RejectedRecord = tuple[int, str]
#: (task id, status, value): value is the result, or a UTF-8 reason on failure.
ResultRecord = tuple[int, int, bytes]
#: (task id, task type, payload)
AssignRecord = tuple[int, str, bytes]


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


Message = Union[Hello, Welcome, Error, Submit, Accepted, Rejected, Results, Assign]


def _short(text: str, what: str, limit: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ValueError(f"{what} is {len(data)} bytes long; the most is {limit}")
    return data


def encode_hello(message: Hello) -> bytes:
    name = _short(message.name, "name", 0xFFFF)
    parts = [
        _HELLO_HEAD.pack(
            KIND_HELLO, MAGIC, message.version, message.role, message.slots, len(name)
        ),
        name,
        _U16.pack(len(message.task_types)),
    ]
    for task_type in message.task_types:
        encoded = _short(task_type, "task type", 0xFF)
        parts.append(_U8.pack(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def encode_welcome(message: Welcome) -> bytes:
    name = _short(message.name, "name", 0xFFFF)
    return (
        _WELCOME_HEAD.pack(
            KIND_WELCOME, message.version, message.max_frame, message.max_payload, len(name)
        )
        + name
    )


def encode_error(message: Error) -> bytes:
    text = message.message.encode("utf-8")[:0xFFFF]
    return _ERROR_HEAD.pack(KIND_ERROR, message.code, len(text)) + text


def _encode_typed(kind: int, rec: struct.Struct, records: list[tuple[int, str, bytes]]) -> bytes:
    """Submit and Assign share a shape: (number, task type, payload)."""
    parts = [_COUNT.pack(kind, len(records))]
    append = parts.append
    pack = rec.pack
    pack_len = _U32.pack
    for number, task_type, payload in records:
        encoded_type = task_type.encode("utf-8")
        append(pack(number, len(encoded_type)))
        append(encoded_type)
        append(pack_len(len(payload)))
        append(payload)
    return b"".join(parts)


def encode_submit(message: Submit) -> bytes:
    return _encode_typed(KIND_SUBMIT, _SUBMIT_REC, message.records)


def encode_assign(message: Assign) -> bytes:
    return _encode_typed(KIND_ASSIGN, _ASSIGN_REC, message.records)


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


_ENCODERS = {
    Hello: encode_hello,
    Welcome: encode_welcome,
    Error: encode_error,
    Submit: encode_submit,
    Accepted: encode_accepted,
    Rejected: encode_rejected,
    Results: encode_results,
    Assign: encode_assign,
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

    def unpack(self, layout: struct.Struct) -> tuple:
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
    name = reader.text(name_length, "name")
    (count,) = reader.unpack(_U16)
    task_types = []
    for _ in range(count):
        (length,) = reader.unpack(_U8)
        task_types.append(reader.text(length, "task type"))
    reader.finish()
    return Hello(role=role, name=name, slots=slots, task_types=tuple(task_types), version=version)


def _decode_welcome(data: bytes) -> Welcome:
    reader = _Reader(data, 0)
    _, version, max_frame, max_payload, name_length = reader.unpack(_WELCOME_HEAD)
    name = reader.text(name_length, "name")
    reader.finish()
    return Welcome(name=name, max_frame=max_frame, max_payload=max_payload, version=version)


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


def _decode_typed(data: bytes, rec: struct.Struct) -> list[tuple[int, str, bytes]]:
    """Decode the records of a Submit or Assign frame."""
    if len(data) < _COUNT.size:
        raise ProtocolError("frame too short for its header")
    _, count = _COUNT.unpack_from(data, 0)
    offset = _COUNT.size
    size = len(data)
    rec_size = rec.size
    unpack = rec.unpack_from
    unpack_len = _U32.unpack_from
    records = []
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
    return records


def _decode_accepted(data: bytes) -> Accepted:
    reader = _Reader(data, 0)
    _, count = reader.unpack(_COUNT)
    if len(data) != _COUNT.size + count * _ACCEPTED_REC.size:
        raise ProtocolError("accepted frame length does not match its record count")
    unpack = _ACCEPTED_REC.unpack_from
    return Accepted(
        [unpack(data, _COUNT.size + i * _ACCEPTED_REC.size) for i in range(count)]
    )


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
    records = []
    append = records.append
    for _ in range(count):
        if offset + rec_size > size:
            raise ProtocolError("frame ends in the middle of a record")
        task_id, status, length = unpack(data, offset)
        start = offset + rec_size
        offset = start + length
        if offset > size:
            raise ProtocolError("a result runs past the end of the frame")
        if status not in (STATUS_OK, STATUS_FAILED):
            raise ProtocolError(f"unknown result status {status}")
        append((task_id, status, data[start:offset]))
    if offset != size:
        raise ProtocolError(f"{size - offset} unexpected bytes after the records")
    return Results(records)


_DECODERS = {
    KIND_HELLO: _decode_hello,
    KIND_WELCOME: _decode_welcome,
    KIND_ERROR: _decode_error,
    KIND_SUBMIT: lambda data: Submit(_decode_typed(data, _SUBMIT_REC)),
    KIND_ACCEPTED: _decode_accepted,
    KIND_REJECTED: _decode_rejected,
    KIND_RESULTS: _decode_results,
    KIND_ASSIGN: lambda data: Assign(_decode_typed(data, _ASSIGN_REC)),
}


def decode(data: bytes) -> Message:
    """Turn one frame body into a message, or raise ProtocolError."""
    if not data:
        raise ProtocolError("empty frame")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise ProtocolError(f"unknown message kind 0x{data[0]:02x}")
    return decoder(data)
