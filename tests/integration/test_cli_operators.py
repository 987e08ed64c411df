"""
The ``taskmesh`` command as an operator meets it (issue 16, "For operators"):
real processes, real signals, a real pipe closed early, a real busy port, a
real terminal (a pty), a real peer that does not speak taskmesh.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, TWISTD, Mesh, free_port, wait_until

import taskmesh.aio
from taskmesh.errors import NotTaskmesh
from taskmesh.testing import TASKMESH, child_env

HERE = Path(__file__).resolve().parent
#: Workers that run echo-lines and barrier (operator_tasks.py, in this folder).
OPERATOR_TASKS = dict(
    options=("--handler", "operator_tasks:EchoLines", "--tasks", "operator_tasks"), extra_path=HERE
)
TRACED = dict(options=("--handler", "traced_sleep:TracedSleep"), extra_path=HERE)


def one_line(stderr: str) -> str:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    assert stderr.startswith("taskmesh") and "Traceback" not in stderr, repr(stderr)
    return stderr


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts with its own pipes or terminal; each killed by pid afterwards."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def spawn(
    spawned: list[subprocess.Popen[bytes]], mesh: Mesh, *argv: str, **popen: object
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([TASKMESH, *argv], cwd=mesh.folder, env=child_env(), **popen)  # type: ignore[call-overload]
    spawned.append(process)
    return process


# -- 1: interrupted commands ------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_map_exits_128_plus_the_signal_and_leaves_no_complete_looking_output(
    mesh: Mesh, signum: int
) -> None:
    mesh.scheduler()
    (worker,) = mesh.workers("w1", concurrency=2, **TRACED)
    source = mesh.folder / "in.txt"
    source.write_text("0.05\n" * 2000)
    run = mesh.command(
        "map", "--connect", mesh.address, "--type", "traced-sleep", "-o", "out.txt", str(source)
    )
    partial = mesh.folder / "out.txt.partial"
    # Some results are in: the map is well under way (2,000 x 0.05 s on 2 slots: ~50 s).
    wait_until(lambda: partial.exists() and partial.stat().st_size > 0, TIMEOUT, "the first results")
    run.signal(signum)
    assert run.wait() == 128 + signum, run.describe()
    name = signal.Signals(signum).name
    line = one_line(run.stderr)
    assert "reconnecting" not in line
    found = re.fullmatch(
        rf"taskmesh: (interrupted|terminated) \({name}\): ([\d,]+) of 2,000 lines answered; the answers "
        r"of the first ([\d,]+) lines are in out\.txt\.partial; out\.txt was not written\n",
        line,
    )
    assert found, line
    answered = int(found[2].replace(",", ""))
    assert 0 < answered < 2000 and found[3] == found[2]
    assert not (mesh.folder / "out.txt").exists()  # nothing by the name of a complete output
    assert partial.read_text() == "slept 0.05\n" * answered  # what it says it wrote, and only that


@pytest.mark.integration
def test_ctrl_c_while_map_waits_for_its_input_exits_130(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """A map reading a pipe with nothing in it yet is blocked in a read: the signal must still end it."""
    mesh.scheduler()
    mesh.workers("w1")
    run = spawn(
        spawned,
        mesh,
        "map",
        "--connect",
        mesh.address,
        "-",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert run.stdin is not None
    run.stdin.write(b"one\ntwo\n")
    run.stdin.flush()  # and the pipe stays open: the map waits for more

    # Connected (the job is open) before the signal: wait until the scheduler lists the map.
    def job_open() -> bool:
        status = mesh.command("status", "--json", "--connect", mesh.address)
        status.wait()
        return bool(json.loads(status.stdout)["jobs"])

    wait_until(job_open, TIMEOUT, "the map's job")
    run.send_signal(signal.SIGINT)
    assert run.wait(TIMEOUT) == 130  # with its input still open: the blocked read was interrupted
    assert run.stderr is not None
    err = run.stderr.read()
    assert err.decode().startswith("taskmesh: interrupted (SIGINT): ") and err.count(b"\n") == 1, err
    assert b"Traceback" not in err


@pytest.mark.integration
def test_sigterm_while_submit_waits_exits_143_with_one_line(mesh: Mesh) -> None:
    mesh.scheduler()
    (worker,) = mesh.workers("w1", **TRACED)
    submit = mesh.submit("--type", "traced-sleep", "60")
    worker.wait_for("traced-sleep 60 started")
    submit.signal(signal.SIGTERM)
    assert submit.wait() == 143, submit.describe()
    assert one_line(submit.stderr) == "taskmesh: terminated (SIGTERM)\n"
    assert submit.stdout == ""


@pytest.mark.integration
def test_a_map_whose_stdout_is_closed_ends_quietly_with_141(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """``taskmesh map 100k.txt | head -2``, with a real pipe whose reader leaves."""
    mesh.scheduler()
    mesh.workers("w1", concurrency=2)
    source = mesh.folder / "100k.txt"
    source.write_text("".join(f"{i}\n" for i in range(1, 100_001)))
    run = spawn(
        spawned,
        mesh,
        "map",
        "--connect",
        mesh.address,
        str(source),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert run.stdout is not None and run.stderr is not None
    first = [run.stdout.readline(), run.stdout.readline()]
    run.stdout.close()  # what head does after two lines
    assert first == [hashlib.sha256(b"%d" % i).hexdigest().encode() + b"\n" for i in (1, 2)]
    assert run.wait(TIMEOUT) == 141
    assert run.stderr.read() == b""  # no traceback, no "reconnecting", no bar


# -- 3: one line for every error, nothing left behind ------------------------


@pytest.mark.integration
def test_an_unknown_host_is_one_line_and_exit_3(mesh: Mesh) -> None:
    submit = mesh.run_submit("hi", address="nonsense.invalid:9001")
    assert submit.popen.returncode == 3, submit.describe()
    assert (
        one_line(submit.stderr)
        == "taskmesh: cannot reach the scheduler at nonsense.invalid:9001: no such host\n"
    )


@pytest.mark.integration
def test_a_scheduler_whose_port_is_taken_says_so_in_one_line_and_creates_no_store(mesh: Mesh) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [
                TWISTD,
                "-n",
                "taskmesh-scheduler",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--web",
                "none",
            ],
            cwd=mesh.folder,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert run.returncode == 1, run
    lines = [line for line in run.stdout.splitlines() if "taskmesh-scheduler" in line or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in run.stdout + run.stderr, run
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in lines[0] and "already in use" in lines[0]
    assert not [name for name in os.listdir(mesh.folder) if name.startswith("taskmesh.sqlite")]


@pytest.mark.integration
def test_the_demo_names_the_variable_when_its_port_is_taken(tmp_path: Path) -> None:
    demo = HERE.parents[1] / "scripts" / "demo"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [str(demo)],
            env={**child_env(), "TASKMESH_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert f"port {port} is in use" in run.stderr and "TASKMESH_PORT" in run.stderr, run.stderr


# -- 4: submit's payload and options ------------------------------------------


@pytest.mark.integration
def test_submit_takes_any_payload_from_a_file_or_stdin_and_options_anywhere(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    mesh.scheduler()
    mesh.workers("w1")
    payload = os.urandom(200 * 1024)  # over the 128 KiB an argument may hold, and binary
    (mesh.folder / "payload.bin").write_bytes(payload)
    from_file = mesh.run_submit("--file", "payload.bin")
    assert from_file.popen.returncode == 0, from_file.describe()
    assert from_file.stdout == hashlib.sha256(payload).hexdigest() + "\n"
    from_stdin = spawn(
        spawned, mesh, "submit", "-", "--connect", mesh.address, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    out, _ = from_stdin.communicate(payload, timeout=TIMEOUT)
    assert from_stdin.returncode == 0 and out.decode() == hashlib.sha256(payload).hexdigest() + "\n"
    later = mesh.run_submit("hi", "--no-wait")  # an option after TEXT
    assert later.popen.returncode == 0 and later.stdout.strip().isdigit(), later.describe()
    for argv in (["submit", "-h"], ["map", "-h"], ["--help"]):
        shown = subprocess.run(
            [TASKMESH, *argv], capture_output=True, text=True, timeout=TIMEOUT, env=child_env()
        )
        assert shown.returncode == 0 and "Exit status:" in shown.stdout and "141" in shown.stdout, shown
    version = subprocess.run(
        [TASKMESH, "submit", "--version"], capture_output=True, text=True, timeout=TIMEOUT, env=child_env()
    )
    assert version.stdout.startswith("taskmesh ") and "Twisted" not in version.stdout


# -- 5: map formats -------------------------------------------------------------


@pytest.mark.integration
def test_map_output_keeps_one_line_per_input_line_in_both_formats(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", **OPERATOR_TASKS)
    source = mesh.folder / "in.txt"
    lines = ["plain", "two|lines", "fail", "<empty>", "back\\slash"]
    source.write_text("\n".join(lines + ["fail"] * 25) + "\n")
    text = mesh.command(
        "map", "--connect", mesh.address, "--type", "echo-lines", "--failures", "f.txt", str(source)
    )
    assert text.wait() == 1, text.describe()
    assert text.stdout.split("\n")[:5] == ["plain", "two\\nlines", "\\!", "", "back\\\\slash"]
    assert len(text.stdout.split("\n")) == 30 + 1
    assert "... and 6 more (all of them are in f.txt)" in text.stderr
    failures = (mesh.folder / "f.txt").read_text().splitlines()
    assert len(failures) == 26 and failures[0] == "line 3: ValueError: asked to fail"
    assert failures[-1] == "line 30: ValueError: asked to fail"
    jsonl = mesh.command(
        "map",
        "--connect",
        mesh.address,
        "--type",
        "echo-lines",
        "--format",
        "jsonl",
        str(source),
        name="jsonl",
    )
    assert jsonl.wait() == 1, jsonl.describe()
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(records) == 30
    assert records[:5] == [
        {"index": 0, "ok": True, "result": "plain"},
        {"index": 1, "ok": True, "result": "two\nlines"},
        {"index": 2, "ok": False, "reason": "ValueError: asked to fail"},
        {"index": 3, "ok": True, "result": ""},
        {"index": 4, "ok": True, "result": "back\\slash"},
    ]


# -- 6: slow tasks from a pipe ------------------------------------------------------


@pytest.mark.integration
def test_a_piped_map_of_slow_tasks_uses_every_slot(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """
    16 lines piped (the total unknown) to one 3-slot worker: each task waits
    until 3 of them have started, which only happens if they run side by
    side (in one 16-line chunk, run one after another, the first would wait
    out its bound and fail).
    """
    mesh.scheduler()
    mesh.workers("w1", concurrency=3, **OPERATOR_TASKS)
    folder = mesh.folder / "arrived"
    folder.mkdir()
    lines = b"".join(json.dumps([str(folder), 3]).encode() + b"\n" for _ in range(16))
    run = spawn(
        spawned,
        mesh,
        "map",
        "--connect",
        mesh.address,
        "--type",
        "barrier",
        "--json",
        "-",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = run.communicate(lines, timeout=90)
    assert run.returncode == 0, err
    assert out == b'"met"\n' * 16


# -- 7: the progress bar on a real terminal ----------------------------------------


def screen(data: str, columns: int) -> tuple[list[str], int]:
    """What a terminal of ``columns`` shows for ``data`` (\\r, \\n, erase-line), and the wraps."""
    lines = [""]
    column = 0
    wraps = 0
    i = 0
    while i < len(data):
        if data.startswith("\x1b[K", i):
            lines[-1] = lines[-1][:column]
            i += 3
            continue
        char = data[i]
        i += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("")
            column = 0
        else:
            if column >= columns:
                wraps += 1
                lines.append("")
                column = 0
            lines[-1] = lines[-1][:column] + char + lines[-1][column + 1 :]
            column += 1
    return lines, wraps


@pytest.mark.integration
def test_the_progress_bar_fits_the_terminal_and_never_mixes_with_results(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    mesh.scheduler()
    mesh.workers("w1", concurrency=2, **TRACED)
    count = 150
    source = mesh.folder / "in.txt"
    source.write_text("0.02\n" * count)
    controller, terminal = pty.openpty()
    columns = 60
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    run = spawn(
        spawned,
        mesh,
        "map",
        "--connect",
        mesh.address,
        "--type",
        "traced-sleep",
        str(source),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert run.wait(90) == 0
    reader.join(TIMEOUT)
    os.close(controller)
    output = b"".join(received).decode()
    assert output.count("\x1b[K") > 2, "the bar was drawn while the map ran"
    shown, wraps = screen(output, columns)
    assert wraps == 0, output
    results = [line for line in shown if line]
    assert results[:-1] == ["slept 0.02"] * count, shown  # no bar glued to a result
    assert results[-1].startswith(f"{count:,}/{count:,}") and "0 failed" in results[-1]


# -- 8: a peer that does not speak taskmesh -------------------------------------


class TextServer:
    """A TCP server (in this process) that greets each connection with a text line, as SSH or SMTP do."""

    def __init__(self, greeting: bytes) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.port = self.socket.getsockname()[1]
        self.greeting = greeting
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.sendall(self.greeting)
                connection.settimeout(5)
                try:
                    while connection.recv(4096):
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        self.socket.close()


@pytest.mark.integration
def test_a_peer_that_is_not_taskmesh_is_named_at_once_on_every_side(mesh: Mesh) -> None:
    server = TextServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        submit = mesh.run_submit("hi", "--connect-timeout", "25", address=f"127.0.0.1:{server.port}")
        assert submit.popen.returncode == 3, submit.describe()
        line = one_line(submit.stderr)
        assert line == (
            f"taskmesh: 127.0.0.1:{server.port} is not a taskmesh scheduler: it sent "
            "'HTTP/1.1 400 Bad Request' (a web server's answer)\n"
        )
        # The asyncio client shares the check (it has no Twisted protocol).
        with pytest.raises(NotTaskmesh, match="is not a taskmesh scheduler: it sent 'HTTP/1.1 400"):
            asyncio.run(taskmesh.aio.connect(f"127.0.0.1:{server.port}", timeout=25))
        worker = mesh.twistd("worker", "taskmesh-worker", "--connect", f"127.0.0.1:{server.port}")
        worker.wait_for(rf"127\.0\.0\.1:{server.port} is not a taskmesh scheduler: it sent 'HTTP/1\.1 400")
        # It backs off as from a refused connection, saying why: the attempts count up.
        worker.wait_for(
            rf"cannot reach the scheduler at 127\.0\.0\.1:{server.port} \(lost the connection: "
            r".* is not a taskmesh scheduler: .*\); trying again in \d+\.\d s \(attempt 3\)"
        )
    finally:
        server.close()
    # And the scheduler, asked by a browser (an HTTP request on its taskmesh port):
    scheduler = mesh.scheduler()
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://{mesh.address}/", timeout=TIMEOUT)
    assert answer.value.code == 400 and b"taskmesh protocol, not HTTP" in answer.value.read()
    (logged,) = scheduler.wait_for(r"is not a taskmesh peer: it sent 'GET / HTTP/1\.1'")
    assert "the dashboard is on the scheduler's --web address" in logged


@pytest.mark.integration
def test_a_silent_web_server_is_questioned_not_waited_on_forever(
    mesh: Mesh, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """
    A server that accepts and says nothing, as a web server does to our
    binary hello (it waits for the end of a request line): the client says
    what it may be when its connect timeout is up, the worker when the
    handshake's is.  (Not ``python -m http.server`` itself: the hello's
    random nonce holds a newline byte about one time in eight, and then it
    answers 400, which the text-greeting test covers.)
    """
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SILENT_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spawned.append(server)  # type: ignore[arg-type]
    wait_until(lambda: port_open(port), TIMEOUT, "the silent server")
    submit = mesh.run_submit("hi", "--connect-timeout", "2", address=f"127.0.0.1:{port}")
    assert submit.popen.returncode == 3, submit.describe()
    assert "did not answer within 2 seconds (is it a taskmesh scheduler's address?" in one_line(submit.stderr)
    worker = mesh.twistd("worker", "taskmesh-worker", "--connect", f"127.0.0.1:{port}")
    line = worker.wait_for(r"no answer to our hello within 10 s")[0]
    assert f"is 127.0.0.1:{port} a taskmesh scheduler?" in line


#: Accepts connections, reads what comes and never answers (argv[1]: the port).
SILENT_SERVER = """
import socket, sys, threading
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def drain(connection):
    while connection.recv(65536):
        pass
while True:
    connection, _ = listener.accept()
    threading.Thread(target=drain, args=(connection,), daemon=True).start()
"""


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
