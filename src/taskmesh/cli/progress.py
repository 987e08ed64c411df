"""
A one-line progress bar for long maps, drawn on a terminal's stderr.

It redraws at most ten times a second (drawing is not free at a hundred
thousand tasks a second) and only when stderr is a terminal: piped or
redirected, a map is quiet.

Two things keep it from spoiling the terminal:

- it always fits on one line: the terminal's width is read at every redraw
  (a window may be resized during a map), and the text drops its least
  useful parts, then is cut, to stay one column short of the width (writing
  the last column makes many terminals wrap);
- when results go to the same terminal (stdout is a terminal too), the bar
  is erased before they are written and drawn again after, so a result line
  never starts in the middle of the bar (``around_output``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds between two redraws, at the least.
REDRAW_INTERVAL = 0.1
BAR_WIDTH = 24
#: Columns assumed when the terminal will not say.
DEFAULT_COLUMNS = 80
#: Return to the line's start and erase it.
ERASE_LINE = "\r\x1b[K"


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def describe(done: int, failed: int, total: int, elapsed: float, width: int = 0) -> str:
    """
    The bar's text: done (of total), failed, rate and, with a total, the ETA,
    in at most ``width`` characters (0: no limit).  Parts are dropped from
    the least useful (the drawn bar, then the rate, the ETA) before the text
    is cut.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    parts: list[tuple[int, str]] = []  # (keep priority: higher is dropped first, text)
    if total:
        filled = min(BAR_WIDTH, int(BAR_WIDTH * done / total))
        left = (total - done) / rate if rate > 0 else 0.0
        eta = format_duration(left) if rate > 0 else "?"
        parts = [
            (3, "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"),
            (0, f"{done:,}/{total:,}"),
            (1, f"{100 * done / total:5.1f}%"),
            (0, f"{failed:,} failed"),
            (2, f"{rate:,.0f}/s"),
            (1, f"ETA {eta}"),
        ]
    else:
        parts = [
            (0, f"{done:,} done"),
            (0, f"{failed:,} failed"),
            (2, f"{rate:,.0f}/s"),
            (1, format_duration(elapsed)),
        ]
    text = "  ".join(part for _, part in parts)
    if width <= 0:
        return text
    for drop in (3, 2, 1):
        if len(text) <= width:
            break
        parts = [(level, part) for level, part in parts if level < drop]
        text = "  ".join(part for _, part in parts)
    return text[:width]


def terminal_columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return DEFAULT_COLUMNS
    return columns if columns > 0 else DEFAULT_COLUMNS


class ProgressBar:
    """Draws ``describe(...)`` on a terminal, throttled; does nothing elsewhere."""

    def __init__(
        self,
        total: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.total = total
        self._clock = clock
        self._started = clock()
        self._last_draw = 0.0
        #: Whether the bar is on the screen now (drawn and not erased).
        self.shown = False
        self._state = (0, 0)

    def update(self, done: int, failed: int) -> None:
        self._state = (done, failed)
        if not self.enabled:
            return
        now = self._clock()
        if now - self._last_draw < REDRAW_INTERVAL:
            return
        self._last_draw = now
        self._draw(now)

    def around_output(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """
        (before, after): call ``before`` just before writing results to a
        terminal this bar shares, ``after`` once they are written: the bar is
        erased, then drawn again below them.
        """
        return self.erase, self.redraw

    def erase(self) -> None:
        """Take the bar off the screen (its line is left empty, the cursor at its start)."""
        if self.shown:
            self.stream.write(ERASE_LINE)
            self.stream.flush()
            self.shown = False

    def redraw(self) -> None:
        if self.enabled:
            self._draw(self._clock())

    def finish(self, done: int, failed: int) -> None:
        """The final state, and a newline so that what follows starts clean."""
        self._state = (done, failed)
        if not self.enabled:
            return
        self._draw(self._clock())
        self.stream.write("\n")
        self.stream.flush()
        self.shown = False

    def _draw(self, now: float) -> None:
        done, failed = self._state
        width = terminal_columns(self.stream) - 1
        self.stream.write(ERASE_LINE + describe(done, failed, self.total, now - self._started, width))
        self.stream.flush()
        self.shown = True
