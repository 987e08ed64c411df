"""
A one-line progress bar for long maps, drawn on a terminal's stderr.

It redraws at most ten times a second (drawing is not free at a hundred
thousand tasks a second) and only when stderr is a terminal: piped or
redirected, a map is quiet.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between two redraws, at the least.
REDRAW_INTERVAL = 0.1
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def describe(done: int, failed: int, total: int, elapsed: float) -> str:
    """The bar's text: done (of total), failed, rate and, with a total, the ETA."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        filled = int(BAR_WIDTH * done / total) if total else 0
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        left = (total - done) / rate if rate > 0 else 0.0
        eta = format_duration(left) if rate > 0 else "?"
        return (
            f"[{bar}] {done:,}/{total:,} {100 * done / total:5.1f}%  "
            f"{failed:,} failed  {rate:,.0f}/s  ETA {eta}"
        )
    return f"{done:,} done  {failed:,} failed  {rate:,.0f}/s  {format_duration(elapsed)}"


class ProgressBar:
    """Draws ``describe(...)`` on a terminal, throttled; does nothing elsewhere."""

    def __init__(self, total: int = 0, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.total = total
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, failed: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < REDRAW_INTERVAL:
            return
        self._last_draw = now
        self._draw(done, failed, now)

    def finish(self, done: int, failed: int) -> None:
        """The final state, and a newline so that what follows starts clean."""
        if not self.enabled:
            return
        self._draw(done, failed, time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, done: int, failed: int, now: float) -> None:
        self.stream.write("\r\x1b[K" + describe(done, failed, self.total, now - self._started))
        self.stream.flush()
        self._drawn = True
