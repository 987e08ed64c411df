"""
Round-trip latency: one task at a time (submit it, await its result, then the
next), so that each sample is one full trip client -> scheduler -> worker ->
scheduler -> client with nothing queued behind it.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import TimeoutError

from taskbench.client import check_digests
from taskbench.common import BenchError
from taskbench.results import LatencyRun
from taskmesh import Client


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), ``ordered`` sorted."""
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def measure_latency(
    client: Client, texts: list[str], want: list[bytes], reactor: Any, timeout: float
) -> LatencyRun:
    """One task at a time: submit, await its result, then the next."""
    gc.collect()
    samples: list[float] = []
    results: list[bytes] = []
    for text in texts:
        started = time.perf_counter()
        result = client.submit(text)
        result.addTimeout(timeout, reactor)
        try:
            results.append(await result)
        except TimeoutError:
            raise BenchError(f"latency: no result for {text!r} within {timeout:g} s") from None
        except Exception as e:
            raise BenchError(f"latency: {text!r} failed: {e!r}") from None
        samples.append(time.perf_counter() - started)
    check_digests("latency", texts, results, want)
    ordered = sorted(sample * 1000 for sample in samples)
    return LatencyRun(
        rounds=len(ordered),
        p50_ms=percentile(ordered, 50),
        p90_ms=percentile(ordered, 90),
        p99_ms=percentile(ordered, 99),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        max_ms=ordered[-1],
    )
