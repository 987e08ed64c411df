"""
How many items of a job travel together as one chunk.

A chunk is the unit a worker is leased: one assignment, one slot, one
answer.  Larger chunks cost less per item (one frame, one lease, one answer
for many tasks); smaller ones spread a job evenly and lose less work when a
worker dies.  Unless the submitter fixed a size, the size follows the job's
measured speed: each finished chunk says how long an item took, and the next
chunks hold about ``TARGET_SECONDS`` of work, within 1 to ``MAX_CHUNK`` items.
The first chunks start small (they are also the measurement), and no larger
than an even share of the job among the slots that run its type: of its
announced size, or, when the size is unknown (a map from a pipe), of the
items buffered so far (``first_size``).  So 16 slow items piped to three
slots start as 16 chunks of one, not one chunk of 16 run one after another.

The scheduler sizes groups of single tasks the same way, per task type,
starting from one: queued tasks of a type measured to be quick travel
together as one chunk, while slow ones keep going one by one.
"""

from __future__ import annotations

#: Work one chunk should hold: long enough that per-chunk costs vanish, short
#: enough that a lost chunk, or the last chunks of a job, cost little.
TARGET_SECONDS = 0.05
#: Items in one chunk, at the most.
MAX_CHUNK = 1024
#: Items in a job's first chunks, before any has been measured.
FIRST_CHUNK = 16


class ChunkSizer:
    """The chunk size of one job."""

    __slots__ = ("fixed", "size", "_hinted", "_per_item")

    def __init__(self, fixed: int = 0, size_hint: int = 0, slots: int = 1, first: int = FIRST_CHUNK) -> None:
        self.fixed = fixed
        self._per_item: float | None = None
        self._hinted = bool(size_hint)
        if fixed:
            self.size = fixed
        elif size_hint:
            self.size = max(1, min(first, size_hint // max(1, 4 * slots)))
        else:
            self.size = first

    @property
    def guessing(self) -> bool:
        """No measurement yet and no size announced: the first chunks are split by the slots."""
        return self._per_item is None and not self.fixed and not self._hinted

    def first_size(self, buffered: int, slots: int) -> int:
        """While ``guessing``: a chunk of at most an even share of ``buffered`` items among ``slots``."""
        return max(1, min(self.size, buffered // (4 * max(1, slots))))

    def observe(self, items: int, seconds: float) -> None:
        """A chunk of ``items`` took ``seconds`` from assignment to answer."""
        if self.fixed or items <= 0:
            return
        per_item = max(seconds, 1e-6) / items
        # Smooth, so one slow chunk (a worker busy with prefetched work) does
        # not halve the size at once.
        self._per_item = per_item if self._per_item is None else 0.7 * self._per_item + 0.3 * per_item
        self.size = max(1, min(MAX_CHUNK, round(TARGET_SECONDS / self._per_item)))
