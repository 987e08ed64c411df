"""
The Python API: connect to a scheduler, submit tasks, get Deferreds back.

    client = await Client.connect("localhost:9001")
    digest = await client.submit("Hello, World!")       # b"dffd60..."
    await client.close()
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Union

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol

from taskmesh.address import DEFAULT_ADDRESS, client_endpoint
from taskmesh.client_protocol import ClientProtocol, SchedulerGone, TaskRejected
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.scheduler import TaskFailed

__all__ = ["Client", "TaskFailed", "TaskRejected", "SchedulerGone"]

#: How long connect() waits for the scheduler's handshake before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0

Payload = Union[str, bytes]


class Client:
    """A connection to a scheduler, for submitting tasks and awaiting results."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        reactor: object = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
    ) -> "Client":
        """
        Connect and shake hands.  ``address`` is ``host:port`` or an endpoint
        string.  ``on_no_worker(task_type)`` is called when a task is accepted
        but no connected worker runs its type yet (it waits for one).
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        endpoint = client_endpoint(reactor, address)
        protocol = ClientProtocol(
            reactor,  # type: ignore[arg-type]
            name=f"{socket.gethostname()}-{os.getpid()}",
            on_no_worker=on_no_worker,
        )
        connecting = connectProtocol(endpoint, protocol)
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

    def submit(self, payload: Payload, task_type: str = DEFAULT_TASK_TYPE) -> "Deferred[bytes]":
        """
        Run one task.  The Deferred fires with the result's bytes, or fails
        with TaskFailed (the reason is the message), TaskRejected, or
        SchedulerGone.  A str payload is sent as UTF-8.
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return self._protocol.submit(task_type, payload)

    @property
    def max_payload(self) -> int:
        welcome = self._protocol.welcome
        return welcome.max_payload if welcome else 0

    def close(self) -> "Deferred[None]":
        """Send what is queued and disconnect; tasks still pending fail with SchedulerGone."""
        protocol = self._protocol
        if not protocol.closing:
            protocol.flush()
            protocol.closing = True
            protocol.transport.loseConnection()
        return protocol.lost
