"""
The README's first example, run exactly as written: its ``tasks.py`` and
``add.py`` are written to a folder, its two ``twistd`` commands are run from
there (one change only: port 9001 becomes a free one, in the commands and in
the script alike), and ``python add.py`` must print what the README says.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import TWISTD, Mesh

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- readme-example: (?P<name>\S+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


def examples() -> dict[str, str]:
    found = {match["name"]: match["body"] for match in BLOCK.finditer(README.read_text())}
    assert {"tasks.py", "commands", "add.py"} <= set(found), found.keys()
    return found


@pytest.mark.integration
def test_the_readme_s_first_example_runs_as_written(mesh: Mesh) -> None:
    found = {name: body.replace("9001", str(mesh.port)) for name, body in examples().items()}
    (mesh.folder / "tasks.py").write_text(found["tasks.py"])
    (mesh.folder / "add.py").write_text(found["add.py"])
    scheduler_line, worker_line = found["commands"].strip().splitlines()
    scheduler_argv, worker_argv = shlex.split(scheduler_line), shlex.split(worker_line)
    assert scheduler_argv[:3] == ["twistd", "-n", "taskmesh-scheduler"]
    assert worker_argv[:3] == ["twistd", "-n", "taskmesh-worker"]

    # twistd -n logs to its stdout: that is where the tests read it
    scheduler = mesh.start("scheduler", [TWISTD, *scheduler_argv[1:]])
    scheduler.wait_for(rf"scheduler listening on .*:{mesh.port}\b", source="stdout")
    worker = mesh.start("worker", [TWISTD, *worker_argv[1:]])  # no PYTHONPATH: the folder is enough
    scheduler.wait_for(r"worker .* joined with 1 slots for add,", source="stdout")

    script = mesh.start("script", [sys.executable, "add.py"])
    assert script.wait() == 0, script.describe()
    assert script.stdout == "5\n[3, 7]\n"
    assert worker.running()
