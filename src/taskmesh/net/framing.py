"""
What every taskmesh connection does with frames, whichever its role.

``FramedProtocol`` turns frames into messages and back, and bounds what a
peer can make it hold:

- frames are reassembled by a ``FrameReader`` (``taskmesh.net.frames``): in
  linear time, and within a budget of bytes for unfinished frames that every
  connection of the process shares;
- deadlines: the handshake must finish within ``handshake_timeout`` seconds,
  and a frame that has started must finish within ``frame_timeout``;
- records (tasks, results) queued during one reactor turn leave together in
  as few frames as the peer's frame limit allows, in the order they were
  queued; one ``callLater(0)`` per turn, not one write per task;
- backpressure: the protocol is the transport's push producer.  While the
  peer does not read (the transport's buffer is full), its requests are not
  read either, and a peer that lets more than ``max_unsent`` bytes pile up
  is aborted;
- a frame that does not decode, a frame over the limit, or a message the
  peer may not send now gets an ``Error`` frame naming the reason, a log
  line, and the connection closed: only the offending connection is lost.
  After that nothing more from the peer is read, and a connection that does
  not close within ``close_grace`` seconds (its peer does not read) is
  aborted, so it never stays half-open with its buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from taskmesh import wire
from taskmesh.net.frames import (
    HTTP_METHODS,
    PREFIX,
    FrameReader,
    FrameTooLarge,
    PartialFrameBudget,
    foreign_greeting,
    not_taskmesh_reason,
)

#: What the scheduler answers an HTTP request sent to its taskmesh port.
NOT_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"This port speaks the taskmesh protocol, not HTTP: point a taskmesh client or worker at it.\n"
    b"The dashboard is served on the scheduler's --web address.\n"
)

#: Seconds a new connection has to finish its handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a frame that has started may take to arrive whole.
DEFAULT_FRAME_TIMEOUT = 30.0
#: Bytes that may pile up, unsent, for a peer that does not read, beyond the
#: transport's own buffer; at least two of the largest frames.
DEFAULT_MAX_UNSENT = 32 * 1024 * 1024
#: Bytes all unfinished frames of a process may hold together.
DEFAULT_FRAME_BUDGET = 256 * 1024 * 1024
#: Seconds a connection we are closing may take to flush before it is aborted.
CLOSE_GRACE = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds one connection lives within; each is an option of the scheduler."""

    max_frame: int = wire.DEFAULT_MAX_FRAME
    #: None: no deadline (a test, or a peer we trust to be slow).
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT
    max_unsent: int = DEFAULT_MAX_UNSENT
    close_grace: float = CLOSE_GRACE

    def __post_init__(self) -> None:
        checks = {
            "max_frame": 64 <= self.max_frame <= wire.MAX_FRAME_LIMIT,
            "handshake_timeout": self.handshake_timeout is None or self.handshake_timeout > 0,
            "frame_timeout": self.frame_timeout is None or self.frame_timeout > 0,
            "max_unsent": self.max_unsent >= 1,
            "close_grace": self.close_grace >= 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"invalid connection limits: {', '.join(wrong)}")

    def with_max_frame(self, max_frame: int) -> ConnectionLimits:
        return replace(self, max_frame=max_frame)


#: Records of one message class waiting to go out, with their byte estimate:
#: [message class, records, estimated bytes].
_Segment = list[Any]


class Transport(Protocol):
    """
    What the protocols use of their transport: a TCP (or TLS) connection,
    which is also the push producer that flow control pauses.
    """

    def getPeer(self) -> IAddress: ...
    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def describe_address(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", None) or address)


class PeerMisbehaved(Exception):
    """A well-formed message the peer may not send now (wrong role or state)."""

    #: The error code the peer is told.
    code = wire.ERROR_UNEXPECTED


@implementer(IPushProducer)
class FramedProtocol(Int32StringReceiver):
    """Frames in, messages out; batched records out, per reactor turn."""

    log = Logger()
    #: What the other end should be, for the line that says it is not.
    expected_peer = "taskmesh peer"
    #: Set by Twisted before connectionMade; every method here runs while connected.
    transport: Transport  # type: ignore[assignment]  # Protocol declares ITransport | None

    def __init__(
        self,
        clock: IReactorTime,
        limits: ConnectionLimits = ConnectionLimits(),
        budget: PartialFrameBudget | None = None,
    ) -> None:
        self.clock = clock
        self.limits = limits
        # Kept for Int32StringReceiver's sake; the reader enforces the limit.
        self.MAX_LENGTH = limits.max_frame
        self._reader = FrameReader(limits.max_frame, budget)
        #: The frame limit our sends respect: the peer's, once it is known.
        self.send_limit = limits.max_frame
        self.peer = "unknown peer"
        self.closing = False
        #: Why we dropped the connection, if we did.
        self.closed_because: str | None = None
        #: When the peer last sent anything (heartbeats count).
        self.last_heard = clock.seconds()
        self.frame = b""
        #: Why the peer is not taskmesh (its first bytes were text, not a frame), if it is not.
        self.foreign: str | None = None
        self._heard = False
        self._segments: list[_Segment] = []
        self._flush_call: IDelayedCall | None = None
        self._handshake_call: IDelayedCall | None = None
        self._frame_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._keep_alive: LoopingCall | None = None
        #: Why reading from the peer is paused (flow control, backpressure).
        self._read_pauses: set[str] = set()
        #: Bytes queued for the end of this turn, and (while the transport's
        #: buffer is full) bytes written since: together, what the peer has
        #: not taken yet, bounded by ``limits.max_unsent``.
        self._queued = 0
        self._peer_full = False
        self._unsent = 0
        #: Whether we are the transport's producer (from the end of the handshake).
        self._registered = False

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = describe_address(self.transport.getPeer())
        self.last_heard = self.clock.seconds()
        # Frames are already coalesced per reactor turn; Nagle's algorithm
        # would only hold a lone reply until the peer's delayed ACK (~40 ms).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        timeout = self.limits.handshake_timeout
        if timeout is not None:
            self._handshake_call = self.clock.callLater(timeout, self._handshake_timed_out, timeout)

    def handshake_done(self) -> None:
        """
        The handshake is over: its deadline no longer applies, and from now on
        the transport tells us when the peer stops reading.  (Not before: a
        TLS transport pauses its producer until its own handshake is done, and
        pausing our reads then would stall that handshake.)
        """
        if self._handshake_call is not None:
            if self._handshake_call.active():
                self._handshake_call.cancel()
            self._handshake_call = None
        self.transport.registerProducer(self, True)
        self._registered = True

    def set_max_frame(self, max_frame: int) -> None:
        """Both directions follow the limit the scheduler announced (within our own)."""
        max_frame = min(max_frame, self.limits.max_frame)
        self.MAX_LENGTH = self._reader.max_frame = self.send_limit = max_frame

    def keep_alive(self, interval: float, tolerance: int) -> None:
        """
        Heartbeats toward the scheduler, as its welcome asked: one every
        interval, and the connection aborted when the scheduler has been
        silent for ``tolerance`` intervals (a half-open TCP connection would
        otherwise hold this peer forever).
        """
        limit = interval * max(1, tolerance)
        last_beat = [self.clock.seconds()]

        def beat() -> None:
            now = self.clock.seconds()
            # A beat far later than due means this reactor was blocked (a
            # long synchronous call of the application): what the scheduler
            # sent meanwhile is still unread, so its silence is judged at the
            # next beat, after the reactor has read its socket, not now.
            late = now - last_beat[0] > 2 * interval
            last_beat[0] = now
            silent = now - self.last_heard
            if silent > limit and not late:
                self.log.warn(
                    "scheduler {peer} silent for {silent:.1f} s: dropping the connection",
                    peer=self.peer,
                    silent=silent,
                )
                self.closed_because = f"the scheduler was silent for {silent:.1f} s"
                self.closing = True
                self.transport.abortConnection()
                return
            self.send(wire.Heartbeat())

        self._keep_alive = LoopingCall(beat)
        self._keep_alive.clock = self.clock
        self._keep_alive.start(interval, now=False)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        if self._keep_alive is not None and self._keep_alive.running:
            self._keep_alive.stop()
        self._segments.clear()
        self._reader.close()
        for call in (self._flush_call, self._handshake_call, self._frame_call, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._handshake_call = self._frame_call = self._abort_call = None

    def _handshake_timed_out(self, timeout: float) -> None:
        self._handshake_call = None
        if not self._heard and self.expected_peer != FramedProtocol.expected_peer:
            # We spoke first (a worker's or client's hello) and heard nothing back.
            self.fail(
                wire.ERROR_TIMEOUT,
                f"no answer to our hello within {timeout:g} s: is {self.peer} a {self.expected_peer}? "
                "(a web server, for one, says nothing to it)",
            )
            return
        self.fail(wire.ERROR_TIMEOUT, f"no handshake within {timeout:g} s")

    def not_taskmesh(self, sample: str) -> None:
        """The peer's first bytes were text, not a frame: one line saying what it is, and close."""
        reason = not_taskmesh_reason(self.peer, self.expected_peer, sample)
        self.log.warn("{reason}", reason=reason)
        self.foreign = self.closed_because = reason
        if sample.split(" ", 1)[0] in HTTP_METHODS:
            self.transport.write(NOT_HTTP_ANSWER)
        self.close()

    def _frame_timed_out(self) -> None:
        self._frame_call = None
        self.fail(
            wire.ERROR_TIMEOUT,
            f"a frame took longer than {self.limits.frame_timeout:g} s to arrive "
            f"({self._reader.buffered} bytes of it came)",
        )

    # -- flow control --------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        """Stop reading the peer's requests, for this reason, until ``resume_reading``."""
        if not self._read_pauses:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    @property
    def reading_paused(self) -> bool:
        return bool(self._read_pauses)

    def resume_reading(self, reason: str) -> None:
        if reason in self._read_pauses:
            self._read_pauses.discard(reason)
            if not self._read_pauses and not self.closing:
                self.transport.resumeProducing()

    # IPushProducer: the transport calls these as its write buffer fills and drains.

    def pauseProducing(self) -> None:
        """The peer is not reading fast enough: stop taking its requests."""
        if not self._peer_full:
            self._peer_full = True
            self._unsent = 0
            self.pause_reading("peer not reading")

    def resumeProducing(self) -> None:
        if self._peer_full:
            self._peer_full = False
            self._unsent = 0
            self.resume_reading("peer not reading")

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost cleans up."""

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_heard = self.clock.seconds()
        if not self._heard and data:
            self._heard = True
            sample = foreign_greeting(data, self._reader.max_frame)
            if sample is not None:
                self.not_taskmesh(sample)
                return
        reader = self._reader
        frames = reader.feed(data)
        for frame in frames:
            self.stringReceived(frame)
            if self.closing:
                return
        error = reader.error
        if error is not None:
            if isinstance(error, FrameTooLarge):
                self.lengthLimitExceeded(error.length)
            else:
                self.fail(wire.ERROR_BUSY, str(error))
            return
        if reader.partial:
            # A frame has started: it must finish in time.  (Restarted when
            # a frame completed in this read and another began.)
            timeout = self.limits.frame_timeout
            if timeout is not None and (self._frame_call is None or frames):
                if self._frame_call is not None:
                    self._frame_call.cancel()
                self._frame_call = self.clock.callLater(timeout, self._frame_timed_out)
        elif self._frame_call is not None:
            self._frame_call.cancel()
            self._frame_call = None

    def stringReceived(self, data: bytes) -> None:
        if self.closing:
            return
        #: The frame being handled, as received (the handshake's proofs cover the hello's bytes).
        self.frame = data
        try:
            message = wire.decode(data)
        except wire.ProtocolError as e:
            self.fail(wire.ERROR_MALFORMED, f"malformed frame: {e}")
            return
        try:
            self.message_received(message)
        except PeerMisbehaved as e:
            self.fail(e.code, str(e))
        except Exception:
            self.log.failure("bug while handling a message from {peer}", peer=self.peer)
            self.fail(wire.ERROR_INTERNAL, "internal error while handling your message")

    def lengthLimitExceeded(self, length: int) -> None:
        self.fail(
            wire.ERROR_FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds the limit of {self._reader.max_frame} bytes",
        )

    def message_received(self, message: wire.Message) -> None:
        """Subclasses handle each decoded message; raise PeerMisbehaved to refuse it."""
        raise NotImplementedError

    # -- sending -------------------------------------------------------------

    def send(self, message: wire.Message) -> None:
        """Send one message now, after anything already queued."""
        if self.closing:
            return
        self.flush()
        self.sendString(wire.encode(message))

    def queue(self, message_class: type, record: object, size: int) -> None:
        """
        Queue one record of a batched message (Submit, Accepted, Rejected,
        Results, Assign) to leave at the end of this reactor turn.  ``size``
        is the record's variable bytes (payload, type name), used to split
        batches below the peer's frame limit.
        """
        if self.closing:
            return
        size += wire.RECORD_OVERHEAD
        segments = self._segments
        if not segments:
            self._flush_call = self.clock.callLater(0, self.flush)
        else:
            last = segments[-1]
            if last[0] is message_class and last[2] + size <= self.send_limit:
                last[1].append(record)
                last[2] += size
                return
            # Counted a segment at a time (each at most a frame), not a record at a time:
            # the bound may be passed by one frame, which max_unsent (at least two) allows.
            self._queued += last[2]
            if self._queued + self._unsent > self.limits.max_unsent:
                self._overflow()
                return
        segments.append([message_class, [record], wire.FRAME_OVERHEAD + size])

    def flush(self) -> None:
        """Write every queued record now, one frame per segment."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        segments, self._segments = self._segments, []
        self._queued = 0
        if self.closing:
            return
        try:
            for message_class, records, _ in segments:
                self._send_records(message_class, records)
        except Exception:
            # A bug: what was queued cannot be sent.  Dropping the connection
            # fails everything waiting on it at once, instead of never.
            self.log.failure("bug while sending to {peer}", peer=self.peer)
            self.closing = True
            self.transport.abortConnection()

    def _send_records(self, message_class: type, records: list[Any]) -> None:
        data = wire.encode(message_class(records))
        if len(data) > self.send_limit and len(records) > 1:
            # The estimate counted characters; multi-byte type names can
            # make the frame larger than foreseen.  Halve until it fits.
            half = len(records) // 2
            self._send_records(message_class, records[:half])
            self._send_records(message_class, records[half:])
        else:
            self.sendString(data)

    def sendString(self, string: bytes) -> None:
        """Write one frame, counting what piles up while the peer does not read."""
        self.transport.write(PREFIX.pack(len(string)) + string)
        if self._peer_full:
            self._unsent += len(string) + 4
            if self._unsent > self.limits.max_unsent:
                self._overflow()

    def _overflow(self) -> None:
        """More than ``max_unsent`` bytes are waiting for a peer that does not read: abort it."""
        if self.closing:
            return
        self.log.warn(
            "dropping connection from {peer}: it does not read; over {limit} bytes unsent",
            peer=self.peer,
            limit=self.limits.max_unsent,
        )
        self.closed_because = f"it did not read: over {self.limits.max_unsent} bytes unsent"
        self.closing = True
        self._segments.clear()
        self._queued = 0
        self.transport.abortConnection()

    # -- failing -------------------------------------------------------------

    def fail(self, code: int, reason: str) -> None:
        """Tell the peer why, log it, and drop this connection (only this one)."""
        if self.closing:
            return
        self.log.warn("dropping connection from {peer}: {reason}", peer=self.peer, reason=reason)
        self.send(wire.Error(code, reason))
        self.closed_because = reason
        self.close()

    def close(self) -> None:
        """
        Close after what is written; abort if the peer does not take it within
        ``close_grace`` (or at once, if it already is not reading).
        """
        self.closing = True
        self._segments.clear()
        if self._peer_full:
            self.transport.abortConnection()
            return
        if self._registered:
            # A TLS transport will not start its shutdown while a producer is registered.
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.clock.callLater(self.limits.close_grace, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        self.transport.abortConnection()
