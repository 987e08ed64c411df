"""
The bytes of a task function's call, result and failure: JSON, never pickle.

Frames are ``wire.py``'s business; what travels *inside* a task's payload and
result is this module's.  Bytes handlers choose their own payloads; a task
function (``@taskmesh.task``) always uses these encodings, so that any
client, in any language, can call one:

- **arguments**: a JSON array of positional arguments (``[2, 3]``), or an
  object ``{"args": [...], "kwargs": {...}}`` when there are keyword
  arguments (either key may be left out);
- **result**: the function's return value as one JSON value;
- **failure**: a JSON object whose first key is ``"type"``
  (``{"type": "ZeroDivisionError", "message": "division by zero",
  "traceback": "Traceback (most recent call last): ...", "note": "..."}``).
  A failure value that starts with the bytes ``{"type":`` is structured;
  anything else is a plain reason, UTF-8 text (what bytes handlers and the
  scheduler itself report).  Both are bounded in size.

The codec is the standard library's ``json``, chosen by measurement
(bench/pytasks.py, 10,000 tasks ``noop(i, 2)`` beside sha256, 2 workers):
msgspec does the four codec calls of such a task in 0.14 µs against 1.2 µs
for json as used here (its C encoder and scanner kept, not rebuilt per
call), but end to end the two were within each other's noise (noop at
85-99 % of sha256's throughput with msgspec, 90-107 % with json, several
runs each): a task's trip through three processes costs tens of
microseconds, and the codec's microsecond is lost in it.  So no dependency
is taken for it.

A handler may raise anything, and its exception's text may be anything: a
lone surrogate that UTF-8 cannot encode, a ``__str__`` that raises, a message
of a hundred megabytes.  None of that may stop a worker from reporting the
task's failure, so everything that turns an exception into bytes lives here
and never raises.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import os
import traceback as _traceback
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import twisted
from taskmesh.errors import TaskCancelled, TaskFailed

#: A failure reason longer than this is cut: it is for a person to read, and
#: must never make a frame too large.
MAX_REASON = 4096
#: A traceback longer than this keeps its first and last parts: the frames
#: nearest the error, and the exception itself, are at the end.
MAX_TRACEBACK = 16384


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) written as a backslash escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters by dropping its middle (tracebacks end with the news)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 64
    return f"{text[:head]}\n... ({len(text) - head - tail:,} characters cut) ...\n{text[-tail:]}"


def type_name(value: object) -> str:
    """The name of ``value``'s class (an exception's, say), however strange the class."""
    try:
        return safe_text(str(type(value).__name__))
    except BaseException:
        return "exception"


def error_text(error: BaseException) -> str:
    """``str(error)``, or a placeholder when that raises (or returns something else than text)."""
    try:
        text = str(error)
    except BaseException as e:
        return f"<str() of the exception raised {type_name(e)}>"
    return safe_text(text)


def describe_error(error: BaseException | None) -> str:
    """
    The one-line reason a submitter reads: ``Type: message``, valid UTF-8,
    at most MAX_REASON characters; never raises.
    """
    if error is None:
        return "failed without an exception"
    name = type_name(error)
    text = error_text(error)
    return bounded(f"{name}: {text}" if text else name, MAX_REASON)


def format_traceback(error: BaseException) -> str:
    """The exception's traceback as Python prints it (causes included), bounded; never raises."""
    try:
        text = "".join(_traceback.format_exception(error))
    except BaseException:
        return describe_error(error)
    return bounded_middle(safe_text(text), MAX_TRACEBACK)


# -- frames of taskmesh's own, left out of a task's traceback -----------------

#: Where the worker's machinery lives: frames there run a task rather than being it.
_MACHINERY = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(twisted.__file__)) + os.sep,
)


def _is_machinery(filename: str) -> bool:
    return filename.startswith(_MACHINERY)


def format_task_traceback(error: BaseException) -> str:
    """
    The traceback of a task function's exception, from the task's own first
    frame on: the worker's machinery above it (taskmesh's and Twisted's
    frames) says nothing about the task.  Bounded; never raises.
    """
    try:
        trace = _traceback.TracebackException.from_exception(error)
        frames = list(trace.stack)
        first = 0
        while first < len(frames) and _is_machinery(frames[first].filename or ""):
            first += 1
        if 0 < first < len(frames):
            trace.stack = _traceback.StackSummary.from_list(frames[first:])
        text = "".join(trace.format())
    except BaseException:
        return format_traceback(error)
    return bounded_middle(safe_text(text), MAX_TRACEBACK)


# -- arguments and results ----------------------------------------------------


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_json_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_json_decoder = json.JSONDecoder()
# The C encoder and scanner behind json, made once and kept: json.dumps and
# JSONEncoder.encode build a new C encoder on every call, and JSONDecoder
# runs two regular expressions around the scan, which together cost two to
# three times the encoding of a task's small arguments.  Same output, same
# errors (the decoder falls back to json's own for anything unusual).
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_scanner = getattr(json.scanner, "c_make_scanner", None)
if _c_encoder is not None:
    _iterencode = _c_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def _encode(value: object) -> str:
        return "".join(_iterencode(value, 0))

else:  # pragma: no cover - a Python without json's C speedups

    def _encode(value: object) -> str:
        return _json_encoder.encode(value)


if _c_scanner is not None:
    _scan_once = _c_scanner(_json_decoder)

    def _decode(text: str) -> Any:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            return _json_decoder.decode(text)  # raises the error that says where
        if end != len(text):
            return _json_decoder.decode(text)  # whitespace around the value, or extra data
        return value

else:  # pragma: no cover

    def _decode(text: str) -> Any:
        return _json_decoder.decode(text)


#: What a JSON encoder or decoder raises for a value it cannot take: a type
#: it does not know, NaN, a nesting deeper than the stack, bytes that are
#: not UTF-8.
_CODEC_ERRORS = (TypeError, ValueError, RecursionError, OverflowError)


class ArgumentsError(ValueError):
    """A task function's payload is not its arguments as JSON."""


def encode_arguments(args: Sequence[object], kwargs: Mapping[str, object]) -> bytes:
    """A call's arguments as a task function's payload; TypeError if they are not JSON."""
    try:
        if kwargs:
            return _encode({"args": args, "kwargs": kwargs}).encode("ascii")
        return _encode(args).encode("ascii")
    except _CODEC_ERRORS as e:
        raise TypeError(f"the arguments are not JSON: {e}") from None


def decode_arguments(payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    """A task function's payload as (args, kwargs); ArgumentsError if it is not one."""
    try:
        value = _decode(payload.decode("utf-8"))
    except _CODEC_ERRORS as e:
        raise ArgumentsError(f"the arguments are not JSON: {e}") from None
    if type(value) is list:
        return value, {}
    if type(value) is dict and value.keys() <= {"args", "kwargs"}:
        args = value.get("args", [])
        kwargs = value.get("kwargs", {})
        if type(args) is list and type(kwargs) is dict:
            return args, kwargs
    raise ArgumentsError(
        'the arguments must be a JSON array (positional arguments) or an object {"args": [...], '
        f'"kwargs": {{...}}}}, not {bounded(payload.decode("utf-8", "replace"), 80)}'
    )


def check_arguments(payload: bytes) -> None:
    """ArgumentsError unless ``payload`` is a task function's arguments (for clients that pass JSON on)."""
    decode_arguments(payload)


def encode_result(value: object) -> bytes:
    """A task function's return value as its result; TypeError if it is not JSON."""
    try:
        return _encode(value).encode("ascii")
    except _CODEC_ERRORS as e:
        raise TypeError(f"the task returned {type_name(value)}, which is not JSON: {e}") from None


def decode_result(data: bytes) -> Any:
    """A task function's result; ValueError if it is not JSON."""
    try:
        return _decode(data.decode("utf-8"))
    except _CODEC_ERRORS as e:
        raise ValueError(f"the result is not JSON: {e}") from None


# -- failures -------------------------------------------------------------------

#: The first bytes of every structured failure value.
FAILURE_PREFIX = b'{"type":'

_encode_failure = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class RemoteFailure(NamedTuple):
    """A structured failure, decoded: what a task function raised, on the worker."""

    type: str
    message: str
    traceback: str | None = None
    #: What the scheduler added (attempts spent, a map that does not retry).
    note: str | None = None

    @property
    def summary(self) -> str:
        """One line: ``Type: message (note)``."""
        line = f"{self.type}: {self.message}" if self.message else self.type
        return f"{line} ({self.note})" if self.note else line


def qualified_type(error: BaseException) -> str:
    """``module.Class`` as Python prints it (builtins without their module)."""
    try:
        kind = type(error)
        module = str(kind.__module__)
        name = str(kind.__qualname__)
        return safe_text(name if module == "builtins" else f"{module}.{name}")
    except BaseException:
        return type_name(error)


def encode_failure(error: BaseException, limit: int, traceback: str | None = None) -> bytes:
    """
    A task function's exception as a structured failure of at most ``limit``
    bytes: the traceback is shortened (then dropped, then the message cut)
    until it fits.  ``traceback`` defaults to the exception's own; never raises.
    """
    trace = format_task_traceback(error) if traceback is None else traceback
    fields = {"type": qualified_type(error), "message": bounded(error_text(error), MAX_REASON)}
    return _fit(fields, trace, limit)


def _fit(fields: dict[str, str], trace: str | None, limit: int) -> bytes:
    while True:
        if trace is not None:
            fields["traceback"] = trace
        value = _encode_failure(fields).encode("utf-8")
        if len(value) <= limit:
            return value
        if trace is not None and len(trace) > 256:
            trace = bounded_middle(trace, len(trace) // 2)
        elif trace is not None:
            trace = None
            fields.pop("traceback", None)
        elif len(fields["message"]) > 16:
            fields["message"] = bounded(fields["message"], len(fields["message"]) // 2)
        else:
            cut = f"{fields['type']}: {fields['message']}".encode()[:limit]
            return cut.decode("utf-8", "ignore").encode("utf-8")


def parse_failure(value: bytes) -> RemoteFailure | None:
    """A structured failure value decoded, or None for a plain reason (or anything malformed)."""
    if not value.startswith(FAILURE_PREFIX):
        return None
    try:
        fields = _decode(value.decode("utf-8"))
    except _CODEC_ERRORS:
        return None
    if type(fields) is not dict:
        return None

    def text(key: str) -> str | None:
        found = fields.get(key)
        return found if isinstance(found, str) and found else None

    kind = text("type")
    if kind is None:
        return None
    return RemoteFailure(kind, text("message") or "", text("traceback"), text("note"))


def failure_summary(value: bytes) -> str:
    """One line for logs and people: a structured failure's summary, or the plain reason."""
    failure = parse_failure(value)
    if failure is not None:
        return failure.summary
    return value.decode("utf-8", "replace")


def add_note(value: bytes, note: str) -> bytes:
    """
    A failure value with the scheduler's note added: a plain reason gets
    `` (note)`` at its end, a structured failure a ``note`` field.
    """
    failure = parse_failure(value)
    if failure is None:
        return f"{value.decode('utf-8', 'replace')} ({note})".encode()
    fields = {"type": failure.type, "message": failure.message}
    if failure.traceback is not None:
        fields["traceback"] = failure.traceback
    fields["note"] = f"{failure.note}; {note}" if failure.note else note
    return _encode_failure(fields).encode("utf-8")


def task_failed(value: bytes, cancelled: bool = False) -> TaskFailed:
    """
    The exception a client raises for a failure value: a TaskFailed (or
    TaskCancelled) whose message is the one-line summary, with the remote
    exception's type, message and traceback when the failure is structured.
    """
    kind = TaskCancelled if cancelled else TaskFailed
    failure = parse_failure(value)
    if failure is None:
        return kind(value.decode("utf-8", "replace"))
    return kind(
        failure.summary,
        type=failure.type,
        message=failure.message,
        traceback=failure.traceback,
        note=failure.note,
    )
