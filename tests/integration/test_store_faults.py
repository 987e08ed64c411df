"""
Store faults, provoked for real against real twistd processes, as a user
meets them: a database that is full, another process holding its write
lock, a read-only file or folder, a second scheduler on the same store (and
a really full filesystem, where the test may mount a small tmpfs).

For each: every task that was acknowledged is there after the fault clears
and again after a restart (fetched by id); a submission during the fault
gets one line saying why, and exit status 1, not a hang; the scheduler
recovers without a restart and says so in its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, Mesh, Process, wait_until

from taskmesh.testing import fill_store, free_store, read_only, write_lock

FULL = "store unavailable: database or disk is full"
LOCKED = "store unavailable: database is locked (another process holds the store's write lock)"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def one_line(process: Process) -> str:
    stderr = process.stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    assert "Traceback" not in stderr
    return stderr.rstrip("\n")


def enqueue(mesh: Mesh, text: str) -> Process:
    """``taskmesh submit --no-wait TEXT``, to its end (bounded: a hang fails the test)."""
    return mesh.run_submit("--no-wait", text)


def accepted(process: Process) -> int:
    assert process.popen.returncode == 0, process.describe()
    return int(process.stdout.strip())


def refused_with(process: Process, reason: str) -> None:
    assert process.popen.returncode == 1, process.describe()
    assert process.stdout == ""
    assert one_line(process) == f"taskmesh: task refused: {reason}"


def status(mesh: Mesh) -> dict:
    process = mesh.command("status", "--connect", mesh.address, "--json")
    assert process.wait(TIMEOUT) == 0, process.describe()
    return json.loads(process.stdout)


def status_text(mesh: Mesh) -> str:
    process = mesh.command("status", "--connect", mesh.address)
    assert process.wait(TIMEOUT) == 0, process.describe()
    return process.stdout


def assert_all_there(mesh: Mesh, acknowledged: dict[int, str]) -> None:
    """Fetch every acknowledged task by id: each has its own right result."""
    for task_id, text in acknowledged.items():
        process = mesh.command("result", "--connect", mesh.address, "--wait", str(task_id))
        assert process.wait(TIMEOUT) == 0, process.describe()
        assert process.stdout == digest(text) + "\n", (task_id, text)


def restart(mesh: Mesh, name: str) -> Process:
    assert mesh.scheduler_process is not None
    mesh.scheduler_process.stop()
    return mesh.scheduler(name)


def until_accepted(mesh: Mesh, text: str) -> int:
    """Submit until the scheduler accepts (it recovers by itself; bounded)."""
    found: list[int] = []

    def attempt() -> bool:
        process = enqueue(mesh, text)
        if process.popen.returncode == 0:
            found.append(accepted(process))
            return True
        one_line(process)  # a refusal, in one line: try again
        return False

    wait_until(attempt, TIMEOUT, f"the scheduler to accept {text!r} again")
    return found[0]


@pytest.mark.integration
def test_a_full_database_refuses_with_the_reason_and_recovers_when_space_returns(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = mesh.folder / mesh.store
    pages = fill_store(store, rows=80)
    # A genuine SQLITE_FULL on the scheduler's own connection (PRAGMA max_page_count).
    monkeypatch.setenv("TASKMESH_TESTING_SQLITE_MAX_PAGES", str(pages + 12))
    scheduler = mesh.scheduler()
    mesh.workers("w1")
    acknowledged: dict[int, str] = {}
    refusal: Process | None = None
    for n in range(60):
        text = f"{n:04d}" + "x" * 3000  # about a page a task
        process = enqueue(mesh, text)
        if process.popen.returncode != 0:
            refusal = process
            break
        acknowledged[accepted(process)] = text
    assert refusal is not None, "the database never filled up"
    refused_with(refusal, FULL)
    assert acknowledged
    report = status(mesh)["store"]
    assert FULL in (report["error"], report["last_error"])
    assert "database or disk is full" in status_text(mesh)
    scheduler.wait_for(r"the store cannot commit: database or disk is full")
    assert_all_there(mesh, acknowledged)  # reading works while it is full

    free_store(store)  # space comes back, as when files are deleted
    text = "after" + "y" * 3000
    acknowledged[until_accepted(mesh, text)] = text
    assert scheduler.running()  # no restart
    scheduler.wait_for(r"the store commits again after")
    assert "cannot rollback" not in scheduler.log
    assert_all_there(mesh, acknowledged)
    restart(mesh, "scheduler2")
    assert_all_there(mesh, acknowledged)


@pytest.mark.integration
def test_a_store_locked_by_another_process_refuses_new_work_keeps_promises_and_answers_meanwhile(
    mesh: Mesh,
) -> None:
    scheduler = mesh.scheduler()
    mesh.workers("w1")
    acknowledged = {accepted(enqueue(mesh, f"before-{n}")): f"before-{n}" for n in range(5)}
    slow = accepted(mesh.run_submit("--no-wait", "--type", "sleep", "1"))
    with write_lock(mesh.folder / mesh.store):
        waiting = mesh.command("result", "--connect", mesh.address, "--wait", str(slow), name="waiting")
        refused_with(enqueue(mesh, "during"), LOCKED)
        # The scheduler answers while the lock is held: it never waits on it.
        wait_until(
            lambda: status(mesh)["store"]["held_back_results"] >= 1,
            TIMEOUT,
            "the sleep's result to be held back",
        )
        report = status(mesh)["store"]
        assert report["available"] is False and report["error"] == LOCKED
        assert report["refusing_submissions"] is True
        assert "store: UNAVAILABLE" in status_text(mesh)
        assert waiting.running()  # the result is promised: it waits, it is not refused
        scheduler.wait_for(r"the store cannot commit: database is locked")
    assert waiting.wait(TIMEOUT) == 0, waiting.describe()
    assert waiting.stdout == "slept 1\n"
    acknowledged[until_accepted(mesh, "after")] = "after"
    assert scheduler.running()
    scheduler.wait_for(r"the store commits again after")
    assert scheduler.count(r"the store cannot commit") == 1  # once for the episode
    assert_all_there(mesh, acknowledged)
    restart(mesh, "scheduler2")
    assert_all_there(mesh, acknowledged)


@pytest.mark.integration
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_store_is_refused_at_start_in_one_line_and_nothing_is_created(
    tmp_path: Path, what: str
) -> None:
    folder = tmp_path / "stores"
    folder.mkdir()
    mesh = Mesh(tmp_path, store=str(folder / "taskmesh.sqlite"))
    try:
        mesh.scheduler("scheduler1")
        mesh.workers("w1")
        acknowledged = {accepted(enqueue(mesh, f"t-{n}")): f"t-{n}" for n in range(3)}
        assert_all_there(mesh, acknowledged)
        mesh.scheduler_process.stop()  # type: ignore[union-attr]
        before = sorted(os.listdir(folder))
        target = folder / "taskmesh.sqlite" if what == "file" else folder
        with read_only(target) as done:
            if not done:
                pytest.skip(f"cannot make a {what} read-only here")
            second = mesh.twistd(
                "scheduler2",
                "taskmesh-scheduler",
                "--listen",
                f"tcp:{mesh.port}:interface=127.0.0.1",
                "--store",
                mesh.store,
            )
            assert second.wait(TIMEOUT) == 1, second.describe()
            line = second.stderr.strip()
            assert line.count("\n") == 0 and "Traceback" not in line, second.describe()
            assert line.startswith("taskmesh-scheduler: cannot open the store "), line
            assert line.endswith("is read-only") or "is read-only (" in line, line
            assert sorted(os.listdir(folder)) == before
        mesh.scheduler("scheduler3")
        assert_all_there(mesh, acknowledged)
    finally:
        mesh.stop_all()
        print(mesh.describe())


@pytest.mark.integration
def test_a_second_scheduler_on_the_same_store_refuses_to_start_naming_the_first(mesh: Mesh) -> None:
    first = mesh.scheduler("scheduler1")
    mesh.workers("w1")
    acknowledged = {accepted(enqueue(mesh, f"t-{n}")): f"t-{n}" for n in range(3)}
    other_port = str(mesh.port + 1 if mesh.port < 65535 else mesh.port - 1)
    second = mesh.twistd(
        "scheduler2",
        "taskmesh-scheduler",
        "--listen",
        f"tcp:{other_port}:interface=127.0.0.1",
        "--store",
        mesh.store,
    )
    assert second.wait(TIMEOUT) == 1, second.describe()
    line = second.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, second.describe()
    assert f"in use by another scheduler: pid {first.pid} (" in line, line
    assert "recovered" not in second.log  # it took back nothing
    acknowledged[accepted(enqueue(mesh, "still"))] = "still"  # the first is unharmed
    assert_all_there(mesh, acknowledged)
    first.signal(signal.SIGKILL)  # no cleanup at all: the kernel drops the lock
    first.wait()
    mesh.scheduler("scheduler3")
    mesh.wait_joined("w1")
    assert_all_there(mesh, acknowledged)


# -- a really full filesystem, where this test may mount one ---------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root and the right to mount; skipped elsewhere), unmounted afterwards."""
    mount = shutil.which("mount")
    point = tmp_path / "small-fs"
    point.mkdir()
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write a file until the filesystem is full; deleting it gives the space back."""
    filler = folder / "filler"
    block = b"\0" * 65536
    # Unbuffered: with a buffer, the bytes a full disk refused would be
    # written again (and refused again) when the file is closed.
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(block):
                pass
        except OSError:
            pass
    return filler


@pytest.mark.integration
def test_a_full_filesystem_refuses_with_the_reason_and_recovers_when_space_returns(
    small_filesystem: Path, tmp_path: Path
) -> None:
    mesh = Mesh(tmp_path, store=str(small_filesystem / "taskmesh.sqlite"))
    try:
        scheduler = mesh.scheduler()
        mesh.workers("w1")
        acknowledged = {accepted(enqueue(mesh, f"t-{n}")): f"t-{n}" for n in range(3)}
        filler = fill_disk(small_filesystem)
        refusal: Process | None = None
        for n in range(40):
            text = f"{n:04d}" + "z" * 30000  # the WAL has to grow: the disk has no room
            process = enqueue(mesh, text)
            if process.popen.returncode != 0:
                refusal = process
                break
            acknowledged[accepted(process)] = text
        assert refusal is not None, "the filesystem never filled up"
        refused_with(refusal, FULL)
        scheduler.wait_for(r"the store cannot commit: database or disk is full")
        assert "cannot rollback" not in scheduler.log
        filler.unlink()
        text = "after" + "y" * 30000
        acknowledged[until_accepted(mesh, text)] = text
        assert scheduler.running()
        assert_all_there(mesh, acknowledged)
        restart(mesh, "scheduler2")
        assert_all_there(mesh, acknowledged)
    finally:
        mesh.stop_all()
        print(mesh.describe())
