"""
Hostile peers against a real scheduler, measured (a benchmark, not a test).

1. Fuzz: ``--frames`` fuzzed frames (valid messages of every kind, mutated:
   bytes flipped, cut, garbage appended, the kind changed), sent over many
   short connections, some after a client hello and some after a worker hello.
2. Concurrency: ``--clients`` clients at once, each submitting ``--tasks``
   tasks one after another, with the round trip of every task timed.

It prints whether the scheduler stayed up, how many tracebacks it logged,
its RSS before and after, and the latency percentiles, e.g.

    .venv/bin/python bench/hostile.py --frames 100000 --clients 200 --tasks 50
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

try:
    from twisted.internet import defer

    from taskmesh import Client, wire
    from taskmesh.testing import Mesh
except ImportError as e:
    sys.exit(f"hostile: {e}; run this with the Python that has taskmesh installed (.venv/bin/python)")


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


SAMPLES = [
    wire.Submit(
        [(1, "sha256", b"x", wire.DEFAULT_OPTIONS), (2, "sleep", b"0", wire.TaskOptions(priority=3))]
    ),
    wire.Results([(1, wire.STATUS_OK, b"d"), (2**63, wire.STATUS_FAILED, b"e")]),
    wire.Query([(1, True), (2, False)]),
    wire.Cancel([1, 2, 3]),
    wire.Assign([(1, "sha256", b"x")]),
    wire.StatusRequest(),
    wire.Heartbeat(),
    wire.JobSubmit(1, "sha256", 0, 0, 10),
    wire.JobItems(1, 0, [b"a", b"b"]),
    wire.JobEnd(1, 2),
    wire.ChunkResults([(1, 0, [(wire.STATUS_OK, b"a")])]),
    wire.AssignChunks([(1, "sha256", [b"a"])]),
    wire.Welcome("x", 1000, 100),
    wire.Error(1, "x"),
    wire.Hello(role=wire.ROLE_WORKER, name="f", slots=2, task_types=("sha256",)),
]
BODIES = [wire.encode(message) for message in SAMPLES]


def fuzzed(rng: random.Random) -> bytes:
    body = bytearray(rng.choice(BODIES))
    choice = rng.randrange(6)
    if choice == 0:
        for _ in range(rng.randrange(1, 5)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif choice == 1:
        body = body[: rng.randrange(len(body) + 1)]
    elif choice == 2:
        body += rng.randbytes(rng.randrange(1, 32))
    elif choice == 3:
        body[0] = rng.randrange(256)
    elif choice == 4:
        return struct.pack(">I", rng.choice([2**31, 2**32 - 1, 17 << 20])) + bytes(body)
    return frame(bytes(body))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def fuzz(mesh: Mesh, frames: int, per_connection: int, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    hellos = [
        b"",
        frame(wire.encode(wire.Hello(role=wire.ROLE_CLIENT, name="fuzz"))),
        frame(wire.encode(wire.Hello(role=wire.ROLE_WORKER, name="fuzz", slots=1, task_types=("sha256",)))),
    ]
    sent = connections = 0
    started = time.monotonic()
    while sent < frames:
        batch = [fuzzed(rng) for _ in range(min(per_connection, frames - sent))]
        sent += len(batch)
        connections += 1
        with socket.create_connection(("127.0.0.1", mesh.port), timeout=10) as sock:
            try:
                sock.sendall(rng.choice(hellos) + b"".join(batch))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
    return connections, time.monotonic() - started


async def concurrent(reactor: object, address: str, clients: int, tasks: int) -> list[float]:
    connected = await defer.gatherResults([Client.connect(address, reactor) for _ in range(clients)])
    latencies: list[float] = []

    async def one(client: Client, number: int) -> None:
        for i in range(tasks):
            began = time.perf_counter()
            await client.submit(f"client-{number}-{i}")
            latencies.append(time.perf_counter() - began)

    await defer.gatherResults([defer.Deferred.fromCoroutine(one(c, n)) for n, c in enumerate(connected)])
    for client in connected:
        await client.close()
    return latencies


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--per-connection", type=int, default=40)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, Mesh(Path(folder)) as mesh:
        scheduler = mesh.scheduler()
        mesh.workers("w1", "w2")
        began = time.monotonic()
        before = rss_kib(scheduler.pid)
        connections, seconds = fuzz(mesh, args.frames, args.per_connection, args.seed)
        after = rss_kib(scheduler.pid)
        up = scheduler.running()
        latencies = sorted(run_concurrent(mesh.address, args.clients, args.tasks))
        log = scheduler.log
        print(f"fuzz: {args.frames:,} frames over {connections:,} connections in {seconds:.1f} s")
        print(f"scheduler up: {up and scheduler.running()} after {time.monotonic() - began:.1f} s")
        print(f"tracebacks logged: {log.count('Traceback')}; bugs logged: {log.count('bug while')}")
        print(
            f"scheduler RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after the fuzz "
            f"(+{(after - before) / 1024:.1f} MiB)"
        )
        p50, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.99))
        print(
            f"{args.clients} concurrent clients x {args.tasks} tasks: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )


def run_concurrent(address: str, clients: int, tasks: int) -> list[float]:
    """Run the concurrency phase in a child Python, so this process's reactor is never started."""
    import json
    import subprocess

    code = (
        "import json, sys\n"
        "from twisted.internet import task, defer\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import hostile\n"
        "async def main(reactor):\n"
        "    address, clients, tasks = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n"
        "    print(json.dumps(await hostile.concurrent(reactor, address, clients, tasks)))\n"
        "task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), address, str(clients), str(tasks)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return [float(value) for value in json.loads(out.stdout.strip().splitlines()[-1])]


if __name__ == "__main__":
    main()
