"""
The Python API: connect to a scheduler, submit tasks, get Deferreds back.

    client = await Client.connect("localhost:9001")
    digest = await client.submit("Hello, World!")       # b"dffd60..."
    task_id = await client.enqueue("Hello, World!")    # durable, not waited for
    digest = await client.result(task_id)               # from any connection, later
    await client.close()
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol

from taskmesh import wire
from taskmesh.client.mapping import DEFAULT_WINDOW, MapSummary, Progress, Writer, run_map
from taskmesh.errors import SchedulerGone, TaskCancelled, TaskFailed, TaskPending, TaskRejected, TaskUnknown
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, client_endpoint
from taskmesh.net.client_protocol import ClientProtocol, outcome_error
from taskmesh.net.credentials import peer_secret
from taskmesh.net.tls import ClientTLS

__all__ = [
    "Client",
    "MapSummary",
    "SchedulerGone",
    "TaskCancelled",
    "TaskFailed",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
]

#: How long connect() waits for the scheduler's handshake before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0

Payload = str | bytes


def task_options(
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 0,
    key: str | None = None,
    retry_on_error: bool = False,
    no_result: bool = False,
) -> wire.TaskOptions:
    """Options for a submission; the defaults share one object and cost one byte."""
    if (priority, timeout, max_attempts, key, retry_on_error, no_result) == (
        0,
        None,
        0,
        None,
        False,
        False,
    ):
        return wire.DEFAULT_OPTIONS
    if timeout is not None:
        wire.timeout_milliseconds(timeout)
    if key is not None:
        wire.check_key(key)
    if not 0 <= max_attempts <= 0xFFFF:
        raise ValueError("max_attempts must be 1 to 65535 (0: the scheduler's default)")
    if not -(2**31) <= priority < 2**31:
        raise ValueError("priority must fit in 32 bits")
    return wire.TaskOptions(priority, timeout, max_attempts, key, retry_on_error, no_result)


class Client:
    """A connection to a scheduler, for submitting tasks and fetching results."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        reactor: Any = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
        *,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        tls: ClientTLS | None = None,
    ) -> Client:
        """
        Connect and shake hands.  ``address`` is ``host:port`` or an endpoint
        string.  ``on_no_worker(task_type)`` is called when a task is accepted
        but no connected worker runs its type yet (it waits for one).

        The clients' secret is ``secret``, else ``TASKMESH_SECRET``, else the
        file ``secret_file``, else the one a scheduler of this user created on
        this machine; AuthenticationFailed if the scheduler refuses it or
        cannot prove it knows it.  ``tls`` connects a ``host:port`` over TLS.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if secret is None:
            key = peer_secret(secret_file)
        else:
            key = secret.encode("utf-8") if isinstance(secret, str) else secret
        protocol = ClientProtocol(
            reactor, name=f"{socket.gethostname()}-{os.getpid()}", on_no_worker=on_no_worker, secret=key
        )
        connecting = connectProtocol(client_endpoint(reactor, address, tls), protocol)
        connecting.addTimeout(timeout, reactor)
        await connecting
        ready = protocol.ready
        ready.addTimeout(timeout, reactor)
        try:
            await ready
        except BaseException:
            protocol.transport.abortConnection()
            raise
        return cls(protocol)

    def submit(
        self,
        payload: Payload,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
    ) -> Deferred[bytes]:
        """
        Run one task and wait for it.  The Deferred fires with the result's
        bytes, or fails with TaskFailed (the message says why), TaskCancelled,
        TaskRejected, or SchedulerGone.  A str payload is sent as UTF-8.

        ``timeout`` bounds each attempt's execution (seconds); a timed-out
        attempt is retried with exponential backoff up to ``max_attempts``
        (0: the scheduler's default, 3).  ``retry_on_error`` retries a
        handler's exception the same way instead of failing at once.  A
        second submission with the same ``key`` is not run again: it gets the
        first task's result.  Higher ``priority`` runs first.
        """
        options = task_options(priority, timeout, max_attempts, key, retry_on_error)
        return self._protocol.submit(wire.check_task_type(task_type), _as_bytes(payload), options)

    def enqueue(
        self,
        payload: Payload,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
    ) -> Deferred[int]:
        """
        Queue one task without waiting for it: the Deferred fires with its id
        once the scheduler has made it durable.  Fetch the result later with
        ``result(task_id)``, from this connection or any other.
        """
        options = task_options(priority, timeout, max_attempts, key, retry_on_error, True)
        return self._protocol.submit(wire.check_task_type(task_type), _as_bytes(payload), options)

    async def result(self, task_id: int, wait: bool = True) -> bytes:
        """
        A task's result by id.  With ``wait`` it waits until the task is
        finished; without, an unfinished task raises TaskPending (its state
        is in ``.state``).  TaskUnknown: no such id, or its result was pruned.
        """
        status, value = await self._protocol.query(task_id, wait)
        if status == wire.STATUS_OK:
            return value
        raise outcome_error(task_id, status, value)

    async def cancel(self, task_id: int) -> str:
        """Cancel a task; returns its state afterwards ('cancelled', 'succeeded' or 'failed')."""
        status, value = await self._protocol.cancel(task_id)
        if status == wire.STATUS_UNKNOWN:
            raise outcome_error(task_id, status, value)
        return {
            wire.STATUS_OK: "succeeded",
            wire.STATUS_FAILED: "failed",
            wire.STATUS_CANCELLED: "cancelled",
            wire.STATUS_PENDING: value.decode("utf-8", "replace"),
        }[status]

    async def map_stream(
        self,
        items: Iterable[Payload],
        write: Writer,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        chunk_size: int = 0,
        window: int = DEFAULT_WINDOW,
        size_hint: int = 0,
        progress: Progress = lambda done, failed: None,
    ) -> MapSummary:
        """
        Run every item as a task; ``write(index, ok, value)`` is called for
        each answer in input order, as soon as every earlier item has one.
        The scheduler cuts the items into chunks (``chunk_size`` 0: sized to
        the job's speed); at most ``window`` items are in flight, so memory
        stays bounded however many items there are.  A dropped connection
        ends the map with SchedulerGone (the ``taskmesh map`` command
        reconnects and goes on instead).
        """
        protocol = self._protocol

        async def same_connection() -> ClientProtocol:
            return protocol

        return await run_map(
            same_connection,
            (_as_bytes(item) for item in items),
            write,
            task_type,
            priority=priority,
            chunk_size=chunk_size,
            window=window,
            size_hint=size_hint,
            progress=progress,
        )

    async def map(
        self,
        items: Iterable[Payload],
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        chunk_size: int = 0,
    ) -> list[bytes | TaskFailed]:
        """
        Run every item as a task and return the results in input order: the
        result's bytes, or a TaskFailed saying why that item failed.  Holds
        every result in memory; for large inputs use ``map_stream``.
        """
        results: list[bytes | TaskFailed] = []
        await self.map_stream(
            items,
            lambda index, ok, value: results.append(
                value if ok else TaskFailed(value.decode("utf-8", "replace"))
            ),
            task_type,
            priority=priority,
            chunk_size=chunk_size,
        )
        return results

    def status(self) -> Deferred[dict[str, Any]]:
        """The scheduler's workers and task counts, as a dict (see ``taskmesh status --json``)."""
        return self._protocol.status()

    @property
    def protocol(self) -> ClientProtocol:
        """This connection's protocol, for tools built on it (the map driver)."""
        return self._protocol

    @property
    def max_payload(self) -> int:
        welcome = self._protocol.welcome
        return welcome.max_payload if welcome else 0

    def close(self) -> Deferred[None]:
        """Send what is queued and disconnect; what is still pending fails with SchedulerGone."""
        protocol = self._protocol
        if not protocol.closing:
            protocol.flush()
            protocol.closing = True
            protocol.transport.loseConnection()
        return protocol.lost


def _as_bytes(payload: Payload) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else payload
