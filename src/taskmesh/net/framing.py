"""
What every taskmesh connection does with frames, whichever its role.

``FramedProtocol`` turns frames into messages and back, and nothing more:

- records (tasks, results) queued during one reactor turn leave together in
  as few frames as the peer's frame limit allows, in the order they were
  queued; one ``callLater(0)`` per turn, not one write per task;
- a frame that does not decode, a frame over the limit, or a message the
  peer may not send now gets an ``Error`` frame naming the reason, a log
  line, and the connection closed: only the offending connection is lost;
- after that, nothing more from the peer is read.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from taskmesh import wire

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


def describe_address(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", None) or address)


class PeerMisbehaved(Exception):
    """A well-formed message the peer may not send now (wrong role or state)."""


class FramedProtocol(Int32StringReceiver):
    """Frames in, messages out; batched records out, per reactor turn."""

    log = Logger()
    #: Set by Twisted before connectionMade; every method here runs while connected.
    transport: Transport  # type: ignore[assignment]  # Protocol declares ITransport | None

    def __init__(self, clock: IReactorTime, max_frame: int) -> None:
        self.clock = clock
        # Int32StringReceiver reads this attribute: frames longer are refused.
        self.MAX_LENGTH = max_frame
        #: The frame limit our sends respect: the peer's, once it is known.
        self.send_limit = max_frame
        self.peer = "unknown peer"
        self.closing = False
        #: Why we dropped the connection, if we did.
        self.closed_because: str | None = None
        self._segments: list[_Segment] = []
        self._flush_call: IDelayedCall | None = None

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = describe_address(self.transport.getPeer())
        # Frames are already coalesced per reactor turn; Nagle's algorithm
        # would only hold a lone reply until the peer's delayed ACK (~40 ms).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._segments.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    # -- receiving -----------------------------------------------------------

    def stringReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            message = wire.decode(data)
        except wire.ProtocolError as e:
            self.fail(wire.ERROR_MALFORMED, f"malformed frame: {e}")
            return
        try:
            self.message_received(message)
        except PeerMisbehaved as e:
            self.fail(wire.ERROR_UNEXPECTED, str(e))
        except Exception:
            self.log.failure("bug while handling a message from {peer}", peer=self.peer)
            self.fail(wire.ERROR_INTERNAL, "internal error while handling your message")

    def lengthLimitExceeded(self, length: int) -> None:
        self.fail(
            wire.ERROR_FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH} bytes",
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
        segments.append([message_class, [record], wire.FRAME_OVERHEAD + size])

    def flush(self) -> None:
        """Write every queued record now, one frame per segment."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        segments, self._segments = self._segments, []
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

    # -- failing -------------------------------------------------------------

    def fail(self, code: int, reason: str) -> None:
        """Tell the peer why, log it, and drop this connection (only this one)."""
        if self.closing:
            return
        self.log.warn("dropping connection from {peer}: {reason}", peer=self.peer, reason=reason)
        self.send(wire.Error(code, reason))
        self.closed_because = reason
        self.closing = True
        self.transport.loseConnection()
