"""
Task functions for the integration tests: workers load them with
``--tasks sample_tasks`` (this folder on their PYTHONPATH), and the tests
import the same module to call them.

Tasks that must be seen running wait for a file to appear (a "gate" the
test opens), never for time to pass, and every wait is bounded.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import taskmesh

#: The longest a task waits for its gate: a bound, not a pause.
GATE_TIMEOUT = 60.0


@taskmesh.task
def add(x: int, y: int) -> int:
    """A plain function: runs in the worker's thread pool."""
    return x + y


@taskmesh.task(blocking=False)
def inline_add(x: int, y: int) -> int:
    return x + y


@taskmesh.task
async def async_add(x: int, y: int, *, delay: float = 0.0) -> int:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, delay, lambda: None)
    return x + y


@taskmesh.task(cpu_bound=True)
def cpu_add(x: int, y: int) -> int:
    return x + y


@taskmesh.task(blocking=False)
def where_inline() -> dict[str, object]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@taskmesh.task
def where_blocking() -> dict[str, object]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@taskmesh.task(cpu_bound=True)
def where_cpu() -> dict[str, object]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@taskmesh.task
def context() -> dict[str, object]:
    current = taskmesh.current_task()
    assert current is not None
    return {
        "id": current.id,
        "type": current.type,
        "attempt": current.attempt,
        "max_attempts": current.max_attempts,
        "time_left": current.time_left(),
    }


class PaymentDeclined(Exception):
    """A user's own exception type: it travels by name, module included."""


def charge(amount: int) -> None:
    raise PaymentDeclined(f"card declined for {amount}")


@taskmesh.task
def pay(amount: int) -> None:
    charge(amount)


@taskmesh.task(blocking=False)
def flaky(succeed_on: int) -> int:
    """Asks for a retry until its attempt number reaches ``succeed_on``."""
    current = taskmesh.current_task()
    assert current is not None
    if current.attempt < succeed_on:
        raise taskmesh.Retry(delay=0.1, reason=f"attempt {current.attempt} is too early")
    return current.attempt


def wait_for_gate(gate: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody opened {gate}")
        time.sleep(0.02)


@taskmesh.task
def gated(gate: str, total: int) -> str:
    """Reports progress, then waits for its gate (a file) to open."""
    taskmesh.report_progress(1, total, "waiting for the gate")
    wait_for_gate(gate)
    taskmesh.report_progress(total, total, "through")
    return "through"


@taskmesh.task(cpu_bound=True)
def gated_cpu(gate: str, total: int) -> str:
    """The same, in the process pool: progress travels back from another process."""
    taskmesh.report_progress(2, total, "in a process")
    wait_for_gate(gate)
    return "through"


@taskmesh.task
async def gated_async(gate: str) -> str:
    taskmesh.report_progress(7, None, "async")
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(gate).exists() and time.monotonic() < deadline:
        await _later(0.02)
    return "through"


async def _later(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


# -- handlers that misbehave (issue 10) -----------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@taskmesh.task(blocking=False)
def exits_inline() -> None:
    raise SystemExit(3)


@taskmesh.task(blocking=False)
def interrupts_inline() -> None:
    raise KeyboardInterrupt


@taskmesh.task(blocking=False)
def surrogate_inline() -> None:
    raise ValueError("lone \udc80 surrogate")


@taskmesh.task
def unprintable_blocking() -> None:
    raise Unprintable()


@taskmesh.task
def exits_blocking() -> None:
    raise SystemExit("from a thread")


@taskmesh.task(cpu_bound=True)
def exits_in_process() -> None:
    raise SystemExit("from a process")
