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
    for name in ("tasks.py", "blocking.py", "aio.py", "fastapi_app.py"):
        (mesh.folder / name).write_text(found[name])
    mesh.scheduler()
    mesh.workers("w1", options=("--tasks", "tasks"), extra_path=mesh.folder)

    blocking = mesh.start("blocking", [sys.executable, "blocking.py"], extra_path=mesh.folder)
    assert blocking.wait() == 0, blocking.describe()
    assert blocking.stdout == "{'sum': 5}\n[3, 7]\n"

    aio = mesh.start("aio", [sys.executable, "-c", RUN_AND_CHECK, "aio.py"], extra_path=mesh.folder)
    assert aio.wait() == 0, aio.describe()
    assert aio.stdout == "5\n[3, 7]\nreactor imported: False\n"

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")  # FastAPI's TestClient needs it
    app = mesh.start("fastapi", [sys.executable, "-c", SERVE_FASTAPI], extra_path=mesh.folder)
    assert app.wait() == 0, app.describe()
    assert app.stdout == "200 {'sum': 5}\n200 [12, 14, 16, 18]\nreactor imported: False\n"


#: Serves the README's FastAPI app through FastAPI's TestClient (its lifespan
#: included): one request, then four at once, then the app shuts down.
SERVE_FASTAPI = """
import sys
from concurrent.futures import ThreadPoolExecutor
from fastapi.testclient import TestClient
from fastapi_app import app
with TestClient(app) as http:
    answer = http.get("/add", params={"x": 2, "y": 3}, timeout=60)
    print(answer.status_code, answer.json())
    def add(x):
        return http.get("/add", params={"x": x, "y": 10}, timeout=60)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(add, range(2, 10, 2)))
    print(answers[0].status_code, [a.json()["sum"] for a in answers])
print("reactor imported:", "twisted.internet.reactor" in sys.modules)
"""


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
