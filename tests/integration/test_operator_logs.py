"""
Logs an operator can use, from real processes: the scheduler's start line
names its address and its store; a worker's reconnect lines say why and
when, rounded (not Twisted's "Scheduling retry 1 ... in 0.9398695857530154
seconds"); a failed task's traceback is in the worker's log (see
test_operator_commands), and a task that succeeds logs nothing.
"""

from __future__ import annotations

import re

import pytest
from conftest import HELLO, Mesh


@pytest.mark.integration
def test_start_line_reconnect_reasons_and_no_line_per_successful_task(mesh: Mesh) -> None:
    worker = mesh.worker("w1")  # before the scheduler: it cannot connect yet
    refused = worker.wait_for(
        rf"cannot reach the scheduler at 127\.0\.0\.1:{mesh.port} \(.*refused.*\); "
        r"trying again in \d+\.\d s \(attempt 1\)"
    )
    assert refused
    scheduler = mesh.scheduler()
    (start,) = scheduler.wait_for(r"scheduler listening on ")
    store = re.escape(str(mesh.folder / "taskmesh.sqlite"))
    assert re.search(rf"; store: SQLite {store}; 0 unfinished tasks$", start), start
    mesh.wait_joined("w1", worker=worker)
    assert "Scheduling retry" not in worker.log

    before = len(worker.log.splitlines())
    for _ in range(3):
        assert mesh.run_submit(HELLO).popen.returncode == 0
    assert len(worker.log.splitlines()) == before  # nothing per task on success

    scheduler.stop()
    worker.wait_for(
        r"cannot reach the scheduler at \S+ \(lost the connection: .*\); "
        r"trying again in \d+\.\d s \(attempt 1\)"
    )
    assert "Scheduling retry" not in worker.log
