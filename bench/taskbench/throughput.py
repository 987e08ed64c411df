"""
Submit throughput: every task submitted at once, one ``submit()`` call each,
and every result awaited in submission order.  Tasks per second from just
before the first ``submit()`` to the last result; the time of the ``submit()``
loop alone is kept too, as the client's own share.
"""

from __future__ import annotations

import cProfile
import gc
import time
from typing import Any

from taskbench.client import check_digests, gather
from taskbench.results import ThroughputRun
from taskmesh import Client


async def measure_throughput(
    client: Client,
    texts: list[str],
    want: list[bytes],
    reactor: Any,
    timeout: float,
    profiler: cProfile.Profile | None = None,
) -> ThroughputRun:
    """Submit every task at once, await them all, check every digest."""
    gc.collect()  # do not charge the previous run's garbage to this one
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    pending = [client.submit(text) for text in texts]
    submitted = time.perf_counter()
    results = await gather("throughput", pending, reactor, timeout)
    finished = time.perf_counter()
    if profiler is not None:
        profiler.disable()
    check_digests("throughput", texts, results, want)
    elapsed = finished - started
    return ThroughputRun(len(texts), elapsed, submitted - started, len(texts) / elapsed)
