"""
Scaling: the throughput measurement again with each worker count of
``--scaling``, each count on a freshly started cluster, so that the speedup
over the first count shows what more workers buy (on a machine with as many
CPUs as the client, the scheduler and the workers need).
"""

from __future__ import annotations

import argparse
from typing import Any

from taskbench.processes import ClusterFactory
from taskbench.results import StoreResults
from taskbench.session import bench_cluster


async def run_scaling(
    reactor: Any,
    args: argparse.Namespace,
    stores: dict[str, StoreResults],
    new_cluster: ClusterFactory,
) -> None:
    """
    Every worker count, with every store in turn for each count, so that a
    machine getting busier during the benchmark does not favour one store.
    """
    for workers in args.scaling:
        for store, results in stores.items():
            results.scaling.append(
                await bench_cluster(
                    reactor,
                    args,
                    new_cluster(f"scaling-{workers}w", store, workers),
                    latency=False,
                )
            )
