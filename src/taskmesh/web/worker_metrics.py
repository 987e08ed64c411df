"""
A worker process's own ``/metrics`` (``taskmesh-worker --metrics ENDPOINT``):
what this worker ran, by type, and how busy its slots are now, computed at
scrape time from the counters its core keeps (``WorkerStats``) and from the
current connection's core.

Served by prometheus_client's own Twisted resource (``MetricsResource``),
which renders in the reactor's thread pool: the collector only copies plain
counters (a ``list()`` of a dict is taken whole under the GIL), so a scrape
never sees a half-made change and never changes anything.  There is no
login, as with most exporters: listen on loopback or a private interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource

from taskmesh._version import __version__
from taskmesh.net.worker_protocol import WorkerFactory
from taskmesh.web.listening import SiteService


class WorkerCollector(Collector):
    """Reads one worker's counters when Prometheus scrapes; holds no state of its own."""

    def __init__(self, factory: WorkerFactory) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        factory = self._factory
        stats = factory.stats
        info = GaugeMetricFamily(
            "taskmesh_worker_process_info", "This worker's version and name.", labels=["version", "worker"]
        )
        info.add_metric([__version__, factory.name], 1)
        yield info
        protocol = factory.current
        core = protocol.core if protocol is not None else None
        yield GaugeMetricFamily(
            "taskmesh_worker_process_connected",
            "1 while connected to a scheduler.",
            value=1 if core is not None else 0,
        )
        yield GaugeMetricFamily(
            "taskmesh_worker_process_slots", "Slots (tasks run at once).", value=stats.slots
        )
        yield GaugeMetricFamily(
            "taskmesh_worker_process_slots_busy",
            "Slots holding a task, group or chunk now.",
            value=core.running if core is not None else 0,
        )
        yield GaugeMetricFamily(
            "taskmesh_worker_process_waiting",
            "Tasks, groups and chunks received and waiting for a slot (prefetched).",
            value=core.waiting if core is not None else 0,
        )
        by_type = sorted(list(stats.by_type.items()))
        ran = CounterMetricFamily(
            "taskmesh_worker_process_tasks",
            "Tasks (and map items) this worker ran, by type and outcome.",
            labels=["type", "outcome"],
        )
        runtime = HistogramMetricFamily(
            "taskmesh_worker_process_run_seconds",
            "Seconds a slot was held, by type: one observation per task, group or map chunk.",
            labels=["type"],
        )
        for task_type, counters in by_type:
            ran.add_metric([task_type, "succeeded"], counters.succeeded)
            ran.add_metric([task_type, "failed"], counters.failed)
            ran.add_metric([task_type, "retried"], counters.retried)
            runtime.add_metric([task_type], counters.run.cumulative(), counters.run.total)
        yield ran
        yield runtime


def worker_registry(factory: WorkerFactory) -> CollectorRegistry:
    """A registry of our own (not the process-global one), so tests can run several workers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(factory))
    return registry


class WorkerMetricsService(SiteService):
    """``/metrics`` of one worker on its own endpoint; one that cannot listen is logged and left off."""

    what = "worker metrics"

    def __init__(self, reactor: Any, listen: str, factory: WorkerFactory) -> None:
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(worker_registry(factory)))
        super().__init__(reactor, listen, root)

    def listening(self, port: IListeningPort) -> None:
        host = port.getHost()
        self.log.info(
            "worker metrics on http://{host}:{port}/metrics",
            host=getattr(host, "host", ""),
            port=getattr(host, "port", ""),
        )
