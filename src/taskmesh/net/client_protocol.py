"""
The client's end of a connection to the scheduler.

It correlates each submission (by a request number of its own) with the
task id the scheduler answers with, and each result with the Deferreds the
caller holds.  If the connection drops, every Deferred still waiting fails
with a reason that says so: nothing hangs.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.codec import task_failed
from taskmesh.errors import (
    SchedulerGone,
    TaskFailed,
    TaskPending,
    TaskProgress,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.net.auth import AuthenticationFailed
from taskmesh.net.framing import ConnectionLimits, PeerMisbehaved
from taskmesh.net.peer import PeerProtocol


#: What a result record means for someone waiting on it.
def outcome_error(task_id: int, status: int, value: bytes) -> Exception:
    if status == wire.STATUS_FAILED:
        return task_failed(value)
    if status == wire.STATUS_CANCELLED:
        return task_failed(value, cancelled=True)
    if status == wire.STATUS_PENDING:
        state, progress = wire.parse_pending(value)
        if progress is None:
            return TaskPending(task_id, state)
        done, total, note = progress
        return TaskPending(task_id, state, TaskProgress(done, total or None, note))
    return TaskUnknown(f"task {task_id}: {value.decode('utf-8', 'replace')}")


#: Turns a result's bytes into what a submitter's Deferred fires with (JSON, for a task function).
Decode = Callable[[bytes], Any]

#: Called with [(index, status, value), ...] as a job's items finish.
JobListener = Callable[[list[tuple[int, int, bytes]]], None]


class ClientProtocol(PeerProtocol):
    """Submits tasks, queries and cancels them, over one connection."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
        limits: ConnectionLimits | None = None,
        secret: bytes = b"",
    ) -> None:
        super().__init__(clock, limits or ConnectionLimits(), secret)
        self.name = name
        #: Fires with the scheduler's Welcome once the handshake is done.
        self.ready: Deferred[wire.Welcome] = Deferred()
        self.welcome: wire.Welcome | None = None
        #: Fires (with None) once the connection is closed, whoever closed it.
        self.lost: Deferred[None] = Deferred()
        self._on_no_worker = on_no_worker
        self._next_request = 0
        # request number -> (task type, Deferred, wants the result or only the id)
        # (decode: how a result is turned into what the Deferred fires with,
        # None for the bytes themselves)
        self._requests: dict[int, tuple[str, Deferred[Any], bool, Decode | None]] = {}
        # task id -> Deferreds of its result
        self._waiters: dict[int, list[tuple[Deferred[Any], Decode | None]]] = {}
        # task id -> Deferreds of its final (status, value) record
        self._finals: dict[int, list[Deferred[tuple[int, bytes]]]] = {}
        # task id -> Deferreds of the next (status, value) record, pending or final
        self._peeks: dict[int, list[Deferred[tuple[int, bytes]]]] = {}
        self._status: deque[Deferred[dict[str, Any]]] = deque()
        # request number -> (Deferred of (job id, flags), results callback), until accepted
        self._job_requests: dict[int, tuple[Deferred[tuple[int, int]], JobListener]] = {}
        # job id -> results callback
        self._jobs: dict[int, JobListener] = {}
        self._error: str | None = None
        self._auth_failure: str | None = None

    def hello(self) -> wire.Hello:
        return wire.Hello(role=wire.ROLE_CLIENT, name=self.name)

    def authentication_failed(self, reason: str) -> None:
        self._auth_failure = reason

    # -- requests ------------------------------------------------------------

    def submit(
        self,
        task_type: str,
        payload: bytes,
        options: wire.TaskOptions = wire.DEFAULT_OPTIONS,
        decode: Decode | None = None,
    ) -> Deferred[Any]:
        """
        Queue one task.  The Deferred fires with the result bytes (or what
        ``decode`` makes of them: a ValueError from it fails the Deferred
        with TaskFailed), or, when ``options.no_result`` is set, with the
        task id once the scheduler has made the task durable.
        """
        waiting: Deferred[Any] = Deferred()
        if self._refuse(waiting, payload):
            return waiting
        request = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._requests[request] = (task_type, waiting, not options.no_result, decode)
        self.queue(wire.Submit, (request, task_type, payload, options), len(payload) + len(task_type))
        return waiting

    def query(self, task_id: int, wait: bool) -> Deferred[tuple[int, bytes]]:
        """
        The task's outcome as a (status, value) record; without ``wait``, the
        next record, which may say it is still pending.
        """
        answer: Deferred[tuple[int, bytes]] = Deferred()
        if self._refuse(answer, b""):
            return answer
        (self._finals if wait else self._peeks).setdefault(task_id, []).append(answer)
        self.queue(wire.Query, (task_id, wait), 0)
        return answer

    def cancel(self, task_id: int) -> Deferred[tuple[int, bytes]]:
        """Cancel; the answer is the task's outcome afterwards."""
        answer: Deferred[tuple[int, bytes]] = Deferred()
        if self._refuse(answer, b""):
            return answer
        self._peeks.setdefault(task_id, []).append(answer)
        self.queue(wire.Cancel, task_id, 0)
        return answer

    def status(self) -> Deferred[dict[str, Any]]:
        answer: Deferred[dict[str, Any]] = Deferred()
        if self._refuse(answer, b""):
            return answer
        self._status.append(answer)
        self.send(wire.StatusRequest())
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
        if self._refuse(answer, b""):
            return answer
        request = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._job_requests[request] = (answer, on_results)
        self.send(wire.JobSubmit(request, task_type, priority, chunk_size, size_hint))
        return answer

    def send_items(self, job_id: int, first_index: int, payloads: list[bytes]) -> None:
        """Items of an open job, with consecutive indexes from first_index."""
        self.send(wire.JobItems(job_id, first_index, payloads))

    def end_job(self, job_id: int, total: int) -> None:
        """No more items: ``total`` were sent for this job."""
        self.send(wire.JobEnd(job_id, total))

    def _refuse(self, answer: Deferred[Any], payload: bytes) -> bool:
        """Fail ``answer`` at once, sending nothing, if the request cannot be made."""
        if self.welcome is None or self.closing:
            answer.errback(SchedulerGone("not connected to a scheduler"))
            return True
        if len(payload) > self.welcome.max_payload:
            answer.errback(
                TaskRejected(
                    f"payload of {len(payload)} bytes exceeds the scheduler's limit "
                    f"of {self.welcome.max_payload} bytes"
                )
            )
            return True
        return False

    # -- answers -------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        match message:
            case wire.JobResults(records=job_records):
                self._job_results(job_records)
            case wire.Results(records=results):
                self._results(results)
            case wire.Accepted(records=accepted):
                for request, task_id, flags in accepted:
                    task_type, waiting, wants_result, decode = self._pop_request(request)
                    if flags & wire.ACCEPTED_NO_WORKER:
                        self._on_no_worker(task_type)
                    if wants_result:
                        self._waiters.setdefault(task_id, []).append((waiting, decode))
                    else:
                        waiting.callback(task_id)
            case wire.Rejected(records=rejected):
                for request, reason in rejected:
                    self._pop_request(request)[1].errback(TaskRejected(reason))
            case wire.JobAccepted(request=request, job_id=job_id, flags=flags):
                found = self._job_requests.pop(request, None)
                if found is None:
                    raise PeerMisbehaved(f"answer to job request {request}, which is not pending")
                answer, listener = found
                self._jobs[job_id] = listener
                answer.callback((job_id, flags))
            case wire.StatusReport(json=report) if self._status:
                try:
                    status = json.loads(report)
                except ValueError:
                    status = None
                if not isinstance(status, dict):
                    raise PeerMisbehaved("the status report is not a JSON object")
                self._status.popleft().callback(status)
            case wire.Challenge() if self.welcome is None and not self.challenge_answered:
                self.answer_challenge(message)
            case wire.Welcome() if self.welcome is None and (
                self.challenge_answered or message.version != wire.PROTOCOL_VERSION
            ):
                if message.version != wire.PROTOCOL_VERSION:
                    raise PeerMisbehaved(
                        f"the scheduler speaks protocol version {message.version}; "
                        f"this client speaks {wire.PROTOCOL_VERSION}"
                    )
                self.handshake_done()
                self.welcome = message
                self.set_max_frame(message.max_frame)
                if message.heartbeat_ms:
                    self.keep_alive(message.heartbeat_ms / 1000, message.tolerance)
                self.ready.callback(message)
            case wire.Heartbeat() if self.welcome is not None:
                pass
            case wire.Error():
                if self.welcome is None:
                    self.refused_by_scheduler(message)
                self._error = message.message
                self.close()
            case _:
                raise PeerMisbehaved(f"a client does not expect {type(message).__name__} now")

    def _results(self, records: list[wire.ResultRecord]) -> None:
        waiters = self._waiters
        peeks = self._peeks
        finals = self._finals
        for task_id, status, value in records:
            if peeks:
                for answer in peeks.pop(task_id, ()):
                    answer.callback((status, value))
            if status == wire.STATUS_PENDING:
                continue
            if finals:
                for answer in finals.pop(task_id, ()):
                    answer.callback((status, value))
            for waiting, decode in waiters.pop(task_id, ()):
                if status != wire.STATUS_OK:
                    waiting.errback(outcome_error(task_id, status, value))
                elif decode is None:
                    waiting.callback(value)
                else:
                    try:
                        decoded = decode(value)
                    except ValueError as e:
                        waiting.errback(TaskFailed(f"task {task_id}: {e}"))
                    else:
                        waiting.callback(decoded)

    def _job_results(self, records: list[wire.JobResultRecord]) -> None:
        """Hand each job its records, one call per job per frame."""
        jobs = self._jobs
        start = 0
        for end in range(1, len(records) + 1):
            if end == len(records) or records[end][0] != records[start][0]:
                listener = jobs.get(records[start][0])
                if listener is not None:
                    listener([(index, status, value) for _, index, status, value in records[start:end]])
                start = end

    def forget_job(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)

    def _pop_request(self, request: int) -> tuple[str, Deferred[Any], bool, Decode | None]:
        found = self._requests.pop(request, None)
        if found is None:
            raise PeerMisbehaved(f"answer to request {request}, which is not pending")
        return found

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        why = self._error or self.closed_because or reason.getErrorMessage()
        if not self.ready.called:
            if self._auth_failure is not None:
                self.ready.errback(AuthenticationFailed(self._auth_failure))
            else:
                self.ready.errback(SchedulerGone(f"connection to the scheduler lost: {why}"))
        waiting: list[Deferred[Any]] = [entry[1] for entry in self._requests.values()]
        for waiters in self._waiters.values():
            waiting.extend(answer for answer, _ in waiters)
        for records in (*self._finals.values(), *self._peeks.values()):
            waiting.extend(records)
        waiting.extend(self._status)
        waiting.extend(answer for answer, _ in self._job_requests.values())
        self._job_requests.clear()
        self._jobs.clear()
        self._requests.clear()
        self._waiters.clear()
        self._finals.clear()
        self._peeks.clear()
        self._status.clear()
        for answer in waiting:
            answer.errback(SchedulerGone(f"connection to the scheduler lost before the answer came: {why}"))
        self.lost.callback(None)
