"""
A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` into a
temporary folder, one ``postgres`` server on a free loopback port (and a unix
socket in that folder), stopped by pid and removed at the end.

Real durability, not a fast imitation: the server runs with ``fsync=on`` and
``synchronous_commit=on``, so what the store's tests see committed is what
survives a server crash (``stop("immediate")`` is one: the server stops at
once, without a checkpoint, and replays its log at the next ``start()``).

PostgreSQL refuses to run as root, so when this process is root the cluster
belongs to the ``postgres`` system user (it exists once Debian's
``postgresql`` package is installed) and the server runs as that user.
Clients connect over TCP with ``trust`` authentication, as the superuser
``taskmesh``: a cluster nobody else knows the port of, gone after the test.

    with PostgresCluster() as cluster:
        url = cluster.create_database("mine")   # postgresql://taskmesh@127.0.0.1:PORT/mine
        cluster.stop("immediate")               # the database "crashes" ...
        cluster.start()                         # ... and comes back on the same port

``missing_reason()`` says why a cluster cannot be made here (no PostgreSQL
binaries), for tests to skip with.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from taskmesh.testing import STOP_TIMEOUT, TIMEOUT, MeshError, free_port

#: Where Debian puts each major version's server binaries (not on PATH there).
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
#: The cluster's superuser (trust authentication: the cluster is private to one test run).
SUPERUSER = "taskmesh"
#: Settings beside initdb's defaults: durable commits, small enough for a shared 2-core machine.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "32MB",
    "max_connections": "60",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "log_connections": "off",
}
#: How a server is stopped: the signal its postmaster is sent ("Shutting Down the Server" in its docs).
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def find_binaries() -> Path | None:
    """The folder with ``initdb`` and ``postgres``: PATH first, else Debian's newest version."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        folder = Path(os.path.realpath(initdb)).parent
        if (folder / "postgres").exists():
            return folder
    found = sorted(
        (Path(p) for p in glob.glob(DEBIAN_BINARIES) if (Path(p) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def missing_reason() -> str | None:
    """Why no cluster can be made on this machine, or None when one can."""
    if find_binaries() is None:
        return (
            "PostgreSQL is not installed (no initdb on PATH or in "
            f"{DEBIAN_BINARIES}; on Debian: apt-get install postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run a PostgreSQL server as"
    return None


class PostgresCluster:
    """One throwaway cluster: made at ``start()``, gone after ``destroy()`` (or the ``with`` block)."""

    def __init__(self, binaries: Path | None = None, port: int | None = None) -> None:
        found = binaries or find_binaries()
        if found is None:
            raise MeshError(missing_reason() or "PostgreSQL is not installed")
        self.binaries = found
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="taskmesh-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "server.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            # PostgreSQL never runs as root: the cluster is the postgres user's.
            self._user = "postgres"
            account = pwd.getpwnam(self._user)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._server: subprocess.Popen[bytes] | None = None
        self._initialised = False
        self._databases = 0

    # -- life ----------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.destroy()

    def _run(self, *argv: str, timeout: float = TIMEOUT) -> None:
        """A PostgreSQL tool, as the cluster's owner; its output in the failure if it fails."""
        done = subprocess.run(
            [str(self.binaries / argv[0]), *argv[1:]],
            cwd=self.folder,
            env=self._env(),
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            raise MeshError(f"{argv[0]} failed ({done.returncode}):\n{output}")

    def _env(self) -> dict[str, str]:
        # No PG* variable of the caller's may point the tools elsewhere.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def start(self, timeout: float = TIMEOUT) -> None:
        """Make the cluster (the first time) and start its server; return once it accepts connections."""
        if self._server is not None and self._server.poll() is None:
            return
        if not self._initialised:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",  # initdb's own files: a throwaway cluster; the server itself fsyncs
                "--no-instructions",
                timeout=120,
            )
            self._initialised = True
        settings = [f"-c{name}={value}" for name, value in SETTINGS.items()]
        log = open(self.log_path, "ab")
        try:
            self._server = subprocess.Popen(
                [
                    str(self.binaries / "postgres"),
                    "-D",
                    str(self.data),
                    f"-cport={self.port}",
                    f"-cunix_socket_directories={self.folder}",
                    *settings,
                ],
                cwd=self.folder,
                env=self._env(),
                user=self._user,
                group=self._user,
                extra_groups=[] if self._user else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            server = self._server
            assert server is not None
            if server.poll() is not None:
                self._server = None
                raise MeshError(f"the PostgreSQL server exited ({server.returncode}):\n{self.log_tail()}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2, autocommit=True).close()
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise MeshError(
                        f"the PostgreSQL server did not accept connections within {timeout:g} s ({e}):\n"
                        + self.log_tail()
                    ) from None
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        """The server's (postmaster's) pid while it runs."""
        server = self._server
        return server.pid if server is not None and server.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT) -> None:
        """
        Stop the server by pid: ``fast`` (roll back sessions, checkpoint),
        ``immediate`` (at once, like a crash: the log is replayed at the
        next start) or ``smart`` (wait for sessions to end).  SIGKILL if it
        has not stopped within ``timeout`` seconds.
        """
        server = self._server
        if server is None:
            return
        self._server = None
        if server.poll() is None:  # never signal a pid that may have been reused
            os.kill(server.pid, STOP_SIGNALS[mode])
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(STOP_TIMEOUT)

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (as a crash, by default) and start it again on the same port."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server at once and remove the cluster's folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- use -----------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for a database of this cluster, over TCP on loopback."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (a made-up name when none is given); returns its URL."""
        import psycopg

        self._databases += 1
        if name is None:
            name = f"test_{self._databases}"
        name = re.sub(r"[^a-z0-9_]", "_", name.lower())[:50] + f"_{self._databases}"
        with psycopg.connect(self.url("postgres"), connect_timeout=5, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database``, whoever is still connected to it."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), connect_timeout=5, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_sessions(self, url: str) -> int:
        """End every session connected to this database (as an administrator would); return how many."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), connect_timeout=5, autocommit=True) as db:
            row = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
        return int(row[0]) if row else 0

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
