"""Work spreads over the connected workers, and a large batch comes back right, through the Python API."""

from __future__ import annotations

import hashlib
import random
import re

import pytest
import pytest_twisted
from conftest import TRACED, Mesh, bounded
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

import taskmesh


def started(worker_log: str) -> list[str]:
    """The payloads of the traced-sleep tasks a worker's log says it started."""
    return re.findall(r"traced-sleep (\S+) started", worker_log)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_two_workers_share_a_batch_of_sleeps(mesh: Mesh) -> None:
    mesh.scheduler()
    w1, w2 = mesh.workers("w1", "w2", **TRACED)
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        payloads = [f"1.{i:02d}" for i in range(6)]  # about a second each, told apart by their text
        results = await bounded(
            gatherResults([client.submit(p, "traced-sleep") for p in payloads], consumeErrors=True)
        )
    finally:
        await bounded(client.close())

    assert results == [f"slept {p}".encode() for p in payloads]
    on_w1, on_w2 = started(w1.log), started(w2.log)
    assert on_w1 and on_w2, f"one worker ran everything: w1 {on_w1}, w2 {on_w2}"
    assert sorted(on_w1 + on_w2) == payloads, "each task ran exactly once"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_batch_of_200_digests(mesh: Mesh) -> None:
    mesh.scheduler()
    mesh.workers("w1", "w2", concurrency=2)
    rng = random.Random(200)
    texts = [
        "".join(rng.choice("abcdefghij é€😀\n") for _ in range(rng.randrange(0, 64))) + f"#{i}"
        for i in range(200)
    ]
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        digests = await bounded(gatherResults([client.submit(text) for text in texts], consumeErrors=True))
    finally:
        await bounded(client.close())

    assert digests == [hashlib.sha256(t.encode()).hexdigest().encode() for t in texts]
