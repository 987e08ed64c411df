"""
The long-running services that twistd supervises.

``SchedulerService`` listens on an endpoint and serves the scheduler core;
``WorkerService`` keeps one connection to the scheduler alive with a
``ClientService`` (reconnecting with backoff, so a restarted scheduler gets
its workers back by itself) and owns the thread pool that blocking task
handlers run in.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from taskmesh import wire
from taskmesh.framing import describe_address
from taskmesh.handlers import HandlerRegistry
from taskmesh.scheduler import Scheduler
from taskmesh.scheduler_protocol import SchedulerFactory
from taskmesh.store import ITaskStore
from taskmesh.worker_protocol import WorkerFactory

#: Longest pause between two attempts to reach a scheduler that is down.
DEFAULT_RECONNECT_MAX_DELAY = 5.0


class SchedulerService(Service):
    """
    Serves a scheduler core on an endpoint.  Starting takes back the store's
    unfinished tasks before listening; stopping stops listening, then
    commits and closes the store.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen: str,
        core: Scheduler,
        store: ITaskStore,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
        name: str = "taskmesh-scheduler",
    ) -> None:
        self.listen = listen
        self.core = core
        self.store = store
        self.endpoint = serverFromString(reactor, listen)
        self.factory = SchedulerFactory(core, reactor, name, max_frame, max_payload)
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """Listen now; if the port cannot be had, raise so twistd exits with the reason."""
        super().startService()
        self.core.start()
        failures: list[Failure] = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            # TCP and UNIX endpoints fail at once: twistd reports this and exits.
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "scheduler listening on {address} ({listen})",
            address=describe_address(port.getHost()),
            listen=self.listen,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopping = maybeDeferred(port.stopListening) if port is not None else succeed(None)
        stopping.addBoth(self._close_store)
        return stopping

    def _close_store(self, passthrough: Any) -> Any:
        self.core.stop()
        self.store.close()
        return passthrough


class WorkerService(MultiService):
    """One worker: a reconnecting connection to a scheduler and a thread pool."""

    def __init__(
        self,
        reactor: Any,
        connect: IStreamClientEndpoint,
        handlers: HandlerRegistry,
        slots: int,
        name: str,
        reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=slots, name="taskmesh-blocking")
        self.factory = WorkerFactory(
            reactor, handlers, slots, name, self.run_blocking, on_refused=self._refused
        )
        self.connection = ClientService(
            connect,
            self.factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=reconnect_max_delay),
            clock=reactor,
        )
        self.connection.setServiceParent(self)

    def _refused(self, reason: str) -> None:
        """A scheduler that refuses this worker will refuse it again: stop, do not retry."""
        self.connection.stopService()
        if self.reactor.running:
            self.reactor.stop()

    def run_blocking(self, function: Any, payload: bytes) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.pool, function, payload)

    def startService(self) -> None:
        self.pool.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopping = maybeDeferred(super().stopService)
        stopping.addBoth(self._stop_pool)
        return stopping

    def _stop_pool(self, passthrough: Any) -> Any:
        self.pool.stop()
        return passthrough
