"""A scheduler and two workers run with ``twistd -n`` from one folder, as the quick start says."""

from __future__ import annotations

import pytest
from conftest import HELLO, HELLO_DIGEST, Mesh


@pytest.mark.integration
def test_scheduler_and_two_workers_from_one_folder(mesh: Mesh) -> None:
    scheduler = mesh.scheduler()
    workers = mesh.workers("w1", "w2")  # waits for both "joined" lines

    for process in [scheduler, *workers]:
        assert process.running(), process.describe()
        assert "Another twistd server is running" not in process.stderr + process.log
    assert not (mesh.folder / "twistd.pid").exists()

    submit = mesh.run_submit(HELLO)
    assert submit.popen.returncode == 0, submit.describe()
    assert submit.stdout == HELLO_DIGEST + "\n"
    assert submit.stderr == ""
