"""
The client's end of a connection to the scheduler, on Twisted.

The protocol itself (handshake, request numbers, acknowledgements, results,
queries, jobs) is ``taskmesh.net.connection.ClientConnection``, sans-I/O and
shared with the asyncio client; this class only drives it: bytes in through
``FramedProtocol`` (limits, deadlines, backpressure), records out batched per
reactor turn, Deferreds as the answers.  If the connection drops, every
Deferred still waiting fails with a reason that says so: nothing hangs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.errors import (
    NotTaskmesh,
    SchedulerGone,
    TaskFailed,
    TaskPending,
    TaskProgress,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.net.connection import ClientConnection, Decode, JobListener, OnId, outcome_error
from taskmesh.net.framing import ConnectionLimits, FramedProtocol

__all__ = [
    "ClientProtocol",
    "Decode",
    "JobListener",
    "SchedulerGone",
    "TaskFailed",
    "TaskPending",
    "TaskProgress",
    "TaskRejected",
    "TaskUnknown",
    "outcome_error",
]


class ClientProtocol(FramedProtocol):
    """Submits tasks, queries and cancels them, over one connection."""

    log = Logger()
    expected_peer = "taskmesh scheduler"

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
        limits: ConnectionLimits | None = None,
        secret: bytes = b"",
    ) -> None:
        super().__init__(clock, limits or ConnectionLimits())
        self.name = name
        self.core = ClientConnection(self, name, secret, on_no_worker)
        #: Fires with the scheduler's Welcome once the handshake is done.
        self.ready: Deferred[wire.Welcome] = Deferred()
        #: Fires (with None) once the connection is closed, whoever closed it.
        self.lost: Deferred[None] = Deferred()

    @property
    def welcome(self) -> wire.Welcome | None:
        return self.core.welcome

    @property
    def challenge_answered(self) -> bool:
        return self.core.challenge_answered

    def connectionMade(self) -> None:
        super().connectionMade()
        self.core.peer = self.peer
        self.flush()
        self.sendString(self.core.hello_body)

    def welcomed(self, welcome: wire.Welcome) -> None:
        """The core's handshake is done: deadlines off, the welcome's limits and heartbeat on."""
        self.handshake_done()
        self.set_max_frame(welcome.max_frame)
        if welcome.heartbeat_ms:
            self.keep_alive(welcome.heartbeat_ms / 1000, welcome.tolerance)
        self.ready.callback(welcome)

    # -- requests: a Deferred each ------------------------------------------

    def submit(
        self,
        task_type: str,
        payload: bytes,
        options: wire.TaskOptions = wire.DEFAULT_OPTIONS,
        decode: Decode | None = None,
        on_id: OnId | None = None,
        answer: Deferred[Any] | None = None,
    ) -> Deferred[Any]:
        """
        Queue one task.  The Deferred fires with the result bytes (or what
        ``decode`` makes of them), or, when ``options.no_result`` is set,
        with the task id once the scheduler has made the task durable.
        """
        waiting: Deferred[Any] = Deferred() if answer is None else answer
        self.core.submit(waiting, task_type, payload, options, decode, on_id)
        return waiting

    def query(self, task_id: int, wait: bool) -> Deferred[tuple[int, bytes]]:
        """The task's outcome as a (status, value) record; without ``wait``, the next record."""
        answer: Deferred[tuple[int, bytes]] = Deferred()
        self.core.query(answer, task_id, wait)
        return answer

    def cancel(self, task_id: int) -> Deferred[tuple[int, bytes]]:
        """Cancel; the answer is the task's outcome afterwards."""
        answer: Deferred[tuple[int, bytes]] = Deferred()
        self.core.cancel(answer, task_id)
        return answer

    def status(self) -> Deferred[dict[str, Any]]:
        answer: Deferred[dict[str, Any]] = Deferred()
        self.core.status(answer)
        return answer

    def schedule(self, command: wire.ScheduleCommand) -> Deferred[Any]:
        """A schedule command; fires with the schedule (or the list), or ScheduleRefused."""
        answer: Deferred[Any] = Deferred()
        self.core.schedule(answer, command)
        return answer

    def operate(self, request: Callable[[int], wire.Message]) -> Deferred[dict[str, Any]]:
        """An operator's request (see ``ClientConnection.operate``): its Answer's JSON object."""
        answer: Deferred[dict[str, Any]] = Deferred()
        self.core.operate(answer, request)
        return answer

    def open_job(
        self,
        task_type: str,
        on_results: JobListener,
        priority: int = 0,
        chunk_size: int = 0,
        size_hint: int = 0,
    ) -> Deferred[tuple[int, int]]:
        """Open a job (a map); fires with (job id, accepted flags)."""
        answer: Deferred[tuple[int, int]] = Deferred()
        self.core.open_job(answer, task_type, on_results, priority, chunk_size, size_hint)
        return answer

    def send_items(self, job_id: int, first_index: int, payloads: list[bytes]) -> None:
        self.core.send_items(job_id, first_index, payloads)

    def end_job(self, job_id: int, total: int) -> None:
        self.core.end_job(job_id, total)

    def forget_job(self, job_id: int) -> None:
        self.core.forget_job(job_id)

    # -- answers -------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        self.core.message_received(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        why = self.closed_because or reason.getErrorMessage()
        if not self.ready.called:
            self.ready.errback(NotTaskmesh(self.foreign) if self.foreign else self.core.ready_failure(why))
        self.core.connection_lost(why)
        self.lost.callback(None)
