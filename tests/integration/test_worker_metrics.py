"""
A worker's own ``/metrics`` (``taskmesh-worker --metrics``), against real
processes: what it ran by type and outcome, how long its slots were held,
its slots, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
import sample_tasks
from conftest import Mesh, bounded
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor

import taskmesh
from taskmesh.testing import TIMEOUT, free_port, wait_until

HERE = Path(__file__).resolve().parent


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_worker_serves_its_own_metrics_by_type_and_outcome(mesh: Mesh) -> None:
    mesh.scheduler()
    port = free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    (worker,) = mesh.workers(
        "w1", concurrency=2, options=("--tasks", "sample_tasks", "--metrics", listen), extra_path=HERE
    )
    worker.wait_for(r"worker metrics on http://127\.0\.0\.1:\d+/metrics")
    client = await bounded(taskmesh.Client.connect(mesh.address, reactor))
    try:
        assert [await bounded(client.submit(sample_tasks.add, i, 1)) for i in range(5)] == [1, 2, 3, 4, 5]
        with pytest.raises(taskmesh.TaskFailed):
            await bounded(client.submit(sample_tasks.add, "a", 1))  # TypeError on the worker
        assert await bounded(client.submit(sample_tasks.flaky, 2)) == 2  # a retry asked for, then success
    finally:
        await bounded(client.close())
    add = sample_tasks.add.name
    flaky = sample_tasks.flaky.name

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(port)
        done = samples.get(
            ("taskmesh_worker_process_tasks_total", (("outcome", "succeeded"), ("type", flaky)))
        )
        return samples if done == 1 else None

    samples = wait_until(counted, TIMEOUT, "the worker to count the flaky task")
    assert samples[("taskmesh_worker_process_tasks_total", (("outcome", "succeeded"), ("type", add)))] == 5
    assert samples[("taskmesh_worker_process_tasks_total", (("outcome", "failed"), ("type", add)))] == 1
    assert samples[("taskmesh_worker_process_tasks_total", (("outcome", "retried"), ("type", flaky)))] == 1
    assert samples[("taskmesh_worker_process_run_seconds_count", (("type", add),))] == 6
    assert samples[("taskmesh_worker_process_run_seconds_bucket", (("le", "+Inf"), ("type", add)))] == 6
    assert samples[("taskmesh_worker_process_slots", ())] == 2
    assert samples[("taskmesh_worker_process_slots_busy", ())] == 0
    assert samples[("taskmesh_worker_process_connected", ())] == 1
