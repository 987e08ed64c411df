"""
Real taskmesh processes for tests and benchmarks: a scheduler and workers
started with ``twistd -n`` from one folder on a free loopback port, as a
user starts them, and always stopped by pid.

Every wait has a deadline and fails with ``MeshError`` (an AssertionError, so
test runners report it as a failure) showing the tail of every log.  Nothing
waits for time to pass: only for a log line, an exit, or a condition.

    with Mesh(folder) as mesh:
        mesh.scheduler()
        mesh.workers("w1", "w2")
        digest = mesh.run_submit("Hello, World!").stdout.strip()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from taskmesh import wire
from taskmesh.net.auth import PeerHandshake
from taskmesh.net.credentials import peer_secret

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
TASKMESH = str(BIN / "taskmesh")

#: Generous bounds for a loaded 2-core machine: reaching one is a failure, not a wait.
TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")


class MeshError(AssertionError):
    """A process did not do what was waited for, in time."""


def free_port() -> int:
    """A loopback port nobody listens on (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MeshError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def child_env(extra_path: Path | None = None) -> dict[str, str]:
    """This environment, minus anything that would put a checkout on sys.path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(none)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text) or "(empty)"


class Process:
    """One child process: its output in files, waits with deadlines, stop by pid."""

    def __init__(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        self.pid = self.popen.pid

    def read(self, source: str = "log") -> str:
        path = {"log": self.log_path, "stdout": self.stdout_path, "stderr": self.stderr_path}[source]
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    @property
    def log(self) -> str:
        return self.read("log")

    @property
    def stdout(self) -> str:
        return self.read("stdout")

    @property
    def stderr(self) -> str:
        return self.read("stderr")

    def describe(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}): {' '.join(self.argv)}\n"
            f"[log]\n{_tail(self.log_path)}\n[stdout]\n{_tail(self.stdout_path)}\n"
            f"[stderr]\n{_tail(self.stderr_path)}"
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def count(self, pattern: str, source: str = "log") -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.read(source).splitlines() if regex.search(line))

    def wait_for(
        self, pattern: str, count: int = 1, source: str = "log", timeout: float = TIMEOUT
    ) -> list[str]:
        """
        Wait until ``pattern`` (a regex, one line) has matched ``count`` times
        in the log (or stdout, stderr); return the matching lines.  Fails at
        once if the process exits first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()  # read after this, so a last line is not missed
            found = [line for line in self.read(source).splitlines() if regex.search(line)]
            if len(found) >= count:
                return found
            if exited:
                raise MeshError(f"{self.name} exited before {pattern!r} appeared\n{self.describe()}")
            if time.monotonic() > deadline:
                raise MeshError(
                    f"timed out after {timeout:g} s waiting for {pattern!r} "
                    f"({len(found)}/{count}) in {self.name}'s {source}\n{self.describe()}"
                )
            time.sleep(0.05)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit by itself; return its exit status."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MeshError(f"{self.name} did not exit within {timeout:g} s\n{self.describe()}") from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:  # never signal a pid that may have been reused
            os.kill(self.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT)


def read_frame(sock: socket.socket) -> bytes:
    """One frame body from a blocking socket (raises ConnectionError if it closes first)."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the connection closed in the middle of a frame")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    return exactly(length)


def raw_handshake(sock: socket.socket, hello: wire.Hello, secret: bytes) -> wire.Message:
    """
    The peer's side of the handshake on a plain blocking socket, for tests and
    benchmarks that speak the protocol by hand.  Returns the scheduler's last
    answer: the Welcome, or an Error.
    """
    handshake = PeerHandshake(secret, hello)
    sock.sendall(struct.pack(">I", len(handshake.hello_body)) + handshake.hello_body)
    challenge = wire.decode(read_frame(sock))
    if not isinstance(challenge, wire.Challenge):
        return challenge
    proof = wire.encode(handshake.answer(challenge))
    sock.sendall(struct.pack(">I", len(proof)) + proof)
    return wire.decode(read_frame(sock))


def user_secret() -> bytes:
    """The secret a scheduler of this user on this machine uses by default (see credentials)."""
    return peer_secret()


class Mesh:
    """The processes of one run, all started from one folder, on one port."""

    def __init__(self, folder: Path, store: str = "taskmesh.sqlite") -> None:
        self.folder = folder
        self.store = store
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[Process] = []
        self.scheduler_process: Process | None = None

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], log: bool = False, extra_path: Path | None = None) -> Process:
        if any(process.name == name for process in self.processes):
            raise ValueError(f"a process named {name} was already started")
        log_path = self.folder / f"{name}.log" if log else None
        process = Process(name, argv, self.folder, child_env(extra_path), log_path)
        self.processes.append(process)
        return process

    def twistd(self, name: str, *argv: str, extra_path: Path | None = None) -> Process:
        """``twistd -n --logfile=NAME.log ARGV...`` (no --pidfile, as a user would)."""
        return self.start(
            name, [TWISTD, "-n", f"--logfile={name}.log", *argv], log=True, extra_path=extra_path
        )

    def scheduler(self, name: str = "scheduler", *options: str) -> Process:
        """
        Start a scheduler on this mesh's port and store, and wait until it
        listens.  Its dashboard is off unless ``--web`` is among the options
        (tests run side by side: the default port is for people).
        """
        if "--web" not in options:
            options = (*options, "--web", "none")
        process = self.twistd(
            name,
            "taskmesh-scheduler",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--store",
            self.store,
            *options,
        )
        process.wait_for(rf"scheduler listening on 127\.0\.0\.1:{self.port}\b")
        self.scheduler_process = process
        return process

    def worker(
        self,
        name: str,
        concurrency: int = 1,
        options: Sequence[str] = (),
        extra_path: Path | None = None,
    ) -> Process:
        """Start one worker (without waiting for it to join)."""
        return self.twistd(
            name,
            "taskmesh-worker",
            "--connect",
            self.address,
            "--name",
            name,
            "--concurrency",
            str(concurrency),
            *options,
            extra_path=extra_path,
        )

    def workers(
        self,
        *names: str,
        concurrency: int = 1,
        options: Sequence[str] = (),
        extra_path: Path | None = None,
    ) -> list[Process]:
        """Start workers together, then wait until the scheduler logs each one joining."""
        started = [self.worker(name, concurrency, options, extra_path) for name in names]
        for name, process in zip(names, started):
            self.wait_joined(name, concurrency, worker=process)
        return started

    def wait_joined(self, name: str, slots: int = 1, count: int = 1, worker: Process | None = None) -> None:
        """
        Wait until the scheduler logs this worker joining ``count`` times;
        fail at once if ``worker`` (its process) exits first.
        """
        scheduler = self.scheduler_process
        assert scheduler is not None, "start the scheduler first"
        pattern = rf"worker {re.escape(name)}@127\.0\.0\.1:\d+ joined with {slots} slots for "

        def joined() -> bool:
            if worker is not None and not worker.running():
                raise MeshError(f"worker {name} exited before joining\n{worker.describe()}")
            return scheduler.count(pattern) >= count

        try:
            wait_until(joined, TIMEOUT, f"worker {name} to join")
        except MeshError as e:
            raise MeshError(f"{e}\n{self.describe()}") from None

    def command(self, *argv: str, name: str | None = None) -> Process:
        """Start ``taskmesh ARGV...`` (the console command) without waiting for it."""
        return self.start(name or f"taskmesh-{len(self.processes)}", [TASKMESH, *argv])

    def submit(self, *argv: str, name: str | None = None, address: str | None = None) -> Process:
        """Start ``taskmesh submit --connect ADDRESS ARGV...`` without waiting for it."""
        return self.command(
            "submit",
            "--connect",
            address or self.address,
            *argv,
            name=name or f"submit-{len(self.processes)}",
        )

    def run_submit(self, *argv: str, address: str | None = None, timeout: float = TIMEOUT) -> Process:
        """Run ``taskmesh submit`` to its end (bounded) and return the finished process."""
        process = self.submit(*argv, address=address)
        process.wait(timeout)
        return process

    def stop_all(self) -> None:
        """Stop every process, last started first; report the first that would not stop."""
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]

    def describe(self) -> str:
        return "\n".join(process.describe() for process in self.processes)


# -- store faults ---------------------------------------------------------------
#
# Genuine faults, for the tests and the chaos run: each makes SQLite itself
# fail the way it fails for users (nothing is mocked).

#: Bytes of one filler row: a little under SQLite's default page size.
FILLER_ROW = 4000


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[bool]:
    """
    Make a file or folder read-only for this process while the block runs;
    yields False (and changes nothing) where that is impossible.  Permission
    bits do not stop root, so as root the file is made immutable
    (``chattr +i``), which stops everyone.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield True
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def fill_store(path: Path, rows: int) -> int:
    """
    Make a WAL database at ``path`` with a ``filler`` table of ``rows`` rows
    of about a page each; return the database's page count.  ``free_store``
    deletes them, which gives their pages to SQLite's free list, as deleting
    files gives a full disk space back: a scheduler limited to a page count
    (``TASKMESH_TESTING_SQLITE_MAX_PAGES``) can then commit again.
    """
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
        db.executemany("INSERT INTO filler VALUES (zeroblob(?))", [(FILLER_ROW,)] * rows)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(db.execute("PRAGMA page_count").fetchone()[0])
    finally:
        db.close()


def free_store(path: Path) -> None:
    """Delete the filler's rows from another connection, as another process would."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=TIMEOUT)
    try:
        db.execute("DELETE FROM filler")
    finally:
        db.close()


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the store's write lock from another connection (``BEGIN IMMEDIATE``) while the block runs."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=TIMEOUT)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("ROLLBACK")
    finally:
        db.close()
