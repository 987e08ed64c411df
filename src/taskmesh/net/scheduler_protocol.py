"""
The scheduler's end of a connection: translates frames to core calls and back.

One listening port serves both roles; the peer's hello says which.  A
client's submissions become ``Scheduler.submit`` calls, acknowledged once the
store has committed them, and the tasks' Deferreds become result frames; a
worker becomes an ``IWorkerChannel`` the core assigns through, and its result
frames become ``Scheduler.complete`` calls.  No scheduling decision is made
here.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskmesh import wire
from taskmesh.core.scheduler import IWorkerChannel, Job, Scheduler, WorkerState
from taskmesh.errors import StoreUnavailable, TaskCancelled, TaskFailed
from taskmesh.net.framing import FramedProtocol, PeerMisbehaved
from taskmesh.store.interface import State

NO_SUCH_TASK = b"no such task: never submitted, or its result was pruned"

#: Most slots one worker may claim: a sanity bound, not a tuning knob.
MAX_WORKER_SLOTS = 4096

_OUTCOME_STATUS = {
    State.SUCCEEDED: wire.STATUS_OK,
    State.FAILED: wire.STATUS_FAILED,
    State.CANCELLED: wire.STATUS_CANCELLED,
}


@implementer(IWorkerChannel)
class SchedulerProtocol(FramedProtocol):
    """Serves one client or one worker, as its hello declares."""

    log = Logger()

    def __init__(self, factory: SchedulerFactory) -> None:
        super().__init__(factory.clock, factory.max_frame)
        self.factory = factory
        self.core: Scheduler = factory.core
        self.role: int | None = None
        self.name = ""
        self.worker: WorkerState | None = None
        #: This client's open jobs, by id.
        self.jobs: dict[int, Job] = {}

    # -- dispatch ------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        if self.worker is not None:
            self._worker_message(self.worker, message)
        elif self.role == wire.ROLE_CLIENT:
            self._client_message(message)
        else:
            match message:
                case wire.Hello():
                    self._hello(message)
                case wire.Error():
                    self._peer_error(message)
                case _:
                    raise PeerMisbehaved(f"expected a hello first, got {type(message).__name__}")

    def _worker_message(self, worker: WorkerState, message: wire.Message) -> None:
        self.core.heard_from(worker)
        match message:
            case wire.Results(records=records):
                self.core.complete(worker, self._checked_results(records))
            case wire.ChunkResults(records=chunk_records):
                try:
                    self.core.complete_chunks(worker, self._checked_chunks(chunk_records))
                except ValueError as e:
                    raise PeerMisbehaved(str(e)) from None
            case wire.Heartbeat():
                pass
            case wire.Error():
                self._peer_error(message)
            case _:
                raise PeerMisbehaved(f"a worker may not send {type(message).__name__}")

    def _client_message(self, message: wire.Message) -> None:
        match message:
            case wire.Submit(records=submissions):
                self._submit(submissions)
            case wire.Query(records=queries):
                if self.core.store_error is None:
                    self.core.after_commit(self._answer, queries)
                else:  # the store cannot commit: answer from what is durable, now
                    self._answer(queries)
            case wire.Cancel(records=task_ids):
                self._cancel(task_ids)
            case wire.StatusRequest():
                self.send(wire.StatusReport(json.dumps(self.core.stats())))
            case wire.JobItems():
                self._job_items(message)
            case wire.JobSubmit():
                self._open_job(message)
            case wire.JobEnd(job_id=job_id, total=total):
                job = self._job(job_id)
                if job.received != total:
                    raise PeerMisbehaved(f"job {job.id} ends at {total} items but {job.received} came")
                self.core.end_job(job)
                self._forget_if_done(job)
            case wire.Error():
                self._peer_error(message)
            case _:
                raise PeerMisbehaved(f"a client may not send {type(message).__name__}")

    def _peer_error(self, error: wire.Error) -> None:
        """The peer gives up on us, saying why: log it and close."""
        self.log.warn(
            "{peer} reported error {code}: {message}", peer=self.peer, code=error.code, message=error.message
        )
        self.closing = True
        self.transport.loseConnection()

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
        policy = self.core.policy
        self.send(
            wire.Welcome(
                name=self.factory.name,
                max_frame=self.factory.max_frame,
                max_payload=self.factory.max_payload,
                heartbeat_ms=round(policy.heartbeat_interval * 1000),
                tolerance=policy.heartbeat_tolerance,
            )
        )
        if hello.role == wire.ROLE_WORKER:
            self.worker = self.core.add_worker(
                self, f"{self.name}@{self.peer}", hello.slots, frozenset(hello.task_types)
            )

    # -- client role ---------------------------------------------------------

    def _submit(self, records: list[wire.SubmitRecord]) -> None:
        max_payload = self.factory.max_payload
        core = self.core
        # (request, task id, flags, no_result) accepted, or (request, reason) refused,
        # answered together and in order once the store has made them durable.
        answers: list[tuple] = []
        for request, task_type, payload, options in records:
            if len(payload) > max_payload:
                answers.append(
                    (request, f"payload of {len(payload)} bytes exceeds the limit of {max_payload} bytes")
                )
                continue
            if not task_type:
                answers.append((request, "the task type is empty"))
                continue
            try:
                task_id, duplicate = core.submit(task_type, payload, options)
            except StoreUnavailable as e:
                answers.append((request, str(e)))
                continue
            if duplicate:
                flags = wire.ACCEPTED_DUPLICATE
            else:
                flags = 0 if core.has_worker_for(task_type) else wire.ACCEPTED_NO_WORKER
            answers.append((request, task_id, flags, options.no_result))
        if answers:
            core.after_commit_or_refuse(self._acknowledge, self._refuse, answers)
        if self.factory.clients_paused:
            # Flow control: this connection submits while the queue is at its
            # bound; stop reading it until there is room.  Other connections
            # (status, queries, results) are not held up.
            self.factory.pause(self)

    def _acknowledge(self, answers: list[tuple]) -> None:
        queue = self.queue
        for answer in answers:
            if len(answer) == 2:
                queue(wire.Rejected, answer, len(answer[1]))
                continue
            request, task_id, flags, no_result = answer
            queue(wire.Accepted, (request, task_id, flags), 0)
            if not no_result:
                self._watch(task_id)

    def _refuse(self, reason: str, answers: list[tuple]) -> None:
        """The store could not make these submissions durable: refuse them all, in order."""
        self._acknowledge([(answer[0], reason) if len(answer) == 4 else answer for answer in answers])

    def _watch(self, task_id: int) -> None:
        """Send this task's outcome when it has one (now, if it has)."""
        try:
            found = self.core.watch(task_id)
        except StoreUnavailable as e:
            # The store cannot even be read: drop the connection with the
            # reason; a client waiting by id reconnects and asks again.
            self.fail(wire.ERROR_INTERNAL, str(e))
            return
        if isinstance(found, Deferred):
            found.addCallbacks(self._succeeded, self._failed, callbackArgs=(task_id,), errbackArgs=(task_id,))
        elif found is not None:
            self._send_result(task_id, _OUTCOME_STATUS[found.state], found.value)
        else:
            self._send_result(
                task_id, wire.STATUS_UNKNOWN, b"no such task: never submitted, or its result was pruned"
            )

    def _answer(self, records: list[wire.QueryRecord]) -> None:
        for task_id, wait in records:
            state = self.core.state_of(task_id)
            if state is None or wait:
                self._watch(task_id)
            else:
                self._send_result(task_id, wire.STATUS_PENDING, state.name.lower().encode())

    def _cancel(self, task_ids: list[int]) -> None:
        for task_id in task_ids:
            self.core.cancel(task_id, f"cancelled by {self.name}")
        self.core.after_commit(self._answer, [(task_id, False) for task_id in task_ids])

    # -- client role: jobs ---------------------------------------------------

    def _open_job(self, request: wire.JobSubmit) -> None:
        if not request.task_type:
            raise PeerMisbehaved("a job needs a task type")
        job = self.core.open_job(
            request.task_type, self._report, request.priority, request.chunk_size, request.size_hint
        )
        self.jobs[job.id] = job
        flags = 0 if self.core.has_worker_for(request.task_type) else wire.ACCEPTED_NO_WORKER
        self.send(wire.JobAccepted(request.request, job.id, flags))

    def _report(self, job: Job, records: list[tuple[int, int, bytes]]) -> None:
        queue = self.queue
        job_id = job.id
        for index, status, value in records:
            queue(wire.JobResults, (job_id, index, status, value), len(value))
        self._forget_if_done(job)

    def _forget_if_done(self, job: Job) -> None:
        if job.ended and not job.outstanding:
            self.jobs.pop(job.id, None)

    def _job(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.ended:
            raise PeerMisbehaved(f"job {job_id} is not open on this connection")
        return job

    def _job_items(self, items: wire.JobItems) -> None:
        job = self._job(items.job_id)
        max_payload = self.factory.max_payload
        payloads = items.payloads
        if any(len(payload) > max_payload for payload in payloads):
            # Answer the oversized items at once; run the others.
            runnable = []
            for offset, payload in enumerate(payloads):
                index = items.first_index + offset
                if len(payload) > max_payload:
                    job.received += 1
                    reason = f"payload of {len(payload)} bytes exceeds the limit of {max_payload} bytes"
                    self.queue(
                        wire.JobResults, (job.id, index, wire.STATUS_FAILED, reason.encode()), len(reason)
                    )
                else:
                    runnable.append((index, payload))
            for index, payload in runnable:
                self.core.add_job_items(job, index, [payload])
            return
        self.core.add_job_items(job, items.first_index, payloads)

    def _send_result(self, task_id: int, status: int, value: bytes) -> None:
        self.queue(wire.Results, (task_id, status, value), len(value))

    def _succeeded(self, value: bytes, task_id: int) -> bytes:
        try:
            self.queue(wire.Results, (task_id, wire.STATUS_OK, value), len(value))
        except Exception:  # a bug here must not turn the result into a failure for other watchers
            self.log.failure("bug while sending the result of task {task_id}", task_id=task_id)
        return value  # others may watch the same task

    def _failed(self, failure: Failure, task_id: int) -> Failure:
        if failure.check(TaskCancelled):
            status = wire.STATUS_CANCELLED
        elif failure.check(TaskFailed):
            status = wire.STATUS_FAILED
        else:
            self.log.failure("unexpected failure of task {task_id}", failure, task_id=task_id)
            status = wire.STATUS_FAILED
        try:
            self._send_result(task_id, status, str(failure.value).encode("utf-8"))
        except Exception:
            self.log.failure("bug while sending the outcome of task {task_id}", task_id=task_id)
        return failure  # others may watch the same task

    # -- worker role: IWorkerChannel -----------------------------------------

    def _checked_chunks(self, records: list[wire.ChunkResultRecord]) -> list[wire.ChunkResultRecord]:
        """As ``_checked_results``, for the outcomes of chunks: too large fails."""
        max_payload = self.factory.max_payload
        checked = []
        for chunk_id, offset, outcomes in records:
            if any(len(value) > max_payload for _, value in outcomes):
                outcomes = [
                    (status, value)
                    if len(value) <= max_payload
                    else (wire.STATUS_FAILED, _too_large(len(value), max_payload))
                    for status, value in outcomes
                ]
            checked.append((chunk_id, offset, outcomes))
        return checked

    def _checked_results(self, records: list[wire.ResultRecord]) -> list[wire.ResultRecord]:
        """
        A worker may only report success or failure, and a result must fit
        the payload limit (or no client could be sent it): a result too large
        becomes the task's failure, with a reason that says so.
        """
        max_payload = self.factory.max_payload
        checked = records
        for index, (task_id, status, value) in enumerate(records):
            if status not in (wire.STATUS_OK, wire.STATUS_FAILED):
                raise PeerMisbehaved(f"a worker may not report status {status}")
            if len(value) > max_payload:
                if checked is records:
                    checked = list(records)
                checked[index] = (task_id, wire.STATUS_FAILED, _too_large(len(value), max_payload))
        return checked

    def assign(self, task_id: int, task_type: str, payload: bytes) -> None:
        self.queue(wire.Assign, (task_id, task_type, payload), len(payload) + len(task_type))

    def assign_chunk(self, chunk_id: int, task_type: str, payloads: list[bytes]) -> None:
        size = sum(map(len, payloads)) + 4 * len(payloads) + len(task_type)
        self.queue(wire.AssignChunks, (chunk_id, task_type, payloads), size)

    def cancel(self, task_id: int) -> None:
        self.queue(wire.Cancel, task_id, 0)

    def heartbeat(self) -> None:
        self.send(wire.Heartbeat())

    def drop(self, reason: str) -> None:
        self.fail(wire.ERROR_SILENT, reason)

    # -- end -----------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.worker is not None:
            worker, self.worker = self.worker, None
            self.core.remove_worker(worker, reason.getErrorMessage())
        elif self.role == wire.ROLE_CLIENT:
            self.factory.client_left(self)
            for job in self.jobs.values():
                self.core.close_job(job)
            self.jobs.clear()


def _too_large(size: int, limit: int) -> bytes:
    return f"the worker's answer of {size} bytes exceeds the limit of {limit} bytes".encode()


class SchedulerFactory(Factory):
    """Builds a SchedulerProtocol for every connection, and pauses clients when the queue is full."""

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
        # A chunk travels in one frame: keep every chunk well inside it.
        core.fit_chunks_to(max_frame // 2)
        self.core = core
        self.clock = clock
        self.name = name
        self.max_frame = max_frame
        self.max_payload = max_payload
        self.clients_paused = False
        self._paused: set[SchedulerProtocol] = set()
        core.on_queue_full = self._queue_full

    def buildProtocol(self, addr: Any) -> SchedulerProtocol:
        return SchedulerProtocol(self)

    def client_left(self, client: SchedulerProtocol) -> None:
        self._paused.discard(client)

    def pause(self, client: SchedulerProtocol) -> None:
        """Stop reading a client that submits while the queue is full: slowed, not dropped."""
        if client not in self._paused:
            self._paused.add(client)
            client.transport.pauseProducing()

    def _queue_full(self, full: bool) -> None:
        self.clients_paused = full
        if not full:
            paused, self._paused = self._paused, set()
            for client in paused:
                client.transport.resumeProducing()
