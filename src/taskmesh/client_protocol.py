"""
The client's end of a connection to the scheduler.

It correlates each submission (by a request number of its own) with the
task id the scheduler answers with, and each result with the Deferred the
caller holds.  If the connection drops, every Deferred still waiting fails
with a reason that says so: nothing hangs.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.framing import FramedProtocol, PeerMisbehaved
from taskmesh.scheduler import TaskFailed


class TaskRejected(Exception):
    """The scheduler refused a submission (too large, malformed); nothing ran."""


class SchedulerGone(Exception):
    """The connection to the scheduler ended before this task's result came."""


class ClientProtocol(FramedProtocol):
    """Submits tasks and collects their results over one connection."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
    ) -> None:
        super().__init__(clock, wire.DEFAULT_MAX_FRAME)
        self.name = name
        #: Fires with the scheduler's Welcome once the handshake is done.
        self.ready: Deferred[wire.Welcome] = Deferred()
        self.welcome: wire.Welcome | None = None
        #: Fires (with None) once the connection is closed, whoever closed it.
        self.lost: Deferred[None] = Deferred()
        self._on_no_worker = on_no_worker
        self._next_request = 0
        # request number -> (task type, result Deferred), until accepted
        self._requests: dict[int, tuple[str, Deferred[bytes]]] = {}
        # task id -> result Deferred, until its result comes
        self._tasks: dict[int, Deferred[bytes]] = {}
        self._error: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.send(wire.Hello(role=wire.ROLE_CLIENT, name=self.name))

    def submit(self, task_type: str, payload: bytes) -> "Deferred[bytes]":
        """Queue one task; the Deferred fires with its result bytes."""
        result: Deferred[bytes] = Deferred()
        if self.welcome is None or self.closing:
            result.errback(SchedulerGone("not connected to a scheduler"))
            return result
        if len(payload) > self.welcome.max_payload:
            result.errback(
                TaskRejected(
                    f"payload of {len(payload)} bytes exceeds the scheduler's limit "
                    f"of {self.welcome.max_payload} bytes"
                )
            )
            return result
        request = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._requests[request] = (task_type, result)
        self.queue(wire.Submit, (request, task_type, payload), len(payload) + len(task_type))
        return result

    @property
    def pending(self) -> int:
        return len(self._requests) + len(self._tasks)

    def message_received(self, message: wire.Message) -> None:
        kind = type(message)
        if kind is wire.Results:
            tasks = self._tasks
            for task_id, status, value in message.records:  # type: ignore[union-attr]
                result = tasks.pop(task_id, None)
                if result is None:
                    self.log.warn("result for unknown task {task_id}", task_id=task_id)
                elif status == wire.STATUS_OK:
                    result.callback(value)
                else:
                    result.errback(TaskFailed(value.decode("utf-8", "replace")))
        elif kind is wire.Accepted:
            for request, task_id, flags in message.records:  # type: ignore[union-attr]
                task_type, result = self._pop_request(request)
                self._tasks[task_id] = result
                if flags & wire.ACCEPTED_NO_WORKER:
                    self._on_no_worker(task_type)
        elif kind is wire.Rejected:
            for request, reason in message.records:  # type: ignore[union-attr]
                self._pop_request(request)[1].errback(TaskRejected(reason))
        elif kind is wire.Welcome and self.welcome is None:
            self.welcome = message  # type: ignore[assignment]
            self.MAX_LENGTH = self.send_limit = message.max_frame  # type: ignore[union-attr]
            self.ready.callback(message)
        elif kind is wire.Error:
            self._error = message.message  # type: ignore[union-attr]
            self.closing = True
            self.transport.loseConnection()
        else:
            raise PeerMisbehaved(f"a client does not expect {kind.__name__} now")

    def _pop_request(self, request: int) -> tuple[str, Deferred[bytes]]:
        found = self._requests.pop(request, None)
        if found is None:
            raise PeerMisbehaved(f"answer to request {request}, which is not pending")
        return found

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        why = self._error or reason.getErrorMessage()
        gone = SchedulerGone(f"connection to the scheduler lost: {why}")
        if not self.ready.called:
            self.ready.errback(gone)
        waiting = [result for _, result in self._requests.values()]
        waiting.extend(self._tasks.values())
        self._requests.clear()
        self._tasks.clear()
        for result in waiting:
            result.errback(
                SchedulerGone(f"connection to the scheduler lost before the task finished: {why}")
            )
        self.lost.callback(None)
