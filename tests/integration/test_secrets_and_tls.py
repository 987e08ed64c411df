"""
Secrets and TLS with real processes: the quick start as written creates the
secret and just works; wrong secrets are refused on both sides with one clear
line (a worker backs off, a command exits 5); role secrets keep workers and
clients apart; TLS end to end with certificates made in the test, through
options and through endpoint strings, and mutual TLS refuses a peer without
a certificate.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import HELLO, HELLO_DIGEST, Mesh, wait_until

from taskmesh.net.credentials import default_secret_path
from taskmesh.net.tls import make_test_certificates

pytestmark = pytest.mark.integration


def secret_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_the_mission_commands_as_written_create_the_secret_and_work(mesh: Mesh) -> None:
    default = default_secret_path()
    default.unlink()  # a user's first run: no secret anywhere yet
    mesh.scheduler()
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    mesh.workers("w1")
    submit = mesh.run_submit(HELLO)
    assert (submit.popen.returncode, submit.stdout, submit.stderr) == (0, HELLO_DIGEST + "\n", "")


def test_a_worker_with_the_wrong_secret_is_refused_and_backs_off(mesh: Mesh) -> None:
    scheduler = mesh.scheduler()
    wrong = secret_file(mesh.folder, "wrong", "not the scheduler's secret at all")
    worker = mesh.worker("intruder", options=("--secret-file", str(wrong)))
    worker.wait_for(r"authentication failed: .*did not prove it knows our secret.*trying again in 1 s")
    worker.wait_for(r"trying again in 2 s")
    assert worker.count(r"trying again in \d+ s") < 4  # backing off, not hammering
    scheduler.wait_for(r"reported error 10: .*did not prove")
    assert "joined" not in scheduler.log
    submit = mesh.submit("--no-wait", HELLO)
    submit.wait(30)
    assert scheduler.count("joined") == 0


def test_a_command_with_the_wrong_secret_exits_5_with_one_line(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1")
    wrong = secret_file(mesh.folder, "wrong", "not the scheduler's secret at all")
    submit = mesh.run_submit("--secret-file", str(wrong), HELLO)
    assert submit.popen.returncode == 5, submit.describe()
    assert submit.stdout == "" and submit.stderr.count("\n") == 1
    assert "did not prove it knows our secret" in submit.stderr


def test_role_secrets_keep_workers_and_clients_apart(mesh: Mesh) -> None:
    workers = secret_file(mesh.folder, "workers", "the secret of the workers here")
    clients = secret_file(mesh.folder, "clients", "the secret of the clients here")
    scheduler = mesh.scheduler(
        "scheduler", "--worker-secret-file", str(workers), "--client-secret-file", str(clients)
    )
    as_worker = mesh.worker("wrong-role", options=("--secret-file", str(clients)))
    as_worker.wait_for(r"authentication failed")
    mesh.worker("w1", options=("--secret-file", str(workers)))
    mesh.wait_joined("w1")
    refused = mesh.run_submit("--secret-file", str(workers), HELLO)
    assert refused.popen.returncode == 5, refused.describe()
    done = mesh.run_submit("--secret-file", str(clients), HELLO)
    assert done.stdout == HELLO_DIGEST + "\n", done.describe()
    assert "wrong-role" not in scheduler.log.split("joined")[0]


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    return make_test_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"])


def test_tls_end_to_end_with_options(mesh: Mesh, certificates: dict[str, Path]) -> None:
    tls = ("--tls-cert", str(certificates["scheduler"]), "--tls-key", str(certificates["scheduler-key"]))
    mesh.scheduler("scheduler", *tls)
    mesh.worker("w1", options=("--tls-ca", str(certificates["ca"])))
    mesh.wait_joined("w1")
    done = mesh.run_submit("--tls-ca", str(certificates["ca"]), HELLO)
    assert done.stdout == HELLO_DIGEST + "\n", done.describe()
    plain = mesh.run_submit("--connect-timeout", "2", HELLO)
    assert plain.popen.returncode != 0, plain.describe()


def test_tls_end_to_end_with_endpoint_strings(mesh: Mesh, certificates: dict[str, Path]) -> None:
    listen = (
        f"ssl:{mesh.port}:interface=127.0.0.1:privateKey={certificates['scheduler-key']}"
        f":certKey={certificates['scheduler']}"
    )
    mesh.scheduler("scheduler", "--listen", listen)
    roots = certificates["ca"].parent / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(certificates["ca"].read_bytes())
    address = f"tls:host=127.0.0.1:port={mesh.port}:trustRoots={roots}"
    mesh.twistd("w1", "taskmesh-worker", "--connect", address, "--name", "w1")
    mesh.wait_joined("w1")
    done = mesh.run_submit(HELLO, address=address)
    assert done.stdout == HELLO_DIGEST + "\n", done.describe()


def test_mutual_tls_refuses_a_peer_without_a_certificate(mesh: Mesh, certificates: dict[str, Path]) -> None:
    mesh.scheduler(
        "scheduler",
        "--tls-cert",
        str(certificates["scheduler"]),
        "--tls-key",
        str(certificates["scheduler-key"]),
        "--tls-client-ca",
        str(certificates["ca"]),
    )
    mine = ("--tls-cert", str(certificates["client"]), "--tls-key", str(certificates["client-key"]))
    mesh.worker("w1", options=("--tls-ca", str(certificates["ca"]), *mine))
    mesh.wait_joined("w1")
    without = mesh.run_submit("--tls-ca", str(certificates["ca"]), "--connect-timeout", "3", HELLO)
    assert without.popen.returncode == 3, without.describe()
    done = mesh.run_submit("--tls-ca", str(certificates["ca"]), *mine, HELLO)
    assert done.stdout == HELLO_DIGEST + "\n", done.describe()


def test_certificates_are_made_with_private_keys(certificates: dict[str, Path]) -> None:
    for role in ("ca-key", "scheduler-key", "client-key"):
        assert stat.S_IMODE(os.stat(certificates[role]).st_mode) == 0o600
    wait_until(lambda: all(path.exists() for path in certificates.values()), 1, "the files")
