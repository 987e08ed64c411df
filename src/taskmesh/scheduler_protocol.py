"""
The scheduler's end of a connection: translates frames to core calls and back.

One listening port serves both roles; the peer's hello says which.  A
client's submissions become ``Scheduler.submit`` calls and their Deferreds
become result frames; a worker becomes an ``IWorkerChannel`` the core assigns
through, and its result frames become ``Scheduler.complete`` calls.  No
scheduling decision is made here.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskmesh import wire
from taskmesh.framing import FramedProtocol, PeerMisbehaved
from taskmesh.scheduler import IWorkerChannel, Scheduler, TaskFailed, WorkerState

#: Most slots one worker may claim: a sanity bound, not a tuning knob.
MAX_WORKER_SLOTS = 4096


@implementer(IWorkerChannel)
class SchedulerProtocol(FramedProtocol):
    """Serves one client or one worker, as its hello declares."""

    log = Logger()

    def __init__(self, factory: "SchedulerFactory") -> None:
        super().__init__(factory.clock, factory.max_frame)
        self.factory = factory
        self.core: Scheduler = factory.core
        self.role: int | None = None
        self.name = ""
        self.worker: WorkerState | None = None

    # -- dispatch ------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        kind = type(message)
        if self.role is None:
            if kind is not wire.Hello:
                raise PeerMisbehaved(f"expected a hello first, got {kind.__name__}")
            self._hello(message)  # type: ignore[arg-type]
        elif self.role == wire.ROLE_CLIENT and kind is wire.Submit:
            self._submit(message.records)  # type: ignore[union-attr]
        elif self.role == wire.ROLE_WORKER and kind is wire.Results:
            self.core.complete(self.worker, message.records)  # type: ignore[arg-type,union-attr]
        elif kind is wire.Error:
            self.log.warn(
                "{peer} reported error {code}: {message}",
                peer=self.peer,
                code=message.code,  # type: ignore[union-attr]
                message=message.message,  # type: ignore[union-attr]
            )
            self.closing = True
            self.transport.loseConnection()
        else:
            role = wire.ROLE_NAMES[self.role]
            raise PeerMisbehaved(f"a {role} may not send {kind.__name__}")

    def _hello(self, hello: wire.Hello) -> None:
        if hello.version != wire.PROTOCOL_VERSION:
            self.fail(
                wire.ERROR_VERSION,
                f"protocol version {hello.version} is not supported; "
                f"this scheduler speaks version {wire.PROTOCOL_VERSION}",
            )
            return
        if hello.role not in wire.ROLE_NAMES:
            raise PeerMisbehaved(f"unknown role {hello.role}")
        if hello.role == wire.ROLE_WORKER:
            if not 1 <= hello.slots <= MAX_WORKER_SLOTS:
                raise PeerMisbehaved(f"a worker needs 1 to {MAX_WORKER_SLOTS} slots, not {hello.slots}")
            if not hello.task_types:
                raise PeerMisbehaved("a worker must announce at least one task type")
        self.role = hello.role
        self.name = hello.name or self.peer
        self.send(
            wire.Welcome(
                name=self.factory.name,
                max_frame=self.factory.max_frame,
                max_payload=self.factory.max_payload,
            )
        )
        if hello.role == wire.ROLE_WORKER:
            self.worker = self.core.add_worker(
                self, f"{self.name}@{self.peer}", hello.slots, frozenset(hello.task_types)
            )
        else:
            self.log.debug("client {name} connected from {peer}", name=self.name, peer=self.peer)

    # -- client role ---------------------------------------------------------

    def _submit(self, records: list[wire.SubmitRecord]) -> None:
        max_payload = self.factory.max_payload
        core = self.core
        queue = self.queue
        for request, task_type, payload in records:
            if len(payload) > max_payload:
                queue(
                    wire.Rejected,
                    (request, f"payload of {len(payload)} bytes exceeds the limit of {max_payload} bytes"),
                    100,
                )
                continue
            if not task_type:
                queue(wire.Rejected, (request, "the task type is empty"), 100)
                continue
            flags = 0 if core.has_worker_for(task_type) else wire.ACCEPTED_NO_WORKER
            task = core.submit(task_type, payload)
            queue(wire.Accepted, (request, task.id, flags), 0)
            task.deferred.addCallbacks(
                self._succeeded, self._failed, callbackArgs=(task.id,), errbackArgs=(task.id,)
            )

    def _succeeded(self, value: bytes, task_id: int) -> None:
        self.queue(wire.Results, (task_id, wire.STATUS_OK, value), len(value))

    def _failed(self, failure: Failure, task_id: int) -> None:
        if failure.check(TaskFailed):
            reason = str(failure.value)
        else:
            self.log.failure("unexpected failure of task {task_id}", failure, task_id=task_id)
            reason = "internal error in the scheduler"
        encoded = reason.encode("utf-8")
        self.queue(wire.Results, (task_id, wire.STATUS_FAILED, encoded), len(encoded))

    # -- worker role: IWorkerChannel -----------------------------------------

    def assign(self, task_id: int, task_type: str, payload: bytes) -> None:
        self.queue(wire.Assign, (task_id, task_type, payload), len(payload) + len(task_type))

    # -- end -----------------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.worker is not None:
            worker, self.worker = self.worker, None
            self.core.remove_worker(worker, reason.getErrorMessage())


class SchedulerFactory(Factory):
    """Builds a SchedulerProtocol for every connection to the scheduler."""

    noisy = False

    def __init__(
        self,
        core: Scheduler,
        clock: IReactorTime,
        name: str = "taskmesh-scheduler",
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if max_payload + wire.MAX_RECORD_OVERHEAD + wire.FRAME_OVERHEAD > max_frame:
            raise ValueError(
                f"a payload limit of {max_payload} bytes does not fit in frames of {max_frame} bytes"
            )
        self.core = core
        self.clock = clock
        self.name = name
        self.max_frame = max_frame
        self.max_payload = max_payload

    def buildProtocol(self, addr: object) -> SchedulerProtocol:
        return SchedulerProtocol(self)
