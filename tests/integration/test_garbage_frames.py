"""
300 bad frames over many connections: each costs only its own connection,
bad lengths are answered with an Error frame before the close, and the
scheduler serves users as before.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import HELLO, HELLO_DIGEST, TIMEOUT, Mesh, wait_until

from taskmesh import wire
from taskmesh.testing import raw_handshake, user_secret

FRAMES = 300
SEED = 300  # the same frames every run; change it to explore
#: The first byte of a frame's body names its kind (wire.KIND_*).
KNOWN_KINDS = sorted(value for name, value in vars(wire).items() if name.startswith("KIND_"))
UNKNOWN_KINDS = [kind for kind in range(256) if kind not in KNOWN_KINDS]
#: Length prefixes far over the scheduler's frame limit (16 MiB by default).
OVERSIZED = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff\xff\xff\xff", b"\x7f\x00\x00\x00abc"]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def hello(role: int, name: str) -> wire.Hello:
    return wire.Hello(role=role, name=name, slots=1, task_types=("sha256",))


# Valid bodies of the shapes wire.py describes: sent as they are (mostly out
# of place: before a hello, or from the wrong role), or mutated.
VALID_BODIES = [
    wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="fuzz-v")),
    wire.encode(wire.Hello(role=wire.ROLE_WORKER, name="fuzz-v", slots=2, task_types=("sha256", "x"))),
    wire.encode(wire.Hello(role=wire.ROLE_WORKER, name="fuzz-v", slots=0, task_types=("sha256",))),
    wire.encode(wire.Hello(role=7, name="fuzz-v")),
    wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="fuzz-v", version=99)),
    wire.encode(wire.Welcome(name="fuzz-v", max_frame=100, max_payload=10)),
    wire.encode(wire.Error(wire.ERROR_MALFORMED, "nope")),
    wire.encode(wire.Error(wire.ERROR_INTERNAL, "a longer complaint, with some unicode: é€😀")),
    struct.pack(">BIIB", 0x10, 1, 7, 6) + b"sha256" + struct.pack(">I", 2) + b"hi",  # submit
    struct.pack(">BIQBI", 0x13, 1, 1, 0, 2) + b"ok",  # results
    struct.pack(">BIQB", 0x20, 1, 1, 6) + b"sha256" + struct.pack(">I", 1) + b"z",  # assign
    struct.pack(">BIIQB", 0x11, 1, 1, 1, 0),  # accepted
]


def garbage(rng: random.Random) -> tuple[str, bytes]:
    """One bad frame, and what kind of bad it is."""
    choice = rng.randrange(7)
    if choice == 0:
        return "random", frame(rng.randbytes(rng.randrange(0, 300)))
    if choice == 1:
        return "unknown-kind", frame(bytes([rng.choice(UNKNOWN_KINDS)]) + rng.randbytes(rng.randrange(0, 60)))
    if choice == 2:
        return "known-kind", frame(bytes([rng.choice(KNOWN_KINDS)]) + rng.randbytes(rng.randrange(0, 60)))
    if choice == 3:
        body = bytearray(rng.choice(VALID_BODIES))
        if rng.random() < 0.5:
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        else:
            body = body[: rng.randrange(len(body))] if rng.random() < 0.5 else body + rng.randbytes(3)
        return "mutated", frame(bytes(body))
    if choice == 4:
        body = rng.randbytes(rng.randrange(1, 100))
        return "truncated", struct.pack(">I", len(body) + rng.randrange(1, 50)) + body
    if choice == 5:
        return "oversized", rng.choice(OVERSIZED)
    return "valid", frame(rng.choice(VALID_BODIES))


def conversations(rng: random.Random) -> list[tuple[str, wire.Hello | None, bytes, int]]:
    """(what, a hello for a real handshake first or None, the garbage, its frames): 300 frames in all."""
    plans = []
    sent = 0
    while sent < FRAMES:
        prelude: wire.Hello | None = None
        what = ""
        if rng.random() < 0.3:  # a valid hello first, then garbage
            role = rng.choice([wire.ROLE_CLIENT, wire.ROLE_WORKER])
            prelude, what = hello(role, f"fuzz-{len(plans)}"), f"{wire.ROLE_NAMES[role]}-hello+"
        burst = [garbage(rng) for _ in range(min(rng.choice([1, 1, 1, 2, 3]), FRAMES - sent))]
        # Nothing can follow a truncated or oversized frame: it would be read as its rest.
        for i, (kind, _) in enumerate(burst):
            if kind in ("truncated", "oversized"):
                burst = burst[: i + 1]
                break
        plans.append((what + burst[0][0], prelude, b"".join(data for _, data in burst), len(burst)))
        sent += len(burst)
    return plans


def converse(port: int, prelude: wire.Hello | None, garbage: bytes, secret: bytes) -> bytes:
    """
    Go through the real handshake with the prelude's hello, if any, then send
    the garbage, close our side and read what the scheduler says until it
    closes too.  (The welcome is read first because twistd takes our close as
    the end of the connection, dropping answers it has not written yet.)
    """
    deadline = time.monotonic() + TIMEOUT
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        received = b""
        if prelude is not None:
            received = frame(wire.encode(raw_handshake(s, prelude, secret)))
        try:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it already closed on an earlier frame
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
        pytest.fail(f"the scheduler neither answered nor closed within {TIMEOUT:g} s; got {received!r}")


def messages(data: bytes) -> list[wire.Message]:
    """Every frame the scheduler sent must decode."""
    found = []
    while data:
        assert len(data) >= 4, f"a partial length prefix: {data!r}"
        (length,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + length, f"a partial frame: {data!r}"
        found.append(wire.decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return found


@pytest.mark.integration
def test_garbage_costs_only_its_own_connection(mesh: Mesh) -> None:
    scheduler = mesh.scheduler()
    mesh.workers("w1")
    plans = conversations(random.Random(SEED))
    assert sum(count for *_, count in plans) == FRAMES

    with ThreadPoolExecutor(8) as pool:  # several connections at a time
        secret = user_secret()
        received = pool.map(lambda plan: converse(mesh.port, plan[1], plan[2], secret), plans)
        answers = []
        for plan, data in zip(plans, received):
            if data.startswith(b"HTTP/1.0 400 Bad Request\r\n"):
                # An HTTP request as a connection's very first bytes is told
                # in HTTP that this is not a web server (docs/protocol.md).
                assert plan[1] is None and plan[2].startswith(b"GET "), plan
                assert b"taskmesh protocol, not HTTP" in data
                continue
            answers.append((plan[0], messages(data)))

    for what, answer in answers:
        errors = [m for m in answer if isinstance(m, wire.Error)]
        assert all(e.code != wire.ERROR_INTERNAL for e in errors), (what, errors)
        if what.endswith("oversized"):
            # Told why before the close, not silently dropped.
            assert errors and answer[-1] is errors[-1], (what, answer)
            assert errors[-1].code == wire.ERROR_FRAME_TOO_LARGE, (what, answer)
        if what.endswith("unknown-kind"):
            assert errors and errors[-1].code == wire.ERROR_MALFORMED, (what, answer)
        if "hello" in what:
            assert isinstance(answer[0], wire.Welcome), (what, answer)
    kinds = {what.split("+")[-1] for what, _ in answers}
    assert kinds == {"random", "unknown-kind", "known-kind", "mutated", "truncated", "oversized", "valid"}
    assert sum("hello" in what for what, _ in answers) > 10

    # The fake workers are all gone before a real task is submitted.
    joined = len(re.findall(r"worker fuzz-[^@]*@\S+ joined", scheduler.log))
    assert joined > 0
    wait_until(
        lambda: len(re.findall(r"worker fuzz-[^@]*@\S+ left", scheduler.log)) == joined,
        timeout=TIMEOUT,
        what="the scheduler to drop every fake worker",
    )
    submit = mesh.run_submit(HELLO)
    assert (submit.popen.returncode, submit.stdout) == (0, HELLO_DIGEST + "\n"), submit.describe()
    assert scheduler.running()
    assert re.search(r"worker w1@\S+ left", scheduler.log) is None
    for sign_of_a_bug in ("Traceback", "Unhandled", "bug while handling"):
        assert sign_of_a_bug not in scheduler.log, scheduler.describe()
