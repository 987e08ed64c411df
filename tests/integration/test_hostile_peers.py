"""
Hostile peers with raw sockets against a real scheduler: connections that
never say hello, a frame trickled byte by byte, many unfinished frames of
16 MiB (the scheduler's RSS read from /proc), and a client that never reads.
Each costs only its own connection, and a user is served throughout.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT, Mesh, wait_until

from taskmesh import wire
from taskmesh.testing import raw_handshake, user_secret

pytestmark = pytest.mark.integration


def frame(message: wire.Message) -> bytes:
    body = wire.encode(message)
    return struct.pack(">I", len(body)) + body


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextmanager
def raw(mesh: Mesh, receive_buffer: int | None = None) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", mesh.port))
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the scheduler sends until it closes (bounded)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def errors_in(data: bytes) -> list[wire.Error]:
    found = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + length:
            break
        message = wire.decode(data[4 : 4 + length])
        if isinstance(message, wire.Error):
            found.append(message)
        data = data[4 + length :]
    return found


def still_serves(mesh: Mesh) -> None:
    done = mesh.run_submit(HELLO)
    assert done.popen.returncode == 0 and done.stdout.strip() == HELLO_DIGEST, done.describe()


def test_connections_that_never_say_hello_are_closed_after_the_deadline(mesh: Mesh) -> None:
    mesh.scheduler("scheduler", "--handshake-timeout", "1")
    mesh.workers("w1")
    with ExitStack() as stack:
        idle = [stack.enter_context(raw(mesh)) for _ in range(200)]
        started = time.monotonic()
        still_serves(mesh)
        for sock in idle:
            (error,) = errors_in(read_until_closed(sock))
            assert error.code == wire.ERROR_TIMEOUT and "no handshake within 1 s" in error.message
        assert time.monotonic() - started < TIMEOUT
    still_serves(mesh)


def test_a_trickled_frame_is_cut_off_and_others_are_served_meanwhile(mesh: Mesh) -> None:
    mesh.scheduler("scheduler", "--frame-timeout", "2")
    mesh.workers("w1")
    with raw(mesh) as sock:
        assert isinstance(
            raw_handshake(sock, wire.Hello(role=wire.ROLE_CLIENT, name="trickle"), user_secret()),
            wire.Welcome,
        )
        sock.sendall(struct.pack(">I", 1 << 20))
        deadline = time.monotonic() + TIMEOUT
        closed = False
        served = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"\x10")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if not served:
                still_serves(mesh)
                served = True
            sock.settimeout(0.02)
            try:
                if sock.recv(65536, socket.MSG_PEEK) == b"":
                    closed = True
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        assert closed, "the scheduler kept a frame trickled for longer than its --frame-timeout"
    log = mesh.scheduler_process.log  # type: ignore[union-attr]
    assert re.search(r"a frame took longer than 2 s to arrive", log), log


def test_unfinished_frames_are_bounded_by_the_budget(mesh: Mesh) -> None:
    budget_mib = 64
    scheduler = mesh.scheduler("scheduler", "--frame-budget", str(budget_mib << 20), "--frame-timeout", "60")
    mesh.workers("w1")
    before = rss_kib(scheduler.pid)
    part = b"\x10" * (15 << 20)  # 15 MiB of a 16 MiB frame
    refused = held = 0
    with ExitStack() as stack:
        for _ in range(20):
            sock = stack.enter_context(raw(mesh))
            raw_handshake(sock, wire.Hello(role=wire.ROLE_CLIENT, name="hoarder"), user_secret())
            try:
                sock.sendall(struct.pack(">I", 16 << 20) + part)
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(1.0)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                held += 1
                continue
            except ConnectionResetError:
                answer = b""
            refused += 1
            for error in errors_in(answer):
                assert error.code == wire.ERROR_BUSY and "unfinished frames" in error.message
        grown_mib = (rss_kib(scheduler.pid) - before) / 1024
        assert held <= budget_mib // 16 and refused >= 20 - budget_mib // 16
        assert grown_mib < budget_mib + 50, f"RSS grew by {grown_mib:.0f} MiB"
        still_serves(mesh)


def test_a_client_that_never_reads_is_dropped_and_the_scheduler_stays_bounded(mesh: Mesh) -> None:
    """400 tasks with 60 KB results (24 MB) for a client that reads none of them."""
    scheduler = mesh.scheduler(
        "scheduler", "--max-frame", "1048576", "--max-payload", "65536", "--max-unsent", "4194304"
    )
    mesh.workers(
        "w1", options=("--handler", "big_results:Repeat"), extra_path=Path(__file__).resolve().parent
    )
    assert mesh.run_submit("--type", "repeat", "60000").popen.returncode == 0  # warm up
    before = rss_kib(scheduler.pid)
    with raw(mesh, receive_buffer=4096) as sock:
        raw_handshake(sock, wire.Hello(role=wire.ROLE_CLIENT, name="deaf"), user_secret())
        for start in range(0, 400, 100):
            sock.sendall(
                frame(
                    wire.Submit(
                        [(i, "repeat", b"60000", wire.DEFAULT_OPTIONS) for i in range(start, start + 100)]
                    )
                )
            )
        scheduler.wait_for(r"dropping connection from \S+: it does not read; over 4194304 bytes unsent")
        grown_mib = (rss_kib(scheduler.pid) - before) / 1024
    assert grown_mib < 50, f"RSS grew by {grown_mib:.0f} MiB"
    still_serves(mesh)


def test_asking_again_and_again_for_a_large_result_costs_one_answer_a_turn(mesh: Mesh) -> None:
    """2,000 queries for one 60 KB result from a client that reads none: a few answers, no growth."""
    scheduler = mesh.scheduler("scheduler", "--max-frame", "1048576", "--max-payload", "65536")
    mesh.workers(
        "w1", options=("--handler", "big_results:Repeat"), extra_path=Path(__file__).resolve().parent
    )
    done = mesh.run_submit("--type", "repeat", "--no-wait", "60000")
    task_id = int(done.stdout)
    assert mesh.run_submit("--type", "repeat", "60000").popen.returncode == 0
    before = rss_kib(scheduler.pid)
    with raw(mesh, receive_buffer=4096) as sock:
        raw_handshake(sock, wire.Hello(role=wire.ROLE_CLIENT, name="asker"), user_secret())
        sock.sendall(b"".join(frame(wire.Query([(task_id, True)] * 200)) for _ in range(10)))
        still_serves(mesh)
        grown_mib = (rss_kib(scheduler.pid) - before) / 1024
    assert grown_mib < 50, f"RSS grew by {grown_mib:.0f} MiB"


def test_no_traceback_in_the_logs_after_all_that(mesh: Mesh) -> None:
    mesh.scheduler("scheduler", "--handshake-timeout", "1")
    mesh.workers("w1")
    with ExitStack() as stack:
        for body in (b"", b"\x7f", b"\x14\x00\x00\x00\x01" + b"\xff" * 9):
            sock = stack.enter_context(raw(mesh))
            raw_handshake(sock, wire.Hello(role=wire.ROLE_CLIENT, name="odd"), user_secret())
            sock.sendall(struct.pack(">I", len(body)) + body)
            read_until_closed(sock)
    still_serves(mesh)
    wait_until(lambda: "Traceback" not in mesh.scheduler_process.log, 1, "a clean log")  # type: ignore[union-attr]
