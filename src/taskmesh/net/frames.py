"""
Length-prefixed frames out of a byte stream, in linear time and within budgets.

``FrameReader`` is sans-I/O: bytes in (``feed``), whole frame bodies out.  It
replaces the reassembly that ``Int32StringReceiver`` does by default, which
joins the unfinished frame with every new read: a 15 MiB frame trickled in
64 KiB reads costs quadratic time there, and one such peer can hold the
reactor.  Here the pieces of an unfinished frame are kept in a list and
joined once, when the frame is complete.

A frame that does not arrive whole in one read *reserves* its announced
length from a ``PartialFrameBudget`` shared by every connection of a
process: the bytes held in unfinished frames across all peers are bounded,
and a frame that would pass the budget is refused before it is buffered.
Frames that arrive whole (the usual case on the hot path) never touch it.
"""

from __future__ import annotations

import struct

#: The length prefix of every frame (what Int32StringReceiver speaks): one place for all.
PREFIX = struct.Struct(">I")
PREFIX_SIZE = PREFIX.size


#: Words an HTTP request starts with (someone pointed a browser or curl at a taskmesh port).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"})


def foreign_greeting(data: bytes, max_frame: int) -> str | None:
    """
    The first line of a connection's first bytes, if they cannot start a
    taskmesh frame (their length prefix is over the limit) and read as text:
    an HTTP request or answer, an SSH or SMTP banner.  Every printable ASCII
    first byte makes a length of at least 512 MiB, over any frame limit, so a
    peer speaking a text protocol is told apart from the first read on,
    instead of after a timeout.
    """
    if len(data) < PREFIX_SIZE:
        return None
    (length,) = PREFIX.unpack_from(data)
    if length <= max_frame:
        return None
    head = data[:200].split(b"\n", 1)[0].rstrip(b"\r")
    if not head or not all(32 <= byte < 127 or byte == 9 for byte in head):
        return None
    return head.decode("ascii")[:80]


def not_taskmesh_reason(peer: str, expected: str, sample: str) -> str:
    """The one line saying that ``peer`` is not a ``expected`` (a taskmesh scheduler, or peer)."""
    first = sample.split(" ", 1)[0]
    if sample.startswith("HTTP/"):
        hint = " (a web server's answer)"
    elif first in HTTP_METHODS:
        hint = " (an HTTP request: the dashboard is on the scheduler's --web address)"
    else:
        hint = ""
    return f"{peer} is not a {expected}: it sent {sample!r}{hint}"


class FrameTooLarge(Exception):
    """A peer announced a frame over the limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class BudgetExhausted(Exception):
    """The bytes held in unfinished frames, across all connections, are at their bound."""

    def __init__(self, length: int, budget: PartialFrameBudget) -> None:
        super().__init__(
            f"cannot buffer a frame of {length} bytes now: {budget.held} of the "
            f"{budget.limit} bytes allowed for unfinished frames are in use; try again later"
        )


class PartialFrameBudget:
    """Bytes that unfinished frames may hold, across every connection of a process."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a partial-frame budget needs at least one byte")
        self.limit = limit
        self.held = 0

    def reserve(self, length: int) -> bool:
        if self.held + length > self.limit:
            return False
        self.held += length
        return True

    def release(self, length: int) -> None:
        self.held -= length


class FrameReader:
    """Turns the bytes of one connection into frame bodies."""

    __slots__ = ("_budget", "_buffered", "_length", "_pieces", "_reserved", "error", "max_frame")

    def __init__(self, max_frame: int, budget: PartialFrameBudget | None = None) -> None:
        self.max_frame = max_frame
        self._budget = budget
        #: Bytes received that do not make a whole frame yet (prefix included).
        self._pieces: list[bytes] = []
        self._buffered = 0
        #: The body length of the unfinished frame, once its prefix is in.
        self._length: int | None = None
        #: What the unfinished frame holds of the budget.
        self._reserved = 0
        #: Why the stream cannot go on (a frame too large, the budget spent):
        #: set by ``feed`` after the frames before the offending one.
        self.error: FrameTooLarge | BudgetExhausted | None = None

    @property
    def partial(self) -> bool:
        """Whether a frame has started and not finished."""
        return self._buffered > 0

    @property
    def buffered(self) -> int:
        return self._buffered

    def feed(self, data: bytes) -> list[bytes]:
        """
        The frames this data completes, in order.  If the stream cannot go on
        (``FrameTooLarge``, ``BudgetExhausted``), ``error`` says why after the
        frames that came before, and nothing more is read.
        """
        if self.error is not None:
            return []
        try:
            return self._feed(data)
        except (FrameTooLarge, BudgetExhausted) as e:
            self.error = e
            self._clear()
            return []

    def _feed(self, data: bytes) -> list[bytes]:
        if self._pieces:
            self._pieces.append(data)
            self._buffered += len(data)
            if self._length is None:
                if self._buffered < PREFIX_SIZE:
                    return []
                head = b"".join(self._pieces)  # a few bytes: the prefix arrived in pieces
                self._pieces = [head]
                self._start(PREFIX.unpack_from(head)[0])
            assert self._length is not None
            if self._buffered < PREFIX_SIZE + self._length:
                return []
            data = b"".join(self._pieces)  # once per frame: linear in its size
            self._clear()
        return self._split(data)

    def _split(self, data: bytes) -> list[bytes]:
        """Whole frames straight out of ``data``; an unfinished tail is kept."""
        frames: list[bytes] = []
        size = len(data)
        offset = 0
        unpack = PREFIX.unpack_from
        limit = self.max_frame
        while offset + PREFIX_SIZE <= size:
            (length,) = unpack(data, offset)
            if length > limit:
                self.error = FrameTooLarge(length, limit)
                return frames
            end = offset + PREFIX_SIZE + length
            if end > size:
                break
            frames.append(data[offset + PREFIX_SIZE : end])
            offset = end
        if offset < size:
            tail = data[offset:]
            self._pieces = [tail]
            self._buffered = len(tail)
            if len(tail) >= PREFIX_SIZE:
                try:
                    self._start(unpack(tail)[0])
                except (FrameTooLarge, BudgetExhausted) as e:
                    self.error = e
                    self._clear()
        return frames

    def _start(self, length: int) -> None:
        """A frame's prefix is in and its body is not: check it, and reserve its bytes."""
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        self._length = length
        budget = self._budget
        if budget is not None:
            if not budget.reserve(length):
                raise BudgetExhausted(length, budget)
            self._reserved = length

    def _clear(self) -> None:
        self._pieces = []
        self._buffered = 0
        self._length = None
        if self._reserved:
            assert self._budget is not None
            self._budget.release(self._reserved)
            self._reserved = 0

    def close(self) -> None:
        """The connection is gone: give back what it held."""
        self._clear()
