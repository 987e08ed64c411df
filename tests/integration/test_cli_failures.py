"""What ``taskmesh submit`` tells a person when things go wrong: one line on stderr and an exit status."""

from __future__ import annotations

import pytest
from conftest import Mesh, free_port


def one_line(stderr: str) -> str:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    assert stderr.startswith("taskmesh: ") and "Traceback" not in stderr, repr(stderr)
    return stderr


@pytest.mark.integration
def test_a_failed_task_exits_1_with_its_reason(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1")
    submit = mesh.run_submit("--type", "sleep", "notanumber")
    assert submit.popen.returncode == 1, submit.describe()
    assert submit.stdout == ""
    line = one_line(submit.stderr)
    assert "failed" in line and "'notanumber'" in line  # the handler's reason


@pytest.mark.integration
def test_an_unreachable_scheduler_exits_3(mesh: Mesh) -> None:
    submit = mesh.run_submit("x", address=f"127.0.0.1:{free_port()}")  # nobody listens there
    assert submit.popen.returncode == 3, submit.describe()
    assert submit.stdout == ""
    assert "cannot reach the scheduler" in one_line(submit.stderr)


@pytest.mark.integration
def test_a_type_no_worker_runs_is_accepted_with_a_warning(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1")
    submit = mesh.submit("--type", "nosuchtype", "x")
    (warning,) = submit.wait_for(r"warning: .*'nosuchtype'", source="stderr")
    assert warning.startswith("taskmesh: warning: ")
    assert submit.running(), "it waits for a worker that runs the type, by design"
    assert submit.stdout == ""
    # The mesh fixture stops it.
