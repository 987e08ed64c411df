"""
Plain TCP beside TLS, measured (a benchmark, not a test).

The same mesh twice (an SQLite scheduler and ``--workers`` workers on
loopback), once over plain TCP and once over TLS with a throwaway CA, and the
same workload against each from a client process of its own: ``--tasks``
tasks submitted at once and gathered (throughput), ``--rounds`` round trips
one after another (latency), and ``--connects`` connections opened and
closed (what the handshake costs, with its HMAC challenge-response).

    .venv/bin/python bench/tls.py --tasks 10000 --rounds 300 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from taskmesh.net.tls import make_test_certificates
    from taskmesh.testing import Mesh
except ImportError as e:
    sys.exit(f"tls: {e}; run this with the Python that has taskmesh installed (.venv/bin/python)")

#: Runs in a child Python, so this process never starts a reactor.
CLIENT = """
import json, sys, time
from twisted.internet import defer, task
from taskmesh import Client
from taskmesh.net.tls import ClientTLS

address, ca = sys.argv[1], sys.argv[2]
tasks, rounds, connects = (int(value) for value in sys.argv[3:6])
tls = ClientTLS(ca_file=ca) if ca else None

async def main(reactor):
    client = await Client.connect(address, reactor, tls=tls)
    for i in range(200):
        await client.submit(f"warm-{i}")
    began = time.perf_counter()
    await defer.gatherResults([client.submit(f"task-{i}") for i in range(tasks)])
    throughput = tasks / (time.perf_counter() - began)
    latencies = []
    for i in range(rounds):
        began = time.perf_counter()
        await client.submit(f"round-{i}")
        latencies.append(time.perf_counter() - began)
    await client.close()
    began = time.perf_counter()
    for _ in range(connects):
        other = await Client.connect(address, reactor, tls=tls)
        await other.close()
    connect = (time.perf_counter() - began) / connects
    latencies.sort()
    print(json.dumps({"throughput": throughput, "p50_ms": latencies[len(latencies) // 2] * 1000,
                      "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "connect_ms": connect * 1000}))

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


def measure(folder: Path, tls: bool, args: argparse.Namespace) -> dict[str, float]:
    folder.mkdir(parents=True)
    certificates = make_test_certificates(folder / "certs", ["127.0.0.1", "localhost"]) if tls else {}
    with Mesh(folder) as mesh:
        server: tuple[str, ...] = ()
        client_tls: tuple[str, ...] = ()
        if tls:
            server = (
                "--tls-cert",
                str(certificates["scheduler"]),
                "--tls-key",
                str(certificates["scheduler-key"]),
            )
            client_tls = ("--tls-ca", str(certificates["ca"]))
        mesh.scheduler("scheduler", *server)
        for n in range(args.workers):
            mesh.worker(f"w{n}", options=client_tls)
        for n in range(args.workers):
            mesh.wait_joined(f"w{n}")
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                mesh.address,
                str(certificates["ca"]) if tls else "",
                str(args.tasks),
                str(args.rounds),
                str(args.connects),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--connects", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating; medians reported")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"tcp": [], "tls": []}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            for name in ("tcp", "tls"):
                results[name].append(measure(Path(folder) / f"{name}-{run}", name == "tls", args))
    print(f"{'':<22}{'plain TCP':>12}{'TLS':>12}{'TLS / TCP':>12}")
    for key, label in (
        ("throughput", "tasks/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("connect_ms", "connect ms"),
    ):
        tcp = statistics.median(r[key] for r in results["tcp"])
        tls = statistics.median(r[key] for r in results["tls"])
        print(f"{label:<22}{tcp:>12,.3f}{tls:>12,.3f}{tls / tcp:>12.2f}")


if __name__ == "__main__":
    main()
