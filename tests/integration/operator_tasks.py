"""
Task types for the tests of the ``taskmesh`` command (test_cli_operators.py),
loaded by workers started with ``--handler operator_tasks:EchoLines`` and
``--tasks operator_tasks`` (this folder on their PYTHONPATH).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

import taskmesh
from taskmesh.handlers import ITaskHandler

#: The longest a barrier task waits for the others: a bound, not a pause.
BARRIER_TIMEOUT = 60.0


@implementer(ITaskHandler)
class EchoLines:
    """
    ``echo-lines``: the payload back, with each ``|`` made a newline and
    ``<empty>`` an empty result; ``fail`` fails.  Results with newlines,
    backslashes, empty ones and failures: what a map's output must keep apart.
    """

    name = "echo-lines"
    blocking = False

    def run(self, payload: bytes) -> Deferred[bytes]:
        if payload == b"fail":
            return fail(ValueError("asked to fail"))
        if payload == b"<empty>":
            return succeed(b"")
        return succeed(payload.replace(b"|", b"\n"))


@taskmesh.task
def barrier(folder: str, count: int) -> str:
    """
    Arrive (a file in ``folder``), then wait until ``count`` tasks have:
    it passes only when ``count`` of them run at the same time (or have run).
    """
    Path(folder, uuid.uuid4().hex).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {count} tasks ran at the same time")
        time.sleep(0.01)
    return "met"
