"""
The worker's end of its connection to the scheduler.

It introduces the worker (name, slots, task types), then feeds assignments
to a fresh ``Worker`` core for this connection and sends the core's outcomes
back in batched result frames.  Reconnecting is not its business: the worker
service wraps the factory in a ``ClientService``.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.framing import FramedProtocol, PeerMisbehaved
from taskmesh.handlers import HandlerRegistry
from taskmesh.worker import RunBlocking, Worker


class WorkerProtocol(FramedProtocol):
    """Speaks for one worker to one scheduler, for one connection."""

    log = Logger()

    def __init__(self, factory: "WorkerFactory") -> None:
        super().__init__(factory.clock, wire.DEFAULT_MAX_FRAME)
        self.factory = factory
        self.core: Worker | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self.send(
            wire.Hello(
                role=wire.ROLE_WORKER,
                name=factory.name,
                slots=factory.slots,
                task_types=factory.handlers.names(),
            )
        )

    def message_received(self, message: wire.Message) -> None:
        kind = type(message)
        if kind is wire.Assign and self.core is not None:
            self.core.assign(message.records)  # type: ignore[union-attr]
        elif kind is wire.Welcome and self.core is None:
            self._welcomed(message)  # type: ignore[arg-type]
        elif kind is wire.Error:
            self.log.error(
                "scheduler {peer} refused us: {message}",
                peer=self.peer,
                message=message.message,  # type: ignore[union-attr]
            )
            self.closing = True
            self.transport.loseConnection()
        else:
            raise PeerMisbehaved(f"a worker does not expect {kind.__name__} now")

    def _welcomed(self, welcome: wire.Welcome) -> None:
        # The scheduler's limits bind both directions of this connection.
        self.MAX_LENGTH = welcome.max_frame
        self.send_limit = welcome.max_frame
        factory = self.factory
        self.core = Worker(
            factory.handlers,
            factory.slots,
            self._report,
            factory.run_blocking,
            max_result=welcome.max_payload,
        )
        self.log.info(
            "connected to scheduler {scheduler} at {peer} as {name} "
            "with {slots} slots for {types}",
            scheduler=welcome.name,
            peer=self.peer,
            name=factory.name,
            slots=factory.slots,
            types=",".join(factory.handlers.names()),
        )
        factory.connected(self)

    def _report(self, task_id: int, status: int, value: bytes) -> None:
        self.queue(wire.Results, (task_id, status, value), len(value))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.core is not None:
            self.core.stop()
            self.log.info(
                "lost the scheduler at {peer}: {reason}",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )


class WorkerFactory(Factory):
    """What every connection of one worker process shares."""

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        handlers: HandlerRegistry,
        slots: int,
        name: str,
        run_blocking: RunBlocking,
        on_connected: Callable[[WorkerProtocol], None] = lambda protocol: None,
    ) -> None:
        self.clock = clock
        self.handlers = handlers
        self.slots = slots
        self.name = name
        self.run_blocking = run_blocking
        self.connected = on_connected

    def buildProtocol(self, addr: object) -> WorkerProtocol:
        return WorkerProtocol(self)
