"""
The README's blocking and asyncio examples, run exactly as written (port
9001 made a free one) beside its ``tasks.py``, against a real scheduler and
worker: each must print what the README says and exit by itself; the
asyncio one without ever importing Twisted's reactor.
"""

from __future__ import annotations

import sys

import pytest
from conftest import Mesh
from test_readme_example import examples

#: Runs a script as ``python FILE`` would, then says whether the reactor was imported.
RUN_AND_CHECK = (
    "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
    "print('reactor imported:', 'twisted.internet.reactor' in sys.modules)"
)


@pytest.mark.integration
def test_the_readme_s_blocking_and_asyncio_examples_run_as_written(mesh: Mesh) -> None:
    found = {name: body.replace("9001", str(mesh.port)) for name, body in examples().items()}
    for name in ("tasks.py", "blocking.py", "aio.py"):
        (mesh.folder / name).write_text(found[name])
    mesh.scheduler()
    mesh.workers("w1", options=("--tasks", "tasks"), extra_path=mesh.folder)

    blocking = mesh.start("blocking", [sys.executable, "blocking.py"], extra_path=mesh.folder)
    assert blocking.wait() == 0, blocking.describe()
    assert blocking.stdout == "{'sum': 5}\n[3, 7]\n"

    aio = mesh.start("aio", [sys.executable, "-c", RUN_AND_CHECK, "aio.py"], extra_path=mesh.folder)
    assert aio.wait() == 0, aio.describe()
    assert aio.stdout == "5\n[3, 7]\nreactor imported: False\n"


@pytest.mark.integration
def test_the_readme_s_later_example_runs_as_written(mesh: Mesh) -> None:
    found = {name: body.replace("9001", str(mesh.port)) for name, body in examples().items()}
    for name in ("tasks.py", "later.py"):
        (mesh.folder / name).write_text(found[name])
    mesh.scheduler()
    mesh.workers("w1", options=("--tasks", "tasks"), extra_path=mesh.folder)
    later = mesh.start("later", [sys.executable, "later.py"], extra_path=mesh.folder)
    assert later.wait() == 0, later.describe()
    assert later.stdout == "scheduled\n5\n4\n['nightly']\n"
