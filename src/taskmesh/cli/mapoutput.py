"""
Where ``taskmesh map`` writes its answers, and in which form.

Two formats, both one line per input line, in input order:

- ``text`` (the default): the result itself, with three escapes so that a
  line is always one result: a backslash is written ``\\\\``, a newline
  ``\\n``, a carriage return ``\\r`` (a result with none of them, such as a
  digest, is written as it is).  A failed line is written ``\\!``, which no
  escaped result can be; an empty result is an empty line.
- ``jsonl``: one JSON object per line, ``{"index": 0, "ok": true, "result":
  "..."}`` or ``{"index": 0, "ok": false, "reason": "..."}``; ``index`` counts
  from 0 (line ``index + 1``); a result that is not UTF-8 comes as
  ``"result_base64"``.

An output file (``--output FILE``) is written as ``FILE.partial`` and renamed
to ``FILE`` only once every line is answered, so a file by that name is
always complete; a map that stops early leaves ``FILE.partial`` with the
answers of the lines before the point it reached, and says so.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, BinaryIO

from taskmesh.codec import failure_summary

FORMATS = ("text", "jsonl")
FAILED_LINE = b"\\!\n"


def escape(value: bytes) -> bytes:
    if b"\\" in value or b"\n" in value or b"\r" in value:
        value = value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return value


def unescape(line: bytes) -> bytes | None:
    """A text line back to its result (None: the line failed); for tests and scripts."""
    if line == FAILED_LINE.rstrip(b"\n"):
        return None
    out = bytearray()
    i = 0
    while i < len(line):
        byte = line[i : i + 1]
        if byte == b"\\" and i + 1 < len(line):
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}[line[i + 1 : i + 2]]
            i += 2
        else:
            out += byte
            i += 1
    return bytes(out)


def json_line(index: int, ok: bool, value: bytes) -> bytes:
    record: dict[str, Any] = {"index": index, "ok": ok}
    if ok:
        try:
            record["result"] = value.decode("utf-8")
        except UnicodeDecodeError:
            record["result_base64"] = base64.b64encode(value).decode("ascii")
    else:
        record["reason"] = failure_summary(value)
    return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


class OutputFile:
    """``--output FILE``: written as FILE.partial, renamed to FILE once complete."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = path + ".partial"
        self.stream: BinaryIO = open(self.partial, "wb")

    def complete(self) -> None:
        self.stream.close()
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        """Keep what was written in FILE.partial (FILE itself is left as it was)."""
        self.stream.close()


class ResultSink:
    """
    A map's answers, in input order, to the output (and failures to the
    failures file).  Lines are held for one batch of answers and written
    together (``flush``), so that a terminal's progress bar can step aside
    once per batch, not once per line.
    """

    def __init__(
        self,
        stream: BinaryIO,
        format: str = "text",
        failures: BinaryIO | None = None,
        on_closed: Any = None,
        on_error: Any = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        self.stream = stream
        self.jsonl = format == "jsonl"
        self.failures = failures
        self._on_closed = on_closed
        self._on_error = on_error
        #: Why the output could not be written (disk full...), if it could not.
        self.error: OSError | None = None
        self._before = before
        self._after = after
        self._pending: list[bytes] = []
        #: Lines handed to the output (written, or at least to its buffer).
        self.written = 0
        self._held = 0
        self.closed = False

    def write(self, index: int, ok: bool, value: bytes) -> None:
        if self.jsonl:
            line = json_line(index, ok, value)
        else:
            line = escape(value) + b"\n" if ok else FAILED_LINE
        self._pending.append(line)
        self._held += 1
        if not ok and self.failures is not None:
            if self.jsonl:
                self.failures.write(line)
            else:
                reason = escape(failure_summary(value).encode("utf-8"))
                self.failures.write(f"line {index + 1}: ".encode() + reason + b"\n")

    def flush(self) -> None:
        """Write the lines held; a closed output (EPIPE) is told to ``on_closed``, once."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        held = self._held
        self._pending.clear()
        self._held = 0
        if self.closed:
            return
        if self._before is not None:
            self._before()
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            if self._on_closed is not None:
                self._on_closed()
            return
        except OSError as e:
            self.closed = True
            self.error = e
            if self._on_error is not None:
                self._on_error(e)
            return
        self.written += held
        if self._after is not None:
            self._after()
        if self.failures is not None:
            self.failures.flush()
