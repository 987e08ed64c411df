"""twistd finds the taskmesh plugins from a folder outside the checkout, as a user's shell does."""

from __future__ import annotations

import pytest
from conftest import TWISTD, Mesh


@pytest.mark.integration
def test_twistd_help_lists_both_plugins(mesh: Mesh) -> None:
    help = mesh.start("twistd-help", [TWISTD, "--help"])
    assert help.wait() == 0, help.describe()
    listed = help.stdout.split()
    assert "taskmesh-scheduler" in listed and "taskmesh-worker" in listed, help.describe()
    # A broken plugin module prints a traceback yet exits 0.
    assert "Traceback" not in help.stdout + help.stderr, help.describe()


@pytest.mark.integration
@pytest.mark.parametrize(
    "plugin, an_option", [("taskmesh-scheduler", "--listen"), ("taskmesh-worker", "--concurrency")]
)
def test_each_plugin_runs_its_help(mesh: Mesh, plugin: str, an_option: str) -> None:
    help = mesh.start(f"{plugin}-help", [TWISTD, plugin, "--help"])
    assert help.wait() == 0, help.describe()
    assert an_option in help.stdout, help.describe()
    assert "Traceback" not in help.stdout + help.stderr, help.describe()
