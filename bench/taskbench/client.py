"""
Driving ``taskmesh.Client`` from the benchmark, the same way in every
measurement: the tasks and the answers they must get, waits that always end,
the warm-up, and closing.

Only taskmesh's public API is used (``taskmesh.Client``), so the benchmark
keeps working across changes inside the package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, TimeoutError, gatherResults

from taskbench.common import BenchError
from taskmesh import Client

T = TypeVar("T")


def payloads(count: int) -> list[str]:
    """The payloads of a measured batch, ``task-<i>``: the map's input lines are the same texts."""
    return [f"task-{i}" for i in range(count)]


def expected_digests(texts: Sequence[str]) -> list[bytes]:
    """What the sha256 task type must answer, computed here, outside the timings."""
    return [hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii") for text in texts]


def check_digests(label: str, texts: Sequence[str], got: Sequence[bytes], want: Sequence[bytes]) -> None:
    """A benchmark of wrong answers measures nothing: any mismatch ends the run."""
    if len(got) != len(want):
        raise BenchError(f"{label}: {len(got)} results for {len(want)} tasks")
    wrong = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    if wrong:
        i = wrong[0]
        raise BenchError(
            f"{label}: {len(wrong)} wrong digests; first: {texts[i]!r} gave {got[i]!r}, expected {want[i]!r}"
        )


async def gather(label: str, pending: list[Deferred[T]], reactor: Any, timeout: float) -> list[T]:
    """All results in submission order, within ``timeout`` seconds, or BenchError."""
    gathered = gatherResults(pending, consumeErrors=True)
    gathered.addTimeout(timeout, reactor)
    try:
        return await gathered
    except TimeoutError:
        raise BenchError(f"{label}: not every result came within {timeout:g} s") from None
    except FirstError as e:
        raise BenchError(f"{label}: task {e.index} failed: {e.subFailure.value!r}") from None


async def warm_up(client: Client, count: int, reactor: Any, timeout: float) -> None:
    """
    Run a batch and a few round trips first, so that connection setup, first
    imports and cold caches are not charged to the first measured run.
    """
    if count <= 0:
        return
    texts = [f"warmup-{i}" for i in range(count)]
    results = await gather("warm-up", [client.submit(text) for text in texts], reactor, timeout)
    check_digests("warm-up", texts, results, expected_digests(texts))
    for text in texts[: min(20, count)]:
        await gather("warm-up", [client.submit(text)], reactor, timeout)


async def close(client: Client, reactor: Any) -> None:
    """Close a client, waiting 5 s at most: the processes are stopped next anyway."""
    closing = client.close()
    closing.addTimeout(5, reactor)
    try:
        await closing
    except Exception:
        pass
