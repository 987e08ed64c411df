"""
Submit a batch of sha256 tasks through the Python API and print each result
beside its payload, checked against hashlib, in submission order.

    python examples/batch.py --connect localhost:9001 --count 20
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from twisted.internet import task
from twisted.internet.defer import gatherResults

from taskmesh import Client


async def main(reactor: object, arguments: argparse.Namespace) -> None:
    client = await Client.connect(arguments.connect, reactor)
    payloads = [f"task-{i}" for i in range(arguments.count)]
    started = time.perf_counter()
    results = await gatherResults([client.submit(payload) for payload in payloads])
    elapsed = time.perf_counter() - started
    await client.close()
    wrong = 0
    for payload, digest in zip(payloads, results):
        expected = hashlib.sha256(payload.encode()).hexdigest().encode()
        wrong += digest != expected
        if arguments.count <= 50:
            print(f"{payload:>10}  {digest.decode()}")
    print(
        f"{len(results)} tasks in {elapsed * 1000:.1f} ms, {wrong} wrong digests",
        file=sys.stderr if arguments.count > 50 else sys.stdout,
    )
    if wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--connect", default="localhost:9001")
    parser.add_argument("--count", type=int, default=20)
    task.react(lambda reactor: main(reactor, parser.parse_args()))
