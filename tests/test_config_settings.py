"""
Settings from a TOML file and TASKMESH_* variables, on the real options
classes of the scheduler, the worker and the taskmesh commands: flags beat
the environment, which beats the file, which beats the defaults; each
setting's source is known; anything wrong in a file is an error naming it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from taskmesh.cli.commands import StatusOptions, SubmitOptions
from taskmesh.config import Configurable, default_config_path, variable
from taskmesh.tap.scheduler import Options as SchedulerOptions
from taskmesh.tap.worker import Options as WorkerOptions


def configured(options: Configurable, argv: list[str], environ: dict[str, str]) -> Configurable:
    """Parse ``argv`` (up to the flags; postOptions aside), then apply environment and file."""
    options.postOptions = lambda: None  # type: ignore[method-assign]  # only the parse, here
    options.parseOptions(argv)
    options.apply_config(environ)
    return options


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "taskmesh.toml"
    config.write_text('[scheduler]\nmax-queued = 500\nprefetch = 7\nheartbeat = 0.5\nname = "from-file"\n')
    environ = {"TASKMESH_PREFETCH": "5", "TASKMESH_SCHEDULER_NAME": "from-env", "TASKMESH_NAME": "generic"}
    options = configured(SchedulerOptions(), ["--config", str(config), "--heartbeat", "4"], environ)
    assert options["heartbeat"] == 4.0 and options.sources["heartbeat"] == "command line"
    assert options["prefetch"] == 5 and options.sources["prefetch"] == "environment TASKMESH_PREFETCH"
    # The section's own variable wins over the generic one.
    assert options["name"] == "from-env" and options.sources["name"] == "environment TASKMESH_SCHEDULER_NAME"
    assert options["max-queued"] == 500 and options.sources["max-queued"] == f"{config} [scheduler]"
    assert options["retry-delay"] == 1.0 and options.sources["retry-delay"] == "default"


def test_values_go_through_the_options_own_checks(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[worker]\nconcurrency = 0\n")
    with pytest.raises(usage.UsageError, match=r"c\.toml \[worker\] concurrency"):
        configured(WorkerOptions(), ["--config", str(config)], {})
    with pytest.raises(usage.UsageError, match="TASKMESH_CONCURRENCY"):
        configured(WorkerOptions(), [], {"TASKMESH_CONCURRENCY": "many"})


def test_flags_and_lists(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[worker]\nno-plugins = true\ntasks = ["one.tasks", "two.tasks"]\n')
    options = configured(WorkerOptions(), ["--config", str(config)], {})
    assert options["no-plugins"] == 1 and options["tasks"] == ["one.tasks", "two.tasks"]
    argv = ["--config", str(config), "--tasks", "mine"]
    options = configured(WorkerOptions(), argv, {"TASKMESH_TLS": "yes"})
    assert options["tasks"] == ["mine"] and options["tls"] == 1  # the flag replaces the file's list
    options = configured(WorkerOptions(), [], {"TASKMESH_TASKS": "a.x, b.y", "TASKMESH_NO_PLUGINS": "0"})
    assert options["tasks"] == ["a.x", "b.y"] and options["no-plugins"] == 0
    with pytest.raises(usage.UsageError, match="is not true or false"):
        configured(WorkerOptions(), [], {"TASKMESH_TLS": "maybe"})


def test_a_file_with_mistakes_is_an_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[worker]\nconcurency = 2\n")
    with pytest.raises(usage.UsageError, match=r"unknown setting 'concurency' in \[worker\]"):
        configured(WorkerOptions(), ["--config", str(config)], {})
    config.write_text("[workers]\n")
    with pytest.raises(usage.UsageError, match=r"unknown section \[workers\]"):
        configured(WorkerOptions(), ["--config", str(config)], {})
    config.write_text("[worker\n")
    with pytest.raises(usage.UsageError, match="is not valid TOML"):
        configured(WorkerOptions(), ["--config", str(config)], {})
    with pytest.raises(usage.UsageError, match="does not exist"):
        configured(WorkerOptions(), [], {"TASKMESH_CONFIG": str(tmp_path / "missing.toml")})


def test_the_default_file_is_local_then_the_users(tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    (home / "taskmesh").mkdir(parents=True)
    user = home / "taskmesh" / "config.toml"
    folder = tmp_path / "here"
    folder.mkdir()
    environ = {"XDG_CONFIG_HOME": str(home)}
    assert default_config_path(environ, folder) is None
    user.write_text("")
    assert default_config_path(environ, folder) == user
    (folder / "taskmesh.toml").write_text("")
    assert default_config_path(environ, folder) == folder / "taskmesh.toml"


def test_the_client_section_is_how_to_reach_the_scheduler(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[client]\nconnect = "sched.example:9001"\nconnect-timeout = 3\n')
    for options_class in (SubmitOptions, StatusOptions):
        argv = ["--config", str(config)] + (["text"] if options_class is SubmitOptions else [])
        options = configured(options_class(), argv, {})
        assert options["connect"] == "sched.example:9001" and options["connect-timeout"] == 3.0
    # A command's own options are flags only.
    config.write_text('[client]\ntype = "add"\n')
    with pytest.raises(usage.UsageError, match="unknown setting 'type'"):
        configured(StatusOptions(), ["--config", str(config)], {})
    assert variable("max-queued") == "TASKMESH_MAX_QUEUED"
    assert variable("name", "worker") == "TASKMESH_WORKER_NAME"


def test_taskmesh_config_prints_each_setting_and_its_source(tmp_path: Path) -> None:
    (tmp_path / "taskmesh.toml").write_text("[scheduler]\nmax-queued = 500\n")
    command = Path(sys.executable).parent / "taskmesh"
    env = {"PATH": "/usr/bin:/bin", "TASKMESH_WORKER_CONCURRENCY": "3", "XDG_CONFIG_HOME": str(tmp_path)}
    shown = subprocess.run(
        [str(command), "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(
        line.startswith("max-queued") and "= 500" in line and "taskmesh.toml [scheduler]" in line
        for line in lines
    )
    assert any("concurrency" in line and "environment TASKMESH_WORKER_CONCURRENCY" in line for line in lines)
    assert any(line.startswith("connect ") and "# default" in line for line in lines)
    assert "[scheduler]" in lines and "[worker]" in lines and "[client]" in lines


def test_the_readme_s_config_file_is_accepted_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- readme-example: taskmesh.toml -->\n```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "taskmesh.toml"
    config.write_text(block)
    argv = ["--config", str(config)]
    scheduler = configured(SchedulerOptions(), argv, {})
    assert scheduler["max-queued"] == 500000 and scheduler["store"] == "/var/lib/taskmesh/tasks.sqlite"
    worker = configured(WorkerOptions(), argv, {})
    assert worker["concurrency"] == 4 and worker["tasks"] == ["myapp.tasks"]
    assert configured(StatusOptions(), argv, {})["connect"] == "sched.example:9001"
