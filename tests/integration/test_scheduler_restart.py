"""A scheduler that stops, politely or not, gets its worker back once a new one listens on the port."""

from __future__ import annotations

import signal

import pytest
from conftest import HELLO, HELLO_DIGEST, Mesh


def assert_hello_works(mesh: Mesh) -> None:
    submit = mesh.run_submit(HELLO)
    assert (submit.popen.returncode, submit.stdout) == (0, HELLO_DIGEST + "\n"), submit.describe()


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_reconnects_to_a_restarted_scheduler(mesh: Mesh, signum: int) -> None:
    first = mesh.scheduler("scheduler1")
    (worker,) = mesh.workers("w1")
    worker.wait_for("connected to scheduler")
    assert_hello_works(mesh)

    first.signal(signum)
    # twistd shuts down on SIGTERM, then ends by that signal itself.
    assert first.wait() == -signum, first.describe()
    if signum == signal.SIGTERM:
        assert "Server Shut Down." in first.log
    worker.wait_for("lost the scheduler")

    mesh.scheduler("scheduler2")  # on the same port, and the same store
    mesh.wait_joined("w1")
    worker.wait_for("connected to scheduler", count=2)
    assert worker.running()
    assert_hello_works(mesh)
