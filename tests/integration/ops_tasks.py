"""
Task functions for the operators' tests (warm shutdown, retry): workers load
them with ``--tasks ops_tasks`` (this folder on their PYTHONPATH).  A task
that must be seen running appends a line to a "mark" file when it starts and
waits for its "gate" file to appear: the test waits for the mark and opens
the gate, never for time to pass, and every wait is bounded.
"""

from __future__ import annotations

import time
from pathlib import Path

import taskmesh

#: The longest a task waits for its gate: a bound, not a pause.
GATE_TIMEOUT = 60.0


@taskmesh.task
def hold(gate: str, mark: str) -> str:
    """Marks its start (one line per run), then waits in its thread for the gate."""
    with open(mark, "a", encoding="utf-8") as file:
        file.write("started\n")
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody opened {gate}")
        time.sleep(0.02)
    return f"through {Path(mark).name}"


@taskmesh.task
def fails_unless(flag: str) -> str:
    """Fails (with a traceback on the worker) until the flag file exists."""
    if not Path(flag).exists():
        raise RuntimeError(f"no {Path(flag).name} yet")
    return "fixed"
