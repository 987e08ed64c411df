"""
The client's connection to a scheduler, sans-I/O: messages in, answers out.

Everything a client knows about the protocol lives here once, in the style of
h11's ``Connection``: the peer side of the handshake (hello, the scheduler's
proof checked, ours sent, the welcome and its version), request numbers,
acknowledgements, results, queries, cancels, status and jobs (maps).  It
does no I/O and knows no event loop: a driver feeds it decoded messages
(``message_received``) and tells it when the connection is gone
(``connection_lost``); it writes through an ``Output`` the driver provides,
and answers through ``Answer`` objects the driver creates.

Two drivers use it: ``ClientProtocol`` on Twisted (its answers are
Deferreds, its output a ``FramedProtocol`` with batching per reactor turn
and backpressure) and the native asyncio client (``taskmesh.aio``: its
answers are asyncio futures, its output a ``RecordBatcher`` below).  So the
Twisted, blocking and asyncio clients speak exactly the same protocol.

An answer is fired at most once, and never after its caller gave up on it
(a Deferred cancelled by a timeout, a future cancelled by ``wait_for``): a
late result for an abandoned wait is dropped, not an error.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from taskmesh import wire
from taskmesh.codec import decode_result, task_failed
from taskmesh.errors import (
    AuthenticationFailed,
    NotLeader,
    OperationFailed,
    ScheduleRefused,
    SchedulerGone,
    TaskFailed,
    TaskPending,
    TaskProgress,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.net.auth import PeerHandshake
from taskmesh.net.frames import PREFIX

# (framing.py imports no reactor: the asyncio client may import it)
from taskmesh.net.framing import PeerMisbehaved


class Answer(Protocol):
    """What the core fires: a Deferred, or an asyncio future with these two methods."""

    @property
    def called(self) -> bool: ...
    def callback(self, result: Any) -> Any: ...
    def errback(self, fail: Any = None) -> Any: ...


class Output(Protocol):
    """Where the core's messages go: the driver's transport, batched."""

    #: True once the driver is closing: requests are refused from then on.
    closing: bool

    def send(self, message: wire.Message) -> None:
        """Send one message now, after anything already queued."""

    def queue(self, message_class: type, record: object, size: int) -> None:
        """Queue one record of a batched message, to leave at the end of this turn."""

    def fail(self, code: int, reason: str) -> None:
        """Tell the scheduler why (an Error frame) and close."""

    def close(self) -> None:
        """Close after what is written."""

    def welcomed(self, welcome: wire.Welcome) -> None:
        """The handshake is done: follow the welcome's frame limit and heartbeat."""


def outcome_error(task_id: int, status: int, value: bytes) -> Exception:
    """What a result record means for someone waiting on it."""
    if status == wire.STATUS_FAILED:
        return task_failed(value)
    if status == wire.STATUS_CANCELLED:
        return task_failed(value, cancelled=True)
    if status == wire.STATUS_PENDING:
        state, progress = wire.parse_pending(value)
        if progress is None:
            return TaskPending(task_id, state, due=wire.parse_due(value))
        done, total, note = progress
        return TaskPending(task_id, state, TaskProgress(done, total or None, note))
    return TaskUnknown(f"task {task_id}: {value.decode('utf-8', 'replace')}")


def cancelled_state(task_id: int, status: int, value: bytes) -> str:
    """A cancel's answer as the task's state afterwards; TaskUnknown for no such task."""
    if status == wire.STATUS_UNKNOWN:
        raise outcome_error(task_id, status, value)
    return {
        wire.STATUS_OK: "succeeded",
        wire.STATUS_FAILED: "failed",
        wire.STATUS_CANCELLED: "cancelled",
    }.get(status) or value.decode("utf-8", "replace")


def result_value(task_id: int, status: int, value: bytes, json: bool) -> Any:
    """A query's answer as what ``result`` returns: the value, or the outcome's error raised."""
    if status == wire.STATUS_OK:
        return decode_result(value) if json else value
    raise outcome_error(task_id, status, value)


#: Turns a result's bytes into what a submitter's answer fires with (JSON, for a task function).
Decode = Callable[[bytes], Any]
#: Called with [(index, status, value), ...] as a job's items finish.
JobListener = Callable[[list[tuple[int, int, bytes]]], None]
#: Called with a submission's task id once the scheduler has accepted it.
OnId = Callable[[int], None]


#: What a submission waits with: (task type, answer, wants the result, decode, on_id).
_Request = tuple[str, Answer, bool, Decode | None, OnId | None]


def _deliver(entry: _Request, task_id: int, status: int, value: bytes) -> None:
    """A final result record for one submission's answer (unless its caller gave up)."""
    waiting = entry[1]
    if waiting.called:
        return
    decode = entry[3]
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


def _fire(answer: Answer, value: Any) -> None:
    if not answer.called:
        answer.callback(value)


def _fail(answer: Answer, error: Exception) -> None:
    if not answer.called:
        answer.errback(error)


class ClientConnection:
    """One client connection's protocol state: handshake, requests and their answers."""

    def __init__(
        self,
        output: Output,
        name: str,
        secret: bytes,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
    ) -> None:
        self._output = output
        self._handshake = PeerHandshake(secret, wire.Hello(role=wire.ROLE_CLIENT, name=name))
        #: The hello frame's body, which the driver sends first (the proofs cover these bytes).
        self.hello_body = self._handshake.hello_body
        #: Who the scheduler is, for messages (the driver sets it once connected).
        self.peer = "unknown peer"
        self.welcome: wire.Welcome | None = None
        self.gone = False
        #: Why the scheduler said it closed (an Error frame), or why authentication failed.
        self.error: str | None = None
        self.auth_failure: str | None = None
        #: Set when the scheduler answered as a standby: the leader's address ("" if none is known).
        self.standby: str | None = None
        self._on_no_worker = on_no_worker
        self._next_request = 0
        # request number -> (task type, answer, wants the result, decode, on_id)
        self._requests: dict[int, _Request] = {}
        # task id -> the request waiting for its result (one, the usual case:
        # the same tuple, moved, no allocation per task), or a list of them
        self._waiters: dict[int, _Request | list[_Request]] = {}
        # task id -> answers of its final (status, value) record
        self._finals: dict[int, list[Answer]] = {}
        # task id -> answers of the next (status, value) record, pending or final
        self._peeks: dict[int, list[Answer]] = {}
        self._status: deque[Answer] = deque()
        #: Answers of schedule commands, in the order sent (the scheduler answers in order).
        self._schedule_answers: deque[Answer] = deque()
        # request number -> answer of an operator's request (ListTasks, RetryTasks, PurgeTasks)
        self._operations: dict[int, Answer] = {}
        # request number -> (answer of (job id, flags), results callback), until accepted
        self._job_requests: dict[int, tuple[Answer, JobListener]] = {}
        # job id -> results callback
        self._jobs: dict[int, JobListener] = {}

    @property
    def challenge_answered(self) -> bool:
        return self._handshake.answered

    # -- requests ------------------------------------------------------------

    def submit(
        self,
        answer: Answer,
        task_type: str,
        payload: bytes,
        options: wire.TaskOptions = wire.DEFAULT_OPTIONS,
        decode: Decode | None = None,
        on_id: OnId | None = None,
    ) -> None:
        """
        Queue one task.  ``answer`` fires with the result bytes (or what
        ``decode`` makes of them: a ValueError from it is a TaskFailed), or,
        when ``options.no_result`` is set, with the task id once the
        scheduler has made the task durable.  ``on_id`` is told the id then,
        whichever it is.
        """
        welcome = self.welcome
        # refuse()'s conditions, inline: this runs once per task.
        if welcome is None or self.gone or self._output.closing or len(payload) > welcome.max_payload:
            self.refuse(answer, len(payload))
            return
        request = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._requests[request] = (task_type, answer, not options.no_result, decode, on_id)
        self._output.queue(wire.Submit, (request, task_type, payload, options), len(payload) + len(task_type))

    def query(self, answer: Answer, task_id: int, wait: bool) -> None:
        """The task's (status, value) record; without ``wait``, the next one, maybe pending."""
        if self.refuse(answer):
            return
        (self._finals if wait else self._peeks).setdefault(task_id, []).append(answer)
        self._output.queue(wire.Query, (task_id, wait), 0)

    def cancel(self, answer: Answer, task_id: int) -> None:
        """Cancel; the answer is the task's (status, value) afterwards."""
        if self.refuse(answer):
            return
        self._peeks.setdefault(task_id, []).append(answer)
        self._output.queue(wire.Cancel, task_id, 0)

    def status(self, answer: Answer) -> None:
        if self.refuse(answer):
            return
        self._status.append(answer)
        self._output.send(wire.StatusRequest())

    def schedule(self, answer: Answer, command: wire.ScheduleCommand) -> None:
        """
        A schedule command; the answer fires with the schedule (a dict), the
        list of them (``list``), or fails with ScheduleRefused and the reason.
        """
        if self.refuse(answer, len(command.payload)):
            return
        self._schedule_answers.append(answer)
        self._output.send(command)

    def operate(self, answer: Answer, request: Callable[[int], wire.Message]) -> None:
        """
        An operator's request: ``request(number)`` builds the ListTasks,
        RetryTasks or PurgeTasks; the answer fires with the Answer's JSON
        object, or fails with OperationFailed when it carries an error.
        """
        if self.refuse(answer):
            return
        number = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._operations[number] = answer
        self._output.send(request(number))

    def open_job(
        self,
        answer: Answer,
        task_type: str,
        on_results: JobListener,
        priority: int = 0,
        chunk_size: int = 0,
        size_hint: int = 0,
    ) -> None:
        """Open a job (a map); the answer fires with (job id, accepted flags)."""
        if self.refuse(answer):
            return
        request = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        self._job_requests[request] = (answer, on_results)
        self._output.send(wire.JobSubmit(request, task_type, priority, chunk_size, size_hint))

    def send_items(self, job_id: int, first_index: int, payloads: list[bytes]) -> None:
        """Items of an open job, with consecutive indexes from first_index."""
        self._output.send(wire.JobItems(job_id, first_index, payloads))

    def end_job(self, job_id: int, total: int) -> None:
        """No more items: ``total`` were sent for this job."""
        self._output.send(wire.JobEnd(job_id, total))

    def forget_job(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)

    def refuse(self, answer: Answer, payload_size: int = 0) -> bool:
        """Fail ``answer`` at once, sending nothing, if the request cannot be made."""
        if self.welcome is None or self.gone or self._output.closing:
            answer.errback(SchedulerGone("not connected to a scheduler"))
            return True
        if payload_size > self.welcome.max_payload:
            answer.errback(
                TaskRejected(
                    f"payload of {payload_size} bytes exceeds the scheduler's limit "
                    f"of {self.welcome.max_payload} bytes"
                )
            )
            return True
        return False

    # -- answers -------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        """Handle one decoded message; PeerMisbehaved if the scheduler may not send it now."""
        match message:
            case wire.JobResults(records=job_records):
                self._job_results(job_records)
            case wire.Results(records=results):
                self._results(results)
            case wire.Accepted(records=accepted):
                requests = self._requests
                waiters = self._waiters
                for request, task_id, flags in accepted:
                    entry = requests.pop(request, None)
                    if entry is None:
                        raise PeerMisbehaved(f"answer to request {request}, which is not pending")
                    if flags & wire.ACCEPTED_NO_WORKER:
                        self._on_no_worker(entry[0])
                    on_id = entry[4]
                    if on_id is not None:
                        on_id(task_id)
                    if entry[2]:  # wants the result
                        waiting = waiters.get(task_id)
                        if waiting is None:
                            waiters[task_id] = entry
                        elif isinstance(waiting, list):
                            waiting.append(entry)
                        else:  # a second wait for the same task (a key's duplicate)
                            waiters[task_id] = [waiting, entry]
                    else:
                        _fire(entry[1], task_id)
            case wire.Rejected(records=rejected):
                for request, reason in rejected:
                    _fail(self._pop_request(request)[1], TaskRejected(reason))
            case wire.JobAccepted(request=request, job_id=job_id, flags=flags):
                found = self._job_requests.pop(request, None)
                if found is None:
                    raise PeerMisbehaved(f"answer to job request {request}, which is not pending")
                answer, listener = found
                self._jobs[job_id] = listener
                _fire(answer, (job_id, flags))
            case wire.StatusReport(json=report) if self._status:
                try:
                    status = json.loads(report)
                except ValueError:
                    status = None
                if not isinstance(status, dict):
                    raise PeerMisbehaved("the status report is not a JSON object")
                _fire(self._status.popleft(), status)
            case wire.ScheduleAnswer(ok=ok, json=text) if self._schedule_answers:
                answer = self._schedule_answers.popleft()
                if not ok:
                    _fail(answer, ScheduleRefused(text))
                    return
                try:
                    found = json.loads(text)
                except ValueError:
                    raise PeerMisbehaved("a schedule answer is not JSON") from None
                _fire(answer, found)
            case wire.Answer(request=request, json=text):
                operation = self._operations.pop(request, None)
                if operation is None:
                    raise PeerMisbehaved(f"answer to request {request}, which is not pending")
                try:
                    found = json.loads(text)
                except ValueError:
                    found = None
                if not isinstance(found, dict):
                    raise PeerMisbehaved("the answer is not a JSON object")
                if "error" in found:
                    _fail(operation, OperationFailed(str(found["error"])))
                else:
                    _fire(operation, found)
            case wire.Challenge() if self.welcome is None and not self._handshake.answered:
                self._answer_challenge(message)
            case wire.Welcome() if self.welcome is None and (
                self._handshake.answered or message.version != wire.PROTOCOL_VERSION
            ):
                if message.version != wire.PROTOCOL_VERSION:
                    raise PeerMisbehaved(
                        f"the scheduler speaks protocol version {message.version}; "
                        f"this client speaks {wire.PROTOCOL_VERSION}"
                    )
                self.welcome = message
                self._output.welcomed(message)
            case wire.Standby(leader=leader) if self.welcome is None and self._handshake.answered:
                self.standby = leader
                self.error = (
                    f"{self.peer} is a standby scheduler; the leader is at {leader}"
                    if leader
                    else f"{self.peer} is a standby scheduler and knows no leader yet"
                )
                self._output.close()
            case wire.Heartbeat() if self.welcome is not None:
                pass
            case wire.Error():
                if self.welcome is None and message.code == wire.ERROR_AUTH:
                    self.auth_failure = (
                        f"the scheduler at {self.peer} refused our secret: {message.message} "
                        "(use the scheduler's secret: --secret-file PATH or TASKMESH_SECRET)"
                    )
                self.error = message.message
                self._output.close()
            case _:
                raise PeerMisbehaved(f"a client does not expect {type(message).__name__} now")

    def _answer_challenge(self, challenge: wire.Challenge) -> None:
        try:
            proof = self._handshake.answer(challenge)
        except AuthenticationFailed as e:
            self.auth_failure = f"{e} (scheduler {challenge.name!r} at {self.peer})"
            self._output.fail(wire.ERROR_AUTH, str(e))
            return
        self._output.send(proof)

    def _results(self, records: list[wire.ResultRecord]) -> None:
        waiters = self._waiters
        peeks = self._peeks
        finals = self._finals
        for task_id, status, value in records:
            if peeks:
                for answer in peeks.pop(task_id, ()):
                    _fire(answer, (status, value))
            if status == wire.STATUS_PENDING:
                continue
            if finals:
                for answer in finals.pop(task_id, ()):
                    _fire(answer, (status, value))
            entry = waiters.pop(task_id, None)
            if entry is None:
                continue
            if isinstance(entry, tuple):  # the usual case: one wait, a result without decoding
                waiting = entry[1]
                if status == wire.STATUS_OK and entry[3] is None:
                    if not waiting.called:
                        waiting.callback(value)
                    continue
                _deliver(entry, task_id, status, value)
            else:
                for each in entry:
                    _deliver(each, task_id, status, value)

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

    def _pop_request(self, request: int) -> tuple[str, Answer, bool, Decode | None, OnId | None]:
        found = self._requests.pop(request, None)
        if found is None:
            raise PeerMisbehaved(f"answer to request {request}, which is not pending")
        return found

    # -- the end -------------------------------------------------------------

    def ready_failure(self, why: str) -> Exception:
        """Why the handshake did not finish: a refused secret, or the connection lost."""
        if self.auth_failure is not None:
            return AuthenticationFailed(self.auth_failure)
        if self.standby is not None:
            return NotLeader(self.error or "a standby scheduler", self.standby or None)
        return SchedulerGone(f"connection to the scheduler lost: {self.error or why}")

    def connection_lost(self, why: str) -> None:
        """The connection is gone: every answer still waiting fails with SchedulerGone, saying why."""
        self.gone = True
        why = self.error or why
        waiting: list[Answer] = [entry[1] for entry in self._requests.values()]
        for waiters in self._waiters.values():
            if isinstance(waiters, tuple):
                waiting.append(waiters[1])
            else:
                waiting.extend(entry[1] for entry in waiters)
        for records in (*self._finals.values(), *self._peeks.values()):
            waiting.extend(records)
        waiting.extend(self._status)
        waiting.extend(self._schedule_answers)
        self._schedule_answers.clear()
        waiting.extend(self._operations.values())
        self._operations.clear()
        waiting.extend(answer for answer, _ in self._job_requests.values())
        self._job_requests.clear()
        self._jobs.clear()
        self._requests.clear()
        self._waiters.clear()
        self._finals.clear()
        self._peeks.clear()
        self._status.clear()
        for answer in waiting:
            _fail(answer, SchedulerGone(f"connection to the scheduler lost before the answer came: {why}"))


class RecordBatcher:
    """
    Sans-I/O batching of outgoing records, for drivers without FramedProtocol
    (the asyncio client): records queued during one turn of the loop leave
    together, in as few frames as the scheduler's frame limit allows, in the
    order they were queued.  ``data()`` takes the bytes to write.
    """

    def __init__(self, send_limit: int = wire.DEFAULT_MAX_FRAME) -> None:
        self.send_limit = send_limit
        self._segments: list[list[Any]] = []
        self._out: list[bytes] = []

    @property
    def queued(self) -> bool:
        return bool(self._segments)

    def frame(self, body: bytes) -> None:
        """One whole frame's body, after what is queued."""
        self._flush_segments()
        self._out.append(PREFIX.pack(len(body)) + body)

    def send(self, message: wire.Message) -> None:
        self.frame(wire.encode(message))

    def queue(self, message_class: type, record: object, size: int) -> None:
        size += wire.RECORD_OVERHEAD
        segments = self._segments
        if segments:
            last = segments[-1]
            if last[0] is message_class and last[2] + size <= self.send_limit:
                last[1].append(record)
                last[2] += size
                return
        segments.append([message_class, [record], wire.FRAME_OVERHEAD + size])

    def _flush_segments(self) -> None:
        segments, self._segments = self._segments, []
        for message_class, records, _ in segments:
            self._encode(message_class, records)

    def _encode(self, message_class: type, records: list[Any]) -> None:
        data = wire.encode(message_class(records))
        if len(data) > self.send_limit and len(records) > 1:
            half = len(records) // 2
            self._encode(message_class, records[:half])
            self._encode(message_class, records[half:])
        else:
            self._out.append(PREFIX.pack(len(data)) + data)

    def data(self) -> bytes:
        """Everything queued and sent so far, as bytes to write; empties the batcher."""
        self._flush_segments()
        out, self._out = self._out, []
        return b"".join(out)
