"""
The worker's end of its connection to the scheduler.

It introduces the worker (name, slots, task types), then feeds assignments
and cancellations to a fresh ``Worker`` core for this connection, sends the
core's outcomes back in batched result frames, and keeps the heartbeat the
scheduler's welcome asked for: one every interval, and the connection
dropped if the scheduler is silent for ``tolerance`` intervals (a half-open
TCP connection would otherwise hold the worker forever).  Reconnecting is
not its business: the worker service wraps the factory in a
``ClientService``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.core.timings import WorkerStats
from taskmesh.core.worker import OverCapacity, RunBlocking, Worker
from taskmesh.handlers import HandlerRegistry
from taskmesh.net.framing import ConnectionLimits, PeerMisbehaved
from taskmesh.net.peer import PeerProtocol


class WorkerProtocol(PeerProtocol):
    """Speaks for one worker to one scheduler, for one connection."""

    log = Logger()

    def __init__(self, factory: WorkerFactory) -> None:
        super().__init__(factory.clock, factory.limits, factory.secret)
        self.factory = factory
        self.core: Worker | None = None
        #: A standby named the leader: the next attempt goes there, not counted as a failure.
        self._following = False

    def hello(self) -> wire.Hello:
        factory = self.factory
        return wire.Hello(
            role=wire.ROLE_WORKER,
            name=factory.name,
            slots=factory.slots,
            task_types=factory.handlers.names(),
        )

    def authentication_failed(self, reason: str) -> None:
        self.factory.authentication_failed(reason)

    def message_received(self, message: wire.Message) -> None:
        core = self.core
        match message:
            case wire.AssignTasks(records=task_records) if core is not None:
                self._within_capacity(core.assign_tasks, task_records)
            case wire.AssignGroups(records=groups) if core is not None:
                self._within_capacity(core.assign_groups, groups)
            case wire.AssignChunks(records=records) if core is not None:
                self._within_capacity(core.assign_chunks, records)
            case wire.Assign(records=plain) if core is not None:
                self._within_capacity(core.assign, plain)
            case wire.Cancel(records=task_ids) if core is not None:
                core.cancel(task_ids)
            case wire.Heartbeat() if core is not None:
                pass
            case wire.Challenge() if core is None and not self.challenge_answered:
                self.answer_challenge(message)
            case wire.Welcome() if core is None and message.version != wire.PROTOCOL_VERSION:
                self._refused(
                    f"it speaks protocol version {message.version}, this worker {wire.PROTOCOL_VERSION}"
                )
            case wire.Welcome() if core is None and self.challenge_answered:
                self._welcomed(message)
            case wire.Standby(leader=leader) if core is None and self.challenge_answered:
                # Not refused: this scheduler is a hot standby.  Try the leader next.
                self.log.info(
                    "scheduler at {peer} is a standby; the leader is at {leader}",
                    peer=self.peer,
                    leader=leader or "(none yet)",
                )
                self._following = bool(leader)
                self.close()
                self.factory.standby(leader)
            case wire.Error() if core is None and message.code == wire.ERROR_AUTH:
                self.refused_by_scheduler(message)
                self.close()
            case wire.Error() if core is None:
                # Refused at the handshake (version, slots, types): trying
                # again would only be refused again.
                self._refused(message.message)
            case wire.Error():
                self.log.error(
                    "scheduler {peer} dropped us: {message}", peer=self.peer, message=message.message
                )
                self.close()
            case _:
                raise PeerMisbehaved(f"a worker does not expect {type(message).__name__} now")

    def _within_capacity(self, assign: Callable[[Any], None], records: Any) -> None:
        """A scheduler that sends more than slots plus prefetch is refused: it could exhaust us."""
        try:
            assign(records)
        except OverCapacity as e:
            raise PeerMisbehaved(str(e)) from None

    def _welcomed(self, welcome: wire.Welcome) -> None:
        # The scheduler's limits bind both directions of this connection
        # (within our own: a scheduler cannot make us buffer more).
        self.handshake_done()
        self.set_max_frame(welcome.max_frame)
        factory = self.factory
        self.core = Worker(
            factory.handlers,
            factory.slots,
            self._report,
            factory.run_blocking,
            max_result=welcome.max_payload,
            report_chunk=self._report_chunk,
            report_progress=self._report_progress,
            clock=self.clock,
            call_from_thread=factory.call_from_thread,
            capacity=factory.slots + welcome.prefetch,
            stats=factory.stats,
        )
        factory.unwelcomed = 0
        factory.welcomed()
        factory.connected(self)
        if welcome.heartbeat_ms:
            self.keep_alive(welcome.heartbeat_ms / 1000, welcome.tolerance)
        self.log.info(
            "connected to scheduler {scheduler} at {peer} as {name} with {slots} slots for {types}",
            scheduler=welcome.name,
            peer=self.peer,
            name=factory.name,
            slots=factory.slots,
            types=",".join(factory.handlers.names()),
        )

    def _refused(self, reason: str) -> None:
        self.log.critical(
            "scheduler {peer} refused this worker: {reason}; giving up", peer=self.peer, reason=reason
        )
        self.close()
        self.factory.refused(reason)

    def drain(self, on_idle: Callable[[], None]) -> int:
        """
        Start a warm shutdown on this connection: hand the work held and not
        started back to the scheduler now (a Drain, sent at once), and any
        that arrives later too; ``on_idle`` is called when the running work
        has been reported.  Returns how many run on (0: call nothing, done).
        """
        core = self.core
        if core is None:
            return 0
        held = core.drain(self._hand_back, on_idle)
        self.send(wire.Drain(held))
        self.log.info(
            "shutting down: handed {count} held tasks back to the scheduler; {running} still run",
            count=len(held),
            running=core.busy,
        )
        return core.busy

    def _hand_back(self, lease_ids: list[int]) -> None:
        self.send(wire.Drain(lease_ids))

    def _report(self, task_id: int, status: int, value: bytes) -> None:
        self.queue(wire.Results, (task_id, status, value), len(value))

    def _report_progress(self, records: list[wire.ProgressRecord]) -> None:
        for record in records:
            # A Progress record is 26 bytes and its note (queue adds 13 of them).
            self.queue(wire.Progress, record, len(record[3].encode("utf-8")) + 13)

    def _report_chunk(self, chunk_id: int, outcomes: list[tuple[int, bytes]]) -> None:
        """A chunk's answers, in parts that each fit well inside a frame."""
        budget = self.send_limit // 2
        offset = 0
        while offset < len(outcomes) or offset == 0:
            end = offset
            size = 0
            while end < len(outcomes) and (end == offset or size + len(outcomes[end][1]) + 5 <= budget):
                size += len(outcomes[end][1]) + 5
                end += 1
            self.queue(wire.ChunkResults, (chunk_id, offset, outcomes[offset:end]), size)
            if end >= len(outcomes):
                break
            offset = end

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.core is not None:
            self.factory.last_lost = reason.getErrorMessage()
        elif not self._following:
            self.factory.unwelcomed += 1
            self.factory.last_lost = self.closed_because or reason.getErrorMessage()
        self.factory.disconnected(self)
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
        on_refused: Callable[[str], None] = lambda reason: None,
        limits: ConnectionLimits | None = None,
        secret: bytes = b"",
        on_authentication_failed: Callable[[str], None] = lambda reason: None,
        on_welcomed: Callable[[], None] = lambda: None,
        call_from_thread: Callable[[Callable[[], None]], None] | None = None,
        on_standby: Callable[[str], None] = lambda leader: None,
    ) -> None:
        #: Called with the leader's address ("" if unknown) when a standby answered.
        self.standby = on_standby
        #: The workers' secret, proved (never sent) in every handshake.
        self.secret = secret
        #: Called when the handshake fails on either side (the service backs off).
        self.authentication_failed = on_authentication_failed
        #: Called once a scheduler has welcomed this worker.
        self.welcomed = on_welcomed
        #: Our own bounds: a scheduler's welcome may lower, never raise, them.
        self.limits = limits or ConnectionLimits()
        self.clock = clock
        self.handlers = handlers
        self.slots = slots
        self.name = name
        self.run_blocking = run_blocking
        #: Called when the scheduler refuses this worker at the handshake.
        self.refused = on_refused
        #: How a pool thread hands a call to the reactor (``reactor.callFromThread``).
        self.call_from_thread = call_from_thread or (lambda function: function())
        #: The connection that has been welcomed, if any: where progress from
        #: the process pool goes.
        self.current: WorkerProtocol | None = None
        #: This process's counters for its /metrics, across reconnections.
        self.stats = WorkerStats(slots)
        #: Why the last connection was lost (for the service's retry line).
        self.last_lost: str | None = None
        #: Connections in a row that ended before a welcome (the peer is not a
        #: taskmesh scheduler, a standby that knows no leader yet, a handshake
        #: that timed out): the service backs off on them as on failed
        #: attempts, instead of trying again about once a second forever.
        self.unwelcomed = 0
        #: Called when the welcomed connection is lost (the service, while it drains).
        self.lost: Callable[[], None] = lambda: None

    def connected(self, protocol: WorkerProtocol) -> None:
        self.current = protocol

    def disconnected(self, protocol: WorkerProtocol) -> None:
        if self.current is protocol:
            self.current = None
            self.lost()

    def post_progress(self, records: list[wire.ProgressRecord]) -> None:
        """Progress from tasks in the process pool (in the reactor thread)."""
        protocol = self.current
        if protocol is not None and protocol.core is not None:
            for record in records:
                protocol.core.post_progress(*record)

    def buildProtocol(self, addr: Any) -> WorkerProtocol:
        return WorkerProtocol(self)
