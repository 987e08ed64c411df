"""
What every module of the benchmark shares: the error that ends a run, and the
progress line.  Kept apart so that the measurement modules and the process
handling can use them without importing one another.
"""

from __future__ import annotations

import sys


class BenchError(Exception):
    """The benchmark cannot go on (a process died, a wait ran out, a wrong digest)."""


def say(message: str) -> None:
    """Progress for the person waiting: stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)
