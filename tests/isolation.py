"""
A pytest plugin (loaded with ``-p isolation``, see pyproject.toml): every test
runs with its own ``XDG_CONFIG_HOME``, holding a fresh secret as a scheduler
of this user would have created, and without ``TASKMESH_SECRET``, so no test
reads or writes the real ``~/.config/taskmesh`` and processes a test starts
share that test's secret, as a user's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmesh.net.credentials import SECRET_VARIABLE, create_secret_file, default_secret_path


@pytest.fixture(autouse=True)
def isolated_secret(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    config = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    path = default_secret_path()
    create_secret_file(path)
    yield path
