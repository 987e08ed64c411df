"""
The long-running services that twistd supervises.

``SchedulerService`` listens on an endpoint and serves the scheduler core;
``StandbySchedulerService`` is one of several on a shared PostgreSQL store,
serving only while it is the elected leader;
``WorkerService`` keeps one connection to the scheduler alive with a
``ClientService`` (reconnecting with backoff, so a restarted scheduler gets
its workers back by itself) and owns the thread pool that blocking task
handlers run in.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer, provider

from taskmesh import wire
from taskmesh.context import install_child_outbox
from taskmesh.core.leadership import DEFAULT_LEASE, DEFAULT_POLL_INTERVAL, Leadership
from taskmesh.core.scheduler import Scheduler
from taskmesh.handlers import HandlerRegistry
from taskmesh.net.address import FollowingEndpoint
from taskmesh.net.auth import RoleSecrets
from taskmesh.net.framing import describe_address
from taskmesh.net.scheduler_protocol import DEFAULT_MAX_CONNECTIONS, SchedulerFactory
from taskmesh.net.standby import LeaderSwitch, StandbyFactory
from taskmesh.net.tls import ServerTLS
from taskmesh.net.worker_protocol import WorkerFactory
from taskmesh.store import ITaskStore

#: Longest pause between two attempts to reach a scheduler that is down.
DEFAULT_RECONNECT_MAX_DELAY = 5.0
#: Seconds a stopping worker lets its running tasks finish (``--grace``).
DEFAULT_GRACE = 30.0
#: Longest pause before trying a scheduler again after it refused our secret.
AUTH_RETRY_MAX_DELAY = 60.0
#: Where a worker runs CPU-bound handlers: threads (one core between them,
#: as Python runs), or processes (every core).
POOLS = ("thread", "process")


def describe_store(store: ITaskStore) -> str:
    """Where a store keeps tasks, for the start line: a file's path, or what else it is."""
    description = getattr(store, "description", None)
    if description:
        return str(description)
    path = getattr(store, "path", None)
    if path is not None:
        return f"SQLite {os.path.abspath(path)}"
    if type(store).__name__ == "MemoryStore":
        return "memory (nothing survives a restart)"
    return type(store).__name__


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
        factory_options: dict[str, Any] | None = None,
        secrets: RoleSecrets | None = None,
        tls: ServerTLS | None = None,
        web: str | None = None,
    ) -> None:
        if secrets is None:
            raise ValueError("a scheduler needs its secrets: nobody may connect without one")
        self.listen = listen
        self.core = core
        self.store = store
        self.endpoint = serverFromString(reactor, listen)
        # factory_options: the bounds on every peer (see SchedulerFactory).
        self.factory = SchedulerFactory(
            core, reactor, secrets, name, max_frame, max_payload, **(factory_options or {})
        )
        #: What listens: the factory, inside TLS when certificates are given.
        self.listening_factory = tls.wrap(self.factory) if tls is not None else self.factory
        self.port: IListeningPort | None = None
        #: The dashboard (taskmesh.web), on its own endpoint; None: no dashboard.
        self.web: Service | None = None
        if web is not None:
            from taskmesh.web import WebService

            self.web = WebService(
                reactor, web, core, secrets.client, store, connections=self.factory.connections_by_role
            )

    def startService(self) -> None:
        """
        Listen first: if the port cannot be had, exit with one line saying
        so, and close the store (removing it if this start created it), so a
        failed start leaves nothing behind.  Then take back the store's
        unfinished tasks (no connection is accepted before the reactor runs).
        """
        failures: list[Failure] = []
        self.endpoint.listen(self.listening_factory).addCallbacks(self._listening, failures.append)
        if failures:
            # TCP and UNIX endpoints fail at once.
            self.store.close()
            discard = getattr(self.store, "discard_created", None)
            if discard is not None:
                discard()
            raise SystemExit(
                f"taskmesh-scheduler: cannot listen on {self.listen}: {failures[0].getErrorMessage()}"
            )
        super().startService()
        self.core.start()
        if self.web is not None:
            self.web.startService()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "scheduler listening on {address} ({listen}); store: {store}; {tasks} unfinished tasks",
            address=describe_address(port.getHost()),
            listen=self.listen,
            store=describe_store(self.store),
            tasks=self.core.stats()["tasks"]["queued"],
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopping: Deferred[Any] = maybeDeferred(port.stopListening) if port is not None else succeed(None)
        if self.web is not None and self.web.running:
            web = self.web
            stopping.addBoth(lambda kept: maybeDeferred(web.stopService).addBoth(lambda _: kept))
        stopping.addBoth(self._close_store)
        return stopping

    def _close_store(self, passthrough: Any) -> Any:
        self.core.stop()
        self.store.close()
        return passthrough


@provider(ILogObserver)
def _not_twisted_retry_line(event: dict[str, Any]) -> None:
    """
    ClientService's own retry line ("Scheduling retry 1 to connect ... in
    0.9398695857530154 seconds.") says neither why nor in a round number:
    the worker logs its own instead (``WorkerService._retry_policy``).
    """
    if str(event.get("log_format", "")).startswith("Scheduling retry"):
        return
    globalLogPublisher(event)


class _ClientService(ClientService):
    _log = Logger(namespace="twisted.application.internet.ClientService", observer=_not_twisted_retry_line)


@implementer(IStreamClientEndpoint)
class _Remembering:
    """An endpoint that remembers why its last connection attempt failed (for the retry line)."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        self.last_failure = "not connected yet"

    def connect(self, factory: Any) -> Deferred[Any]:
        connecting: Deferred[Any] = self._endpoint.connect(factory)
        connecting.addErrback(self._failed)
        return connecting

    def _failed(self, failure: Failure) -> Failure:
        self.last_failure = failure.getErrorMessage()
        return failure


class _DaemonThreadPool(ThreadPool):
    """
    A thread pool whose threads do not hold the process at exit: a worker
    that gives up on a task still running in a thread (its grace is over, or
    a second signal) must be able to exit; the scheduler runs the task again.
    """

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        thread = threading.Thread(*args, **kwargs)
        thread.daemon = True
        return thread


class WorkerService(MultiService):
    """
    One worker: a reconnecting connection to a scheduler, a thread pool for
    blocking handlers and, with ``pool="process"``, a process pool for the
    handlers that declare themselves CPU-bound, so one worker process can
    keep every core busy.

    Stopping is warm (SIGTERM or SIGINT, through twistd): the worker takes
    nothing new, hands the tasks it holds and has not started back to the
    scheduler at once (so other workers run them now), lets the running ones
    finish and delivers their results, for up to ``grace`` seconds, then
    exits.  A second signal, or the end of the grace, gives up on what still
    runs (the scheduler runs it again, counting a lost worker) and exits at
    once.  ``grace`` 0: no warm shutdown.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connect: IStreamClientEndpoint,
        handlers: HandlerRegistry,
        slots: int,
        name: str,
        reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY,
        pool: str = "thread",
        secret: bytes = b"",
        grace: float = DEFAULT_GRACE,
        address: str = "",
    ) -> None:
        super().__init__()
        #: The scheduler's address as the user gave it, for the logs.
        self.address = address or str(connect)
        if grace < 0:
            raise ValueError("grace must be 0 or more seconds")
        self.grace = grace
        self._draining: Deferred[None] | None = None
        self._grace_call: Any = None
        self._abandoned = False
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}")
        if not secret:
            raise ValueError("a worker needs the workers' secret")
        self.reactor = reactor
        self._authentication_failures = 0
        self._retry_call: Any = None
        self.threads = _DaemonThreadPool(minthreads=0, maxthreads=slots, name="taskmesh-blocking")
        self.processes: multiprocessing.pool.Pool | None = None
        self.pool = pool
        self.slots = slots
        self.factory = WorkerFactory(
            reactor,
            handlers,
            slots,
            name,
            self.run_blocking,
            on_refused=self._refused,
            secret=secret,
            on_authentication_failed=self._authentication_failed,
            on_welcomed=self._welcomed,
            call_from_thread=reactor.callFromThread,
            # A hot standby answered: the next attempt goes where it points.
            on_standby=connect.follow if isinstance(connect, FollowingEndpoint) else lambda leader: None,
        )
        #: Progress reported by tasks in the process pool comes back through
        #: this queue, drained by a thread of its own.
        self._progress_queue: Any = None
        self._progress_drain: threading.Thread | None = None
        self._endpoint = _Remembering(connect)
        self._backoff = backoffPolicy(initialDelay=0.2, maxDelay=reconnect_max_delay)
        self.connection = _ClientService(
            self._endpoint, self.factory, retryPolicy=self._retry_policy, clock=reactor
        )
        self.connection.setServiceParent(self)

    def _retry_policy(self, attempt: int) -> float:
        """
        The backoff, and one line an operator can use: why (the connection
        was lost, or the attempt failed, and how) and when, rounded.
        """
        lost = self.factory.last_lost
        just_lost = lost is not None and attempt == 1
        # Connections that ended before a welcome count as failed attempts too
        # (ClientService counts only those that did not connect at all).
        attempt += self.factory.unwelcomed
        delay: float = self._backoff(attempt)
        if just_lost:
            why = f"lost the connection: {lost}"
        else:
            why = self._endpoint.last_failure
        self.factory.last_lost = None
        self.log.info(
            "cannot reach the scheduler at {address} ({reason}); trying again in {delay:.1f} s "
            "(attempt {attempt})",
            address=self.address,
            reason=why,
            delay=delay,
            attempt=attempt,
        )
        return delay

    def _refused(self, reason: str) -> None:
        """A scheduler that refuses this worker will refuse it again: stop, do not retry."""
        self.connection.stopService()
        if self.reactor.running:
            self.reactor.stop()

    def _authentication_failed(self, reason: str) -> None:
        """
        A wrong secret stays wrong until someone fixes it: back off (1 s, 2 s,
        ... up to a minute) instead of hammering the scheduler, and say why.
        """
        self._authentication_failures += 1
        delay = min(AUTH_RETRY_MAX_DELAY, 2.0 ** (self._authentication_failures - 1))
        self.log.error(
            "authentication failed: {reason}; trying again in {delay:.0f} s", reason=reason, delay=delay
        )
        if self._retry_call is None or not self._retry_call.active():
            stopping = self.connection.stopService()
            self._retry_call = self.reactor.callLater(delay, self._retry, stopping)

    def _retry(self, stopped: Deferred[None]) -> None:
        self._retry_call = None
        if self.running:
            stopped.addCallback(lambda _: self.connection.startService())

    def _welcomed(self) -> None:
        self._authentication_failures = 0

    def run_blocking(self, cpu_bound: bool, function: Any, argument: Any) -> Deferred[Any]:
        """Run ``function(argument)`` off the reactor thread."""
        if cpu_bound and self.processes is not None:
            result: Deferred[Any] = Deferred()
            # The pool's callbacks run in its result thread: hop back to the reactor.
            self.processes.apply_async(
                function,
                (argument,),
                callback=lambda value: self.reactor.callFromThread(result.callback, value),
                error_callback=lambda error: self.reactor.callFromThread(result.errback, Failure(error)),
            )
            return result
        return deferToThreadPool(self.reactor, self.threads, function, argument)

    def startService(self) -> None:
        self.threads.start()
        if self.pool == "process":
            # Spawned, not forked: a fork of a process with a running reactor
            # and threads is not safe.  The processes import the handler anew.
            context = multiprocessing.get_context("spawn")
            self._progress_queue = context.SimpleQueue()
            self.processes = context.Pool(
                self.slots, initializer=install_child_outbox, initargs=(self._progress_queue,)
            )
            self._progress_drain = threading.Thread(
                target=self._drain_progress, name="taskmesh-progress-drain", daemon=True
            )
            self._progress_drain.start()
        super().startService()

    def _drain_progress(self) -> None:
        """In a thread: batches of progress from the pool's processes, handed to the reactor."""
        queue = self._progress_queue
        while True:
            try:
                records = queue.get()
            except (EOFError, OSError):  # the queue was closed
                return
            if records is None:
                return
            self.reactor.callFromThread(self.factory.post_progress, records)

    def stopService(self) -> Deferred[None]:
        """
        A warm shutdown (see the class): the Deferred fires once the running
        tasks are reported (or given up on) and the pools are stopped;
        twistd waits for it before the reactor stops.
        """
        if self._draining is not None:
            return self._draining
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        current = self.factory.current
        self._draining = Deferred()
        self._draining.addCallback(self._stop_now)
        running = current.drain(self._drained) if current is not None and self.grace > 0 else 0
        if not running:
            self._drained()
            return self._draining
        self.log.info(
            "waiting up to {grace:g} s for {running} running tasks to finish (a second signal stops at once)",
            grace=self.grace,
            running=running,
        )
        self._grace_call = self.reactor.callLater(
            self.grace, self._give_up, f"the {self.grace:g} s grace is over"
        )
        self.factory.lost = self._lost_while_draining
        self._catch_second_signal()
        return self._draining

    def _catch_second_signal(self) -> None:
        """From now on SIGTERM or SIGINT ends the wait (twistd's own handler would only log an error)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            self.reactor.callFromThread(self._give_up, f"a second signal ({name})")

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)

    def _give_up(self, why: str) -> None:
        """Stop waiting for the running tasks: they are abandoned (the scheduler runs them again)."""
        if self._draining is None or self._draining.called:
            return
        current = self.factory.current
        running = current.core.busy if current is not None and current.core is not None else 0
        self.log.warn(
            "{why}: exiting now; {running} running tasks are abandoned (the scheduler runs them again)",
            why=why,
            running=running,
        )
        self._abandoned = True
        if current is not None:
            current.close()
        self._drained()

    def _lost_while_draining(self) -> None:
        if self._draining is not None and not self._draining.called:
            self.log.warn(
                "lost the scheduler while shutting down: the running tasks' results cannot be "
                "delivered (the scheduler runs them again)"
            )
            self._abandoned = True
            self._drained()

    def _drained(self) -> None:
        """Every running task is reported (or given up on): stop."""
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        draining = self._draining
        if draining is not None and not draining.called:
            draining.callback(None)

    def _stop_now(self, _: object) -> Deferred[None]:
        self.factory.lost = lambda: None
        current = self.factory.current
        if current is not None:
            current.flush()  # the last results, before the close drops what is queued
            # Our own close first: it stops being the transport's producer,
            # without which a TLS connection would never start its shutdown.
            current.close()
        stopping = maybeDeferred(super().stopService)
        stopping.addBoth(self._stop_pools)
        return stopping

    def _stop_pools(self, passthrough: Any) -> Any:
        if self._abandoned:
            # A thread still runs an abandoned task: do not wait for it (its
            # threads are daemons; the process exits without them).
            self.threads.joined = True
            self.threads.started = False
        else:
            self.threads.stop()
        if self.processes is not None:
            # The pool's processes end with the worker, whatever they run.
            self.processes.terminate()
            self.processes.join()
            self.processes = None
        if self._progress_queue is not None:
            self._progress_queue.put(None)  # ends the drain thread
            self._progress_queue = None
        return passthrough


#: Exit status of a scheduler that lost its leadership (a supervisor starts it again, as a standby).
EXIT_LOST_LEADERSHIP = 75


class StandbySchedulerService(Service):
    """
    One of several schedulers on one shared store (PostgreSQL), hot standbys
    of each other: it listens at once, and until it is elected it answers
    every connection with the leader's address (``taskmesh.net.standby``).
    Elected, it opens the store, takes back every unfinished task (the
    core's restart path) and serves.  If it loses its leadership it stops
    serving at once: every connection aborted, nothing more committed (the
    store writes only on the session that holds the lock, see
    ``taskmesh.store.election``),
    and the process exits with ``EXIT_LOST_LEADERSHIP``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen: str,
        election: Any,
        advertise: str,
        open_core: Any,
        secrets: RoleSecrets,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
        name: str = "taskmesh-scheduler",
        factory_options: dict[str, Any] | None = None,
        tls: ServerTLS | None = None,
        web: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease: float = DEFAULT_LEASE,
        exit: Any = os._exit,
    ) -> None:
        self.reactor = reactor
        self.listen = listen
        self.election = election
        #: ``open_core(store)`` -> core: the scheduler core over the store the election opened.
        self.open_core = open_core
        self.secrets = secrets
        self.max_frame = max_frame
        self.max_payload = max_payload
        self.scheduler_name = name
        self.factory_options = dict(factory_options or {})
        self.web_endpoint = web
        self.exit = exit
        self.endpoint = serverFromString(reactor, listen)
        self.leadership = Leadership(
            reactor, election, advertise, self._lead, self._step_down, poll_interval, lease, self._standby
        )
        self._announced = False
        options = self.factory_options
        self.standby = StandbyFactory(
            reactor,
            secrets,
            lambda: self.leadership.leader,
            name,
            limits=options.get("limits"),
            max_connections=options.get("max_connections", DEFAULT_MAX_CONNECTIONS),
        )
        self.switch = LeaderSwitch(self.standby)
        self.listening_factory = tls.wrap(self.switch) if tls is not None else self.switch
        self.port: IListeningPort | None = None
        self.core: Scheduler | None = None
        self.store: ITaskStore | None = None
        self.factory: SchedulerFactory | None = None
        self.web: Service | None = None

    def startService(self) -> None:
        super().startService()
        failures: list[Failure] = []
        self.endpoint.listen(self.listening_factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()
        self.election.start(self.reactor)
        self.leadership.start()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        leadership = self.leadership
        host, _, advertised_port = leadership.advertise.rpartition(":")
        if advertised_port == "0":  # listening on port 0: advertise the port we got
            leadership.advertise = self.election.advertise = f"{host}:{getattr(port.getHost(), 'port', 0)}"

    def _announce(self, role: str) -> None:
        """
        "listening" is logged once the first election answer is in: a peer
        that connects on reading it meets a leader, or a standby that knows one.
        """
        if self._announced or self.port is None:
            return
        self._announced = True
        self.log.info(
            "scheduler listening on {address} ({listen}) {role}",
            address=describe_address(self.port.getHost()),
            listen=self.listen,
            role=role,
        )

    def _standby(self, leader: str) -> None:
        self._announce(f"as a hot standby; the leader is at {leader or '(none yet)'}")
        if self.web_endpoint is not None and self.web is None and self.core is None and self.running:
            # Once known to be a standby (not at start, where it would race
            # an elected neighbour on the same host for the address): until
            # elected, /health answers 503 "standby" on the dashboard's address.
            from taskmesh.web.standby import StandbyWebService

            self.web = StandbyWebService(
                self.reactor, self.web_endpoint, lambda: self.leadership.leader, self.secrets.client
            )
            self.web.startService()

    def _lead(self) -> None:
        """Elected: open the store under our term, recover, serve."""
        try:
            store = self.election.store
            core = self.open_core(store)
            factory = SchedulerFactory(
                core,
                self.reactor,
                self.secrets,
                self.scheduler_name,
                self.max_frame,
                self.max_payload,
                **self.factory_options,
            )
            core.start()
        except Exception as e:
            self._step_down(f"cannot open the store as the leader: {e}")
            return
        self.core, self.store, self.factory = core, store, factory
        self.switch.lead(factory)
        if self.web_endpoint is not None:
            # The standby's pages make way for the dashboard, on the same address.
            standby_web = self.web
            stopped = maybeDeferred(standby_web.stopService) if standby_web is not None else succeed(None)
            stopped.addBoth(lambda _: self._serve_dashboard(core, store))
        self.log.info("leading: serving on {listen}", listen=self.listen)
        self._announce(f"as the leader, advertised as {self.leadership.advertise}")

    def _serve_dashboard(self, core: Scheduler, store: ITaskStore) -> None:
        if not self.running or self.core is not core:
            return  # stopped, or stepped down, while the standby's pages closed
        from taskmesh.web import WebService

        assert self.web_endpoint is not None
        self.web = WebService(self.reactor, self.web_endpoint, core, self.secrets.client, store)
        self.web.startService()

    def _step_down(self, reason: str) -> None:
        """Never two leaders: drop every peer and leave, without committing anything more."""
        factory = self.factory
        for protocol in list(factory.connections if factory is not None else ()):
            protocol.transport.abortConnection()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        self.log.critical(
            "stopped serving: {reason}; exiting with status {status}",
            reason=reason,
            status=EXIT_LOST_LEADERSHIP,
        )
        self.reactor.callLater(0.1, self.exit, EXIT_LOST_LEADERSHIP)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.leadership.stop()
        port, self.port = self.port, None
        stopping: Deferred[Any] = maybeDeferred(port.stopListening) if port is not None else succeed(None)
        if self.web is not None and self.web.running:
            web = self.web
            stopping.addBoth(lambda kept: maybeDeferred(web.stopService).addBoth(lambda _: kept))
        stopping.addBoth(self._close)
        return stopping

    def _close(self, passthrough: Any) -> Any:
        if self.core is not None and self.store is not None:
            self.core.stop()
            self.store.close()
        self.election.stop()
        return passthrough
