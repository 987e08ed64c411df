"""
The twistd plugins: options parse, services build, and the pid file rule that
lets a scheduler and many workers run with ``twistd -n`` from one folder.
"""

from __future__ import annotations

import os

import pytest
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from taskmesh.service import SchedulerService, WorkerService
from taskmesh.store import MemoryStore
from taskmesh.store.sqlite import SqliteStore
from taskmesh.tap import scheduler as scheduler_tap
from taskmesh.tap import worker as worker_tap


def twistd_options(*argv: str) -> ServerOptions:
    """Parse a twistd command line as twistd does, plugins included."""
    options = ServerOptions()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize("role", ["taskmesh-scheduler", "taskmesh-worker"])
def test_no_pid_file_in_the_foreground_by_default(role: str) -> None:
    assert twistd_options("-n", role)["pidfile"] == ""


@pytest.mark.parametrize("role", ["taskmesh-scheduler", "taskmesh-worker"])
def test_an_explicit_pid_file_is_kept(role: str) -> None:
    assert twistd_options("-n", "--pidfile", "mine.pid", role)["pidfile"] == os.path.abspath("mine.pid")


def test_a_daemon_keeps_its_pid_file() -> None:
    assert twistd_options("taskmesh-scheduler")["pidfile"] == os.path.abspath("twistd.pid")


def test_scheduler_defaults_and_service(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    options = twistd_options("-n", "taskmesh-scheduler").subOptions
    assert options["listen"] == "tcp:9001"
    service = scheduler_tap.makeService(options)
    assert isinstance(service, SchedulerService)
    assert service.listen == "tcp:9001"
    assert isinstance(service.store, SqliteStore)
    assert (tmp_path / "taskmesh.sqlite").exists()  # the embedded store, in this folder
    service.store.close()


def test_scheduler_memory_store_and_policy() -> None:
    options = scheduler_tap.Options()
    options.parseOptions(["--store", "memory", "--heartbeat", "0.5", "--max-attempts", "5"])
    service = scheduler_tap.makeService(options)
    assert isinstance(service.store, MemoryStore)
    assert service.core.policy.heartbeat_interval == 0.5
    assert service.core.policy.max_attempts == 5


def test_an_unusable_store_path_stops_the_scheduler_with_a_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = scheduler_tap.Options()
    options.parseOptions(["--store", str(tmp_path / "no" / "such" / "dir" / "x.sqlite")])
    with pytest.raises(SystemExit, match="cannot open the store"):
        scheduler_tap.makeService(options)


def test_scheduler_limits_must_fit_together() -> None:
    with pytest.raises(usage.UsageError, match="max-payload"):
        scheduler_tap.Options().parseOptions(["--max-frame", "1000", "--max-payload", "1000"])
    with pytest.raises(usage.UsageError):
        scheduler_tap.Options().parseOptions(["--prefetch", "-1"])


def test_worker_options_and_service() -> None:
    options = twistd_options(
        "-n", "taskmesh-worker", "--connect", "[::1]:9100", "--concurrency", "3", "--name", "w1"
    ).subOptions
    service = worker_tap.makeService(options)
    assert isinstance(service, WorkerService)
    assert service.factory.slots == 3 and service.factory.name == "w1"
    assert set(service.factory.handlers.names()) >= {"sha256", "sleep"}


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["--connect", "host:notaport"], "--connect"),
        (["--concurrency", "0"], "0 is not a positive whole number"),
        (["--handler", "nosuchmodule:thing"], "cannot import"),
        (["--handler", "taskmesh.handlers:nothing"], "no attribute"),
        (["--handler", "taskmesh.handlers:DEFAULT_TASK_TYPE"], "ITaskHandler"),
    ],
)
def test_worker_refuses_bad_options_clearly(argv: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        worker_tap.Options().parseOptions(argv)


def test_worker_loads_a_handler_by_import_path() -> None:
    options = worker_tap.Options()
    options.parseOptions(["--handler", "taskmesh.handlers:Sha256Handler", "--no-plugins"])
    assert len(options["handler-objects"]) == 1


TASKS_MODULE = """
import taskmesh

@taskmesh.task
def double(x):
    return 2 * x

@taskmesh.task(cpu_bound=True)
def crunch(n):
    return n
"""


def test_worker_loads_task_modules_from_its_current_folder(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(TASKS_MODULE)
    (package / "handlers.py").write_text("def shout(text):\n    return text.upper()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        options = worker_tap.Options()
        options.parseOptions(["--tasks", "myapp.tasks", "--handler", "myapp.handlers:shout", "--no-plugins"])
        assert sys.path[0] == str(tmp_path)  # no PYTHONPATH needed
        service = worker_tap.makeService(options)
        assert set(service.factory.handlers.names()) == {
            "crunch",
            "double",
            "pbkdf2",
            "sha256",
            "shout",
            "sleep",
        }
        with pytest.raises(usage.UsageError, match="--tasks: cannot import"):
            worker_tap.Options().parseOptions(["--tasks", "myapp.nothing"])
        with pytest.raises(usage.UsageError, match="no @taskmesh.task"):
            worker_tap.Options().parseOptions(["--tasks", "myapp.handlers"])
    finally:
        for name in ("myapp", "myapp.tasks", "myapp.handlers"):
            sys.modules.pop(name, None)
