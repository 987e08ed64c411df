"""
``/metrics``: Prometheus families computed at scrape time from the core's
counters by a custom collector (as Dask does), so metrics cost nothing per
task.  Names follow celery-exporter's where one fits (``taskmesh_task_*``,
``taskmesh_worker_*``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from taskmesh._version import __version__
from taskmesh.web.view import MeshView


class MeshCollector(Collector):
    """Reads the view when Prometheus scrapes; holds no state of its own."""

    def __init__(self, view: MeshView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        core = view.core
        stats = view.status()
        tasks = stats["tasks"]

        info = GaugeMetricFamily("taskmesh_info", "The scheduler's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "taskmesh_uptime_seconds", "Seconds since the scheduler started.", value=stats["uptime_seconds"]
        )
        by_state = GaugeMetricFamily("taskmesh_tasks", "Live tasks by state.", labels=["state"])
        for name in ("queued", "waiting_to_retry", "running", "prefetched"):
            by_state.add_metric([name], tasks[name])
        yield by_state

        submitted = CounterMetricFamily(
            "taskmesh_task_submitted", "Tasks submitted since start, by type.", labels=["type"]
        )
        for task_type, count in sorted(core.submitted_by_type.items()):
            submitted.add_metric([task_type], count)
        yield submitted
        finished = CounterMetricFamily(
            "taskmesh_task_finished",
            "Tasks finished since start, by type and outcome.",
            labels=["type", "outcome"],
        )
        for (finished_type, state), count in sorted(core.finished_by_type.items()):
            finished.add_metric([finished_type, state.name.lower()], count)
        yield finished
        items = CounterMetricFamily(
            "taskmesh_map_items_finished", "Map items answered since start, by outcome.", labels=["outcome"]
        )
        items.add_metric(["succeeded"], core.job_items[0])
        items.add_metric(["failed"], core.job_items[1])
        yield items

        for name, histograms, text in (
            ("taskmesh_task_runtime_seconds", core.run_times, "Seconds from a task's lease to its outcome."),
            (
                "taskmesh_task_queue_wait_seconds",
                core.queue_waits,
                "Seconds from submission to (last) lease.",
            ),
        ):
            family = HistogramMetricFamily(name, text, labels=["type"])
            for histogram_type, histogram in sorted(histograms.items()):
                family.add_metric([histogram_type], histogram.cumulative(), histogram.total)
            yield family

        workers = stats["workers"]
        yield GaugeMetricFamily("taskmesh_workers", "Connected workers.", value=len(workers))
        slots = GaugeMetricFamily("taskmesh_worker_slots", "Slots per worker.", labels=["worker"])
        running = GaugeMetricFamily("taskmesh_worker_running", "Tasks running per worker.", labels=["worker"])
        held = GaugeMetricFamily(
            "taskmesh_worker_held", "Tasks held per worker (running and prefetched).", labels=["worker"]
        )
        done = CounterMetricFamily(
            "taskmesh_worker_tasks", "Outcomes reported per worker.", labels=["worker", "outcome"]
        )
        for worker in workers:
            name = worker["name"]
            slots.add_metric([name], worker["slots"])
            running.add_metric([name], worker["running"])
            held.add_metric([name], worker["held"])
            done.add_metric([name, "succeeded"], worker["done"])
            done.add_metric([name, "failed"], worker["failed"])
        yield from (slots, running, held, done)

        yield GaugeMetricFamily("taskmesh_jobs", "Maps in progress.", value=len(stats["jobs"]))
        store = stats["store"]
        yield GaugeMetricFamily(
            "taskmesh_store_available", "1 while the store can commit.", value=1 if store["available"] else 0
        )
        yield CounterMetricFamily(
            "taskmesh_store_failed_commits", "Commits that failed since start.", value=store["failed_commits"]
        )
        commits = core.commit_times
        commit_family = HistogramMetricFamily(
            "taskmesh_store_commit_seconds",
            "Seconds each store commit took (one per reactor turn that wrote, not per task).",
        )
        commit_family.add_metric([], commits.cumulative(), commits.total)
        yield commit_family
        connections = GaugeMetricFamily(
            "taskmesh_connections", "Open connections by role, counted at scrape time.", labels=["role"]
        )
        for role, count in sorted(view.connections().items()):
            connections.add_metric([role], count)
        yield connections


def registry_for(view: MeshView) -> CollectorRegistry:
    """A registry of our own (not the process-global one): one per scheduler, so tests can run several."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(view))
    return registry
