"""
The scheduler's end of a connection: translates frames to core calls and back.

One listening port serves both roles; the peer's hello says which.  A
client's submissions become ``Scheduler.submit`` calls, acknowledged once the
store has committed them, and the tasks' outcomes become result frames; a
worker becomes an ``IWorkerChannel`` the core assigns through, and its result
frames become ``Scheduler.complete`` calls.  No scheduling decision is made
here.

Every peer is bounded (see ``taskmesh.net.framing`` for bytes and deadlines):
a client may have at most ``max_queries`` queries waiting and ``max_jobs``
jobs open, the scheduler serves at most ``max_connections`` connections, and
idle clients exchange heartbeats with the scheduler like workers do, so a
client that vanished without a FIN is dropped and frees what it held.  Who
waits for which task's outcome is kept in one ``ResultWatchers`` table, told
each outcome by the core (``Scheduler.on_outcome``), not in callbacks on a
Deferred per task, so a connection that leaves takes its
waits with it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskmesh import wire
from taskmesh.core.scheduler import IWorkerChannel, Job, Scheduler, WorkerState, describe_schedule
from taskmesh.core.schedules import ScheduleError
from taskmesh.core.tasks import Task
from taskmesh.errors import StoreUnavailable
from taskmesh.net.auth import AuthenticationFailed, RoleSecrets, SchedulerHandshake
from taskmesh.net.frames import PartialFrameBudget
from taskmesh.net.framing import DEFAULT_FRAME_BUDGET, ConnectionLimits, FramedProtocol, PeerMisbehaved
from taskmesh.store.interface import ScheduleRecord, State

NO_SUCH_TASK = b"no such task: never submitted, or its result was pruned"

#: Most slots one worker may claim: a sanity bound, not a tuning knob.
MAX_WORKER_SLOTS = 4096
#: Queries (for results, or states) one client may have waiting at once.
DEFAULT_MAX_QUERIES = 100_000
#: Jobs (maps) one client may have open at once.
DEFAULT_MAX_JOBS = 64
#: Connections served at once; beyond, new ones are closed at once.
DEFAULT_MAX_CONNECTIONS = 10_000

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
        super().__init__(factory.clock, factory.limits, factory.budget)
        self.factory = factory
        self.core: Scheduler = factory.core
        self.role: int | None = None
        self.name = ""
        self.worker: WorkerState | None = None
        #: This client's open jobs, by id.
        self.jobs: dict[int, Job] = {}
        self._handshake = SchedulerHandshake(factory.secrets, factory.name)
        self._hello_seen: wire.Hello | None = None
        #: Tasks whose outcome this connection waits for (ResultWatchers has the other side).
        self.watching: set[int] = set()
        #: Of those, the ones a query asked for, and queries waiting for a commit.
        self._queried: set[int] = set()
        self._queries_pending = 0
        #: Tasks whose final outcome is queued for this turn: one record
        #: answers every query for it that the client has sent so far.
        self._outcomes_queued: set[int] = set()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connection_made(self)

    # -- dispatch ------------------------------------------------------------

    def message_received(self, message: wire.Message) -> None:
        if self.worker is not None:
            self._worker_message(self.worker, message)
        elif self.role == wire.ROLE_CLIENT:
            self._client_message(message)
        else:
            # The handshake: nothing else is accepted before it completes.
            match message:
                case wire.Hello() if not self._handshake.challenged:
                    self._hello(message)
                case wire.Proof() if self._handshake.challenged:
                    self._proved(message)
                case wire.Error():
                    self._peer_error(message)
                case _ if self._handshake.challenged:
                    raise PeerMisbehaved(f"expected the proof, got {type(message).__name__}")
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
            case wire.Progress(records=progress):
                self.core.progress(worker, progress)
            case wire.Drain(records=lease_ids):
                self.core.drain(worker, lease_ids)
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
                self._count_queries(len(queries))
                if self.core.store_error is None:
                    self.core.after_commit(self._answer, queries)
                else:  # the store cannot commit: answer from what is durable, now
                    self._answer(queries)
            case wire.Cancel(records=task_ids):
                self._cancel(task_ids)
            case wire.StatusRequest():
                self.send(wire.StatusReport(status_report(self.core.stats(), self.send_limit)))
            case wire.ScheduleCommand():
                self._count_queries(1)
                self._schedule(message)
            case wire.JobItems():
                self._job_items(message)
            case wire.JobSubmit():
                if len(self.jobs) >= self.factory.max_jobs:
                    raise LimitPassed(
                        f"more than {self.factory.max_jobs} jobs open on one connection (--max-jobs)"
                    )
                self._open_job(message)
            case wire.JobEnd(job_id=job_id, total=total):
                job = self._job(job_id)
                if job.received != total:
                    raise PeerMisbehaved(f"job {job.id} ends at {total} items but {job.received} came")
                self.core.end_job(job)
                self._forget_if_done(job)
            case wire.ListTasks() | wire.RetryTasks() | wire.PurgeTasks():
                self._operate(message)
            case wire.Heartbeat():
                pass
            case wire.Error():
                self._peer_error(message)
            case _:
                raise PeerMisbehaved(f"a client may not send {type(message).__name__}")

    def _schedule(self, command: wire.ScheduleCommand) -> None:
        """
        A schedule command: the core decides; the answer goes out once what
        it changed is durable (every answer after a commit, so they leave in
        the order the commands came).
        """
        ok, answer = True, ""
        try:
            if command.op == wire.SCHEDULE_ADD:
                if len(command.payload) > self.factory.max_payload:
                    raise ScheduleError(
                        f"payload of {len(command.payload)} bytes exceeds the limit of "
                        f"{self.factory.max_payload} bytes"
                    )
                options = command.options
                record = self.core.add_schedule(
                    ScheduleRecord(
                        name=command.name,
                        cron=command.cron,
                        every=command.every,
                        tz=command.tz,
                        task_type=command.task_type,
                        payload=command.payload,
                        priority=options.priority,
                        timeout=options.timeout,
                        max_attempts=options.max_attempts,
                        retry_on_error=options.retry_on_error,
                        catch_up=command.catch_up,
                        paused=False,
                        next_due=0.0,
                        last_due=None,
                        last_task=None,
                    )
                )
                answer = json.dumps(describe_schedule(record))
            elif command.op == wire.SCHEDULE_LIST:
                answer = json.dumps([describe_schedule(record) for record in self.core.schedules()])
            elif command.op == wire.SCHEDULE_REMOVE:
                if not self.core.remove_schedule(command.name):
                    raise ScheduleError(f"no schedule named {command.name!r}")
                answer = json.dumps({"name": command.name, "removed": True})
            else:
                changed = self.core.pause_schedule(command.name, command.op == wire.SCHEDULE_PAUSE)
                if changed is None:
                    raise ScheduleError(f"no schedule named {command.name!r}")
                answer = json.dumps(describe_schedule(changed))
        except ScheduleError as e:
            ok, answer = False, str(e)
        self.core.after_commit(self._schedule_answer, ok, answer)

    def _schedule_answer(self, ok: bool, answer: str) -> None:
        self._queries_pending -= 1
        if self.closing:
            return
        if ok and len(answer) > self.send_limit - 16:
            ok, answer = False, f"the answer ({len(answer)} bytes) does not fit a frame; list fewer schedules"
        self.send(wire.ScheduleAnswer(ok, answer))

    def _operate(self, message: wire.ListTasks | wire.RetryTasks | wire.PurgeTasks) -> None:
        """
        An operator's request (``taskmesh tasks``, ``retry``, ``purge``): the
        core decides; a list is answered now (it reads committed rows), a
        retry or purge once its writes are durable.  Each counts as a query
        until answered (--max-queries).
        """
        self._count_queries(1)
        core = self.core
        try:
            match message:
                case wire.ListTasks():
                    state = None if message.state == 0 else wire.LIST_STATES[message.state]
                    answer = core.list_tasks(
                        state, message.task_type, message.limit, message.before_id or None
                    )
                    self._send_answer(message.request, answer)
                    return
                case wire.RetryTasks():
                    answer = core.retry(message.task_ids, message.every_failed, message.task_type)
                    self.log.info(
                        "{name} asked to retry: {retried} retried, {refused} refused",
                        name=self.name,
                        retried=len(answer["retried"]),
                        refused=len(answer["refused"]),
                    )
                case wire.PurgeTasks():
                    answer = {"purged": core.purge(message.task_type, f"purged by {self.name}")}
        except StoreUnavailable as e:
            self._send_answer(message.request, {"error": str(e)})
            return
        core.after_commit(self._send_answer, message.request, answer)

    def _send_answer(self, request: int, answer: dict[str, Any]) -> None:
        self._queries_pending -= 1
        if self.closing:
            return
        text = json.dumps(answer, separators=(",", ":"))
        if len(text) + 16 > min(self.send_limit, wire.MAX_ANSWER):
            text = json.dumps(
                {"error": f"the answer of {len(text)} bytes does not fit in a frame; ask for less"}
            )
        self.send(wire.Answer(request, text))

    def _count_queries(self, count: int) -> None:
        waiting = self._queries_pending + len(self._queried) + count
        if waiting > self.factory.max_queries:
            raise LimitPassed(
                f"more than {self.factory.max_queries} queries waiting on one connection (--max-queries)"
            )
        self._queries_pending += count

    def _peer_error(self, error: wire.Error) -> None:
        """The peer gives up on us, saying why: log it and close."""
        self.log.warn(
            "{peer} reported error {code}: {message}",
            peer=self.peer,
            code=error.code,
            message=error.message[:500],
        )
        self.close()

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
        self._hello_seen = hello
        self.send(self._handshake.challenge(hello, self.frame))

    def _proved(self, proof: wire.Proof) -> None:
        hello = self._hello_seen
        assert hello is not None
        try:
            self._handshake.check(proof)
        except AuthenticationFailed as e:
            self.fail(wire.ERROR_AUTH, str(e))
            return
        self.handshake_done()
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
                prefetch=policy.prefetch,
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

    def _acknowledge(self, answers: list[tuple[Any, ...]]) -> None:
        if self.closing:
            return
        queue = self.queue
        watch = self.factory.watchers.watch
        for answer in answers:
            if len(answer) == 2:
                queue(wire.Rejected, answer, len(answer[1]))
                continue
            request, task_id, flags, no_result = answer
            queue(wire.Accepted, (request, task_id, flags), 0)
            if not no_result:
                watch(self, task_id)

    def _refuse(self, reason: str, answers: list[tuple[Any, ...]]) -> None:
        """The store could not make these submissions durable: refuse them all, in order."""
        self._acknowledge([(answer[0], reason) if len(answer) == 4 else answer for answer in answers])

    def _answer(self, records: list[wire.QueryRecord]) -> None:
        """
        Answer queries, once the store has everything before them.  One
        record answers every query for the same task on this connection (a
        client resolves all its waits for a task with it), so asking 200
        times for one large result costs one answer, not 200.
        """
        self._queries_pending -= len(records)
        if self.closing:
            return
        watch = self.factory.watchers.watch
        answered: set[int] = set()
        queued = self._outcomes_queued
        for task_id, wait in records:
            if task_id in answered or task_id in queued or (wait and task_id in self.watching):
                continue
            state = self.core.state_of(task_id)
            if state is None or wait:
                if watch(self, task_id):
                    self._queried.add(task_id)
                else:  # answered now, from the store
                    answered.add(task_id)
                    self._answered_this_turn(task_id)
            else:
                answered.add(task_id)
                if state is State.SCHEDULED:
                    value = wire.pending_value("scheduled", due=self.core.due_of(task_id))
                else:
                    value = wire.pending_value(state.name.lower(), self.core.progress_of(task_id))
                self._send_result(task_id, wire.STATUS_PENDING, value)

    def outcome(self, task_id: int, status: int, value: bytes) -> None:
        """A task has its outcome (from ResultWatchers): one record for every wait on it."""
        self.watching.discard(task_id)
        if self._queried and task_id in self._queried:
            self._queried.discard(task_id)
            self._answered_this_turn(task_id)
        self.queue(wire.Results, (task_id, status, value), len(value))

    def _answered_this_turn(self, task_id: int) -> None:
        """A final record for this task is queued: later queries this turn need no other."""
        if not self._outcomes_queued:
            self.clock.callLater(0, self._outcomes_queued.clear)
        self._outcomes_queued.add(task_id)

    def _cancel(self, task_ids: list[int]) -> None:
        self._count_queries(len(task_ids))
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
            for status, value in outcomes:
                if status == wire.STATUS_RETRY and len(value) < 4:
                    raise PeerMisbehaved("a retry's value needs its 4-byte delay")
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
            if status not in wire.WORKER_STATUSES:
                raise PeerMisbehaved(f"a worker may not report status {status}")
            if status == wire.STATUS_RETRY and len(value) < 4:
                raise PeerMisbehaved("a retry's value needs its 4-byte delay")
            if len(value) > max_payload:
                if checked is records:
                    checked = list(records)
                checked[index] = (task_id, wire.STATUS_FAILED, _too_large(len(value), max_payload))
        return checked

    def assign(
        self,
        task_id: int,
        task_type: str,
        payload: bytes,
        attempt: int,
        max_attempts: int,
        timeout: float | None,
    ) -> None:
        timeout_ms = 0 if timeout is None else wire.timeout_milliseconds(timeout)
        record = (task_id, task_type, payload, attempt, max_attempts, timeout_ms)
        # 8 more bytes than an Assign record: attempt, attempts, timeout.
        self.queue(wire.AssignTasks, record, len(payload) + len(task_type) + 8)

    def assign_group(self, group_id: int, task_type: str, members: list[tuple[int, int, int, bytes]]) -> None:
        size = sum([len(member[3]) for member in members]) + 16 * len(members) + len(task_type)
        self.queue(wire.AssignGroups, (group_id, task_type, members), size)

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
        self.factory.connection_lost(self)
        if self.worker is not None:
            worker, self.worker = self.worker, None
            self.core.remove_worker(worker, reason.getErrorMessage())
        elif self.role == wire.ROLE_CLIENT:
            self.factory.watchers.forget(self)
            for job in self.jobs.values():
                self.core.close_job(job)
            self.jobs.clear()


#: Lists of a status report dropped, in this order, until it fits a frame.
_TRIMMABLE = ("progress", "jobs", "waiting_by_type", "workers")


def status_report(stats: dict[str, Any], max_frame: int) -> str:
    """
    The status as JSON within the peer's frame limit: the longest lists are
    cut (from the end) until it fits, and ``"truncated"`` names the lists
    that were, with how many entries each had; if even that is too large,
    only the task counts are kept and the other fields are named with -1.
    """
    text = json.dumps(stats)
    budget = max_frame - wire.FRAME_OVERHEAD - 4 - 64  # kind, length, and room for "truncated"
    if len(text.encode("utf-8")) <= budget:
        return text
    stats = dict(stats)
    truncated: dict[str, int] = {}
    for name in _TRIMMABLE:
        entries = stats.get(name)
        if not entries:
            continue
        truncated[name] = len(entries)
        items = list(entries.items()) if isinstance(entries, dict) else list(entries)
        while items:
            items = items[: len(items) // 2]
            stats[name] = dict(items) if isinstance(entries, dict) else items
            stats["truncated"] = truncated
            text = json.dumps(stats)
            if len(text.encode("utf-8")) <= budget:
                return text
    # Still too large for a tiny limit: keep the task counts, name what was left out.
    left_out = [name for name in stats if name not in ("tasks", "truncated")]
    truncated.update({name: -1 for name in left_out if name not in truncated})
    return json.dumps({"tasks": stats.get("tasks", {}), "truncated": truncated})


class LimitPassed(PeerMisbehaved):
    """A client passed a per-connection limit; the message names it and its option."""

    code = wire.ERROR_LIMIT


class ResultWatchers:
    """
    Which connections wait for which task's outcome.  The core tells it
    each watched task's outcome once (``Scheduler.on_outcome``: one call,
    no Deferred per task), however many connections wait for it, and a
    connection that leaves is taken out at once: a dead client holds nothing.
    """

    log = Logger()

    def __init__(self, core: Scheduler) -> None:
        self._core = core
        #: task id -> the connection waiting (one, the usual case), or a set of them.
        self._waiting: dict[int, SchedulerProtocol | set[SchedulerProtocol]] = {}
        core.on_outcome = self._outcome

    def __len__(self) -> int:
        return len(self._waiting)

    def watch(self, protocol: SchedulerProtocol, task_id: int) -> bool:
        """
        Send ``protocol`` this task's outcome when it has one; if it already
        has one (or is unknown), send it now and return False.
        """
        try:
            found = self._core.notify(task_id)
        except StoreUnavailable as e:
            # The store cannot even be read: drop the connection with the
            # reason; a client waiting by id reconnects and asks again.
            protocol.fail(wire.ERROR_INTERNAL, str(e))
            return False
        if isinstance(found, Task):
            waiting = self._waiting.get(task_id)
            if waiting is None:
                self._waiting[task_id] = protocol
            elif isinstance(waiting, set):
                waiting.add(protocol)
            elif waiting is not protocol:
                self._waiting[task_id] = {waiting, protocol}
            protocol.watching.add(task_id)
            return True
        if found is not None:
            protocol.outcome(task_id, _OUTCOME_STATUS[found.state], found.value)
        else:
            protocol.outcome(task_id, wire.STATUS_UNKNOWN, NO_SUCH_TASK)
        return False

    def forget(self, protocol: SchedulerProtocol) -> None:
        """A connection left: it waits for nothing any more."""
        waiting = self._waiting
        for task_id in protocol.watching:
            entry = waiting.get(task_id)
            if entry is protocol:
                del waiting[task_id]
            elif isinstance(entry, set):
                entry.discard(protocol)
                if not entry:
                    del waiting[task_id]
        protocol.watching.clear()

    def _outcome(self, task_id: int, state: State, value: bytes) -> None:
        """The core's ``on_outcome``: one record for each connection waiting."""
        waiting = self._waiting.pop(task_id, None)
        if waiting is None:
            return
        status = _OUTCOME_STATUS[state]
        if not isinstance(waiting, set):  # the usual case
            waiting.outcome(task_id, status, value)
            return
        for protocol in waiting:
            try:
                protocol.outcome(task_id, status, value)
            except Exception:  # a bug for one connection must not keep the others from their answer
                self.log.failure("bug while sending the outcome of task {task_id}", task_id=task_id)


def _too_large(size: int, limit: int) -> bytes:
    return f"the worker's answer of {size} bytes exceeds the limit of {limit} bytes".encode()


class SchedulerFactory(Factory):
    """Builds a SchedulerProtocol for every connection, and pauses clients when the queue is full."""

    noisy = False
    log = Logger()

    def __init__(
        self,
        core: Scheduler,
        clock: IReactorTime,
        secrets: RoleSecrets,
        name: str = "taskmesh-scheduler",
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
        limits: ConnectionLimits | None = None,
        frame_budget: int = DEFAULT_FRAME_BUDGET,
        max_queries: int = DEFAULT_MAX_QUERIES,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if max_payload + wire.MAX_RECORD_OVERHEAD + wire.FRAME_OVERHEAD > max_frame:
            raise ValueError(
                f"a payload limit of {max_payload} bytes does not fit in frames of {max_frame} bytes"
            )
        if min(max_queries, max_jobs, max_connections) < 1:
            raise ValueError("max_queries, max_jobs and max_connections must be at least 1")
        # A chunk travels in one frame: keep every chunk well inside it.
        core.fit_chunks_to(max_frame // 2)
        self.core = core
        self.clock = clock
        #: Who may connect: the secret of each role.
        self.secrets = secrets
        self.name = name
        self.max_frame = max_frame
        self.max_payload = max_payload
        self.limits = (limits or ConnectionLimits()).with_max_frame(max_frame)
        #: Bytes that unfinished frames may hold across every connection.
        self.budget = PartialFrameBudget(frame_budget)
        self.max_queries = max_queries
        self.max_jobs = max_jobs
        self.max_connections = max_connections
        self.watchers = ResultWatchers(core)
        self.clients_paused = False
        self.connections: set[SchedulerProtocol] = set()
        self._paused: set[SchedulerProtocol] = set()
        self._refusing = False
        self._heartbeats: LoopingCall | None = None
        core.on_queue_full = self._queue_full

    def buildProtocol(self, addr: Any) -> SchedulerProtocol:
        return SchedulerProtocol(self)

    def startFactory(self) -> None:
        """Listening: idle clients get heartbeats, and are dropped once silent."""
        interval = self.core.policy.heartbeat_interval
        self._heartbeats = LoopingCall(self.check_clients)
        self._heartbeats.clock = self.clock
        self._heartbeats.start(interval, now=False)

    def stopFactory(self) -> None:
        if self._heartbeats is not None and self._heartbeats.running:
            self._heartbeats.stop()
        self._heartbeats = None

    def connection_made(self, protocol: SchedulerProtocol) -> None:
        """Count it; past the connection limit, close it at once (logged once per episode)."""
        if len(self.connections) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                self.log.warn(
                    "{count} connections open, the limit (--max-connections): refusing new ones",
                    count=len(self.connections),
                )
            protocol.fail(
                wire.ERROR_LIMIT, f"the scheduler serves at most {self.max_connections} connections"
            )
            return
        self.connections.add(protocol)

    def connections_by_role(self) -> dict[str, int]:
        """
        Open connections by role, counted when asked (a scrape), not kept up
        to date per connection: ``handshake`` is one whose hello has not
        been proved yet.
        """
        counts = dict.fromkeys((*wire.ROLE_NAMES.values(), "handshake"), 0)
        for protocol in self.connections:
            role = protocol.role
            counts[wire.ROLE_NAMES[role] if role is not None else "handshake"] += 1
        return counts

    def connection_lost(self, protocol: SchedulerProtocol) -> None:
        self.connections.discard(protocol)
        self._paused.discard(protocol)
        if self._refusing and len(self.connections) < self.max_connections * 0.9:
            self._refusing = False
            self.log.info("connections below the limit again: accepting new ones")

    def check_clients(self) -> None:
        """Heartbeat round for clients (the core does it for workers): drop the silent, greet the rest."""
        policy = self.core.policy
        limit = policy.heartbeat_interval * policy.heartbeat_tolerance
        now = self.clock.seconds()
        for protocol in list(self.connections):
            if protocol.role != wire.ROLE_CLIENT or protocol.closing:
                continue
            if protocol.reading_paused:
                # We stopped reading it (flow control, or it does not read):
                # its heartbeats wait unread, so its silence says nothing.
                protocol.last_heard = now
                protocol.send(wire.Heartbeat())
                continue
            silent = now - protocol.last_heard
            if silent > limit:
                protocol.fail(wire.ERROR_SILENT, f"no heartbeat for {silent:.1f} s")
            else:
                protocol.send(wire.Heartbeat())

    def pause(self, client: SchedulerProtocol) -> None:
        """Stop reading a client that submits while the queue is full: slowed, not dropped."""
        if client not in self._paused:
            self._paused.add(client)
            client.pause_reading("queue full")

    def _queue_full(self, full: bool) -> None:
        self.clients_paused = full
        if not full:
            paused, self._paused = self._paused, set()
            for client in paused:
                client.resume_reading("queue full")
