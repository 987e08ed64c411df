#!/usr/bin/env python3
"""
What a Python task function costs beside a bytes task (issue 13).

Starts a real scheduler and workers on loopback (one cluster per store,
memory and SQLite) and measures, in alternation on the same processes, the
10,000-task throughput of bench.py (every task submitted at once, one call
each, every result awaited) for:

- ``sha256``: the bytes handler, ``client.submit(text)``;
- ``noop``: a task function with two small arguments that does nothing,
  inline, ``client.submit(noop, i, 2)``: arguments encoded, checked against
  the signature, decoded on the worker, the result (None) encoded and decoded;
- ``noop_thread``: the same function in the worker's thread pool (a plain
  function's default).

The ratio noop/sha256 is what the JSON layer (and everything else a task
function adds) costs; issue 13 allows 15 %.  It also times the four codec
calls of one such task in this process, with the standard library's json
and, when it is installed, msgspec; ``--codec msgspec`` runs the whole
measurement with msgspec under taskmesh's codec, to compare end to end.

    .venv/bin/python bench/pytasks.py
    .venv/bin/python bench/pytasks.py --codec msgspec   # pip install msgspec first

Every process it starts is stopped by pid, however the run ends.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from taskbench.client import close, expected_digests, gather  # noqa: E402
from taskbench.common import BenchError, say  # noqa: E402
from taskbench.processes import STORES, Cluster, stop_postgres, store_options  # noqa: E402
from twisted.internet import task  # noqa: E402

from taskmesh import Client  # noqa: E402

KINDS = ("sha256", "noop", "noop_thread")


def codec_micro() -> dict[str, float]:
    """Microseconds for the four codec calls of one noop task (arguments and result, both ways)."""
    from taskmesh import codec

    def taskmesh_json() -> None:
        args, _ = codec.decode_arguments(codec.encode_arguments((7, 2), {}))
        codec.decode_result(codec.encode_result(None))

    found = {"json (taskmesh.codec)": taskmesh_json}
    try:
        import msgspec

        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()

        def with_msgspec() -> None:
            decoder.decode(encoder.encode((7, 2)))
            decoder.decode(encoder.encode(None))

        found["msgspec"] = with_msgspec
    except ImportError:
        pass
    number = 100_000
    return {
        name: min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6
        for name, function in found.items()
    }


async def one_run(client: Client, kind: str, count: int, reactor: Any, timeout: float) -> float:
    import bench_tasks

    if kind == "sha256":
        texts = [f"pytask-{i}" for i in range(count)]
        started = time.perf_counter()
        got = await gather(kind, [client.submit(text) for text in texts], reactor, timeout)
        elapsed = time.perf_counter() - started
        if got != expected_digests(texts):
            raise BenchError("wrong digests")
    else:
        function = getattr(bench_tasks, kind)
        started = time.perf_counter()
        got = await gather(kind, [client.submit(function, i, 2) for i in range(count)], reactor, timeout)
        elapsed = time.perf_counter() - started
        if got != [None] * count:
            raise BenchError(f"{kind}: wrong results")
    return count / elapsed


async def bench_store(
    reactor: Any, args: argparse.Namespace, store: str, folder: Path
) -> dict[str, list[float]]:
    cluster = Cluster(
        f"{store}-pytasks", folder / store, args.workers, 1, store_options(store), ["--tasks", "bench_tasks"]
    )
    say(f"[{store}] starting a scheduler and {args.workers} workers (--tasks bench_tasks)")
    try:
        await cluster.start(reactor, args.startup_timeout)
        client = await Client.connect(cluster.address, reactor)
        try:
            for kind in KINDS:  # warm up every type: each learns its own group size
                await one_run(client, kind, args.warmup, reactor, args.timeout)
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for n in range(1, args.runs + 1):
                for kind in KINDS:
                    rate = await one_run(client, kind, args.tasks, reactor, args.timeout)
                    rates[kind].append(rate)
                say(
                    f"[{store}] run {n}/{args.runs}: "
                    + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in KINDS)
                    + " tasks/s"
                )
            return rates
        finally:
            await close(client, reactor)
    finally:
        cluster.stop()


def table(
    results: dict[str, dict[str, list[float]]], micro: dict[str, float], args: argparse.Namespace
) -> str:
    lines = [
        f"taskmesh task functions: {args.tasks:,} tasks a run, median of {args.runs} runs "
        f"(min-max), {args.workers} workers, codec {args.codec}",
        "",
        f"{'store':<8} {'type':<12} {'tasks/s':>9} {'min':>9} {'max':>9}  {'of sha256':>9}",
    ]
    for store, rates in results.items():
        base = statistics.median(rates["sha256"])
        for kind in KINDS:
            median = statistics.median(rates[kind])
            lines.append(
                f"{store:<8} {kind:<12} {median:>9,.0f} {min(rates[kind]):>9,.0f} "
                f"{max(rates[kind]):>9,.0f}  {median / base:>8.0%}"
            )
    lines.append("")
    lines.append(
        "codec calls of one noop task (encode and decode its arguments and its result), this process:"
    )
    for name, microseconds in micro.items():
        lines.append(f"  {name:<22} {microseconds:.2f} µs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per run")
    parser.add_argument("--runs", type=int, default=5, help="runs of each type, alternating")
    parser.add_argument("--warmup", type=int, default=500, help="tasks of each type before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--stores", default="memory,sqlite", help="memory, sqlite, postgresql (comma-separated)"
    )
    parser.add_argument("--codec", choices=("json", "msgspec"), default="json")
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the results of one run")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    if any(s not in STORES for s in stores):
        parser.error(f"--stores: one of {', '.join(STORES)}")
    # The workers import bench_tasks from here, and with it the codec choice.
    os.environ["PYTHONPATH"] = str(HERE)
    os.environ["TASKMESH_BENCH_CODEC"] = args.codec
    import bench_tasks  # noqa: F401  (in this process too: the client encodes and decodes)

    folder = Path(tempfile.mkdtemp(prefix="taskmesh-pytasks-"))
    atexit.register(Cluster.stop_all)
    atexit.register(stop_postgres)
    results: dict[str, dict[str, list[float]]] = {}

    async def run(reactor: Any) -> None:
        for store in stores:
            results[store] = await bench_store(reactor, args, store, folder)

    try:
        task.react(lambda reactor: _guard(run(reactor)))
    except SystemExit as e:
        if e.code:
            say(f"failed; logs kept in {folder}")
            raise
    Cluster.stop_all()
    shutil.rmtree(folder, ignore_errors=True)
    micro = codec_micro()
    print(table(results, micro, args))
    if args.json is not None:
        args.json.write_text(json.dumps({"codec": args.codec, "rates": results, "codec_us": micro}, indent=2))


async def _guard(coroutine: Any) -> None:
    try:
        await coroutine
    except BenchError as e:
        say(f"error: {e}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
