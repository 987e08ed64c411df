"""
The integration tests' harness: real ``twistd`` and ``taskmesh`` processes,
started from a ``tmp_path`` folder outside the checkout (so the twistd
plugins are found as a user finds them), on a free loopback port.

The processes themselves are ``taskmesh.testing``'s ``Mesh`` and ``Process``
(waits with deadlines, stop by pid); this file adds the fixture that stops
every process a test started, and what the tests share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from taskmesh.testing import TIMEOUT, TWISTD, Mesh, Process, free_port, wait_until

__all__ = [
    "HELLO",
    "HELLO_DIGEST",
    "TIMEOUT",
    "TRACED",
    "TWISTD",
    "Mesh",
    "Process",
    "bounded",
    "free_port",
    "wait_until",
]

HELLO = "Hello, World!"
HELLO_DIGEST = "dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f"

#: Options for ``Mesh.workers``: also run the ``traced-sleep`` task type
#: (traced_sleep.py, in this folder), which logs its start in the worker's log.
TRACED: dict[str, Any] = dict(
    options=("--handler", "traced_sleep:TracedSleep"), extra_path=Path(__file__).resolve().parent
)


def bounded(waiting: Any, seconds: float = TIMEOUT) -> Deferred:
    """For async tests: a Deferred (or coroutine) that fails with TimeoutError after ``seconds``."""
    from twisted.internet import reactor

    if not isinstance(waiting, Deferred):
        waiting = Deferred.fromCoroutine(waiting)
    return waiting.addTimeout(seconds, reactor)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A folder and a port for a test's processes; every one is stopped by pid afterwards."""
    mesh = Mesh(tmp_path)
    try:
        yield mesh
    finally:
        try:
            mesh.stop_all()  # SIGTERM, a bounded wait, then SIGKILL
        finally:
            print(mesh.describe())  # pytest shows it when the test failed
