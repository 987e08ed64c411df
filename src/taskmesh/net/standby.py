"""
The scheduler's end of a connection while it is a hot standby, not the leader.

A standby serves no task: it runs the same authenticated handshake as the
leader (so only a peer with the secret learns where the leader is, and the
peer knows the pointer comes from a scheduler that holds the secret too),
then answers the Proof with a ``Standby`` frame naming the leader's
advertised address instead of a Welcome, and closes.  Clients and workers
then connect to the leader (``taskmesh.net.address.reach_leader``).

``LeaderSwitch`` is what the listening port serves: the standby factory
until this scheduler leads, then the real ``SchedulerFactory``; the port
stays open across the switch, so peers that keep trying find it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from taskmesh import wire
from taskmesh.net.auth import AuthenticationFailed, RoleSecrets, SchedulerHandshake
from taskmesh.net.frames import PartialFrameBudget
from taskmesh.net.framing import DEFAULT_FRAME_BUDGET, ConnectionLimits, FramedProtocol, PeerMisbehaved
from taskmesh.net.scheduler_protocol import DEFAULT_MAX_CONNECTIONS

#: A standby's frames are a hello and a proof: nothing larger is accepted.
STANDBY_MAX_FRAME = 64 * 1024


class StandbyProtocol(FramedProtocol):
    """Shakes hands, says where the leader is, closes."""

    log = Logger()

    def __init__(self, factory: StandbyFactory) -> None:
        super().__init__(factory.clock, factory.limits, factory.budget)
        self.factory = factory
        self._handshake = SchedulerHandshake(factory.secrets, factory.name)

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        if len(factory.connections) >= factory.max_connections:
            self.fail(wire.ERROR_LIMIT, f"the scheduler serves at most {factory.max_connections} connections")
            return
        factory.connections.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.connections.discard(self)

    def message_received(self, message: wire.Message) -> None:
        match message:
            case wire.Hello() if not self._handshake.challenged:
                if message.version != wire.PROTOCOL_VERSION:
                    self.fail(
                        wire.ERROR_VERSION,
                        f"protocol version {message.version} is not supported; "
                        f"this scheduler speaks version {wire.PROTOCOL_VERSION}",
                    )
                    return
                if message.role not in wire.ROLE_NAMES:
                    raise PeerMisbehaved(f"unknown role {message.role}")
                self.send(self._handshake.challenge(message, self.frame))
            case wire.Proof() if self._handshake.challenged:
                try:
                    self._handshake.check(message)
                except AuthenticationFailed as e:
                    self.fail(wire.ERROR_AUTH, str(e))
                    return
                self.handshake_done()
                leader = self.factory.leader()
                self.log.debug(
                    "standby: {peer} sent to the leader at {leader}", peer=self.peer, leader=leader
                )
                self.send(wire.Standby(leader))
                self.close()
            case wire.Error():
                self.close()
            case _ if self._handshake.challenged:
                raise PeerMisbehaved(f"expected the proof, got {type(message).__name__}")
            case _:
                raise PeerMisbehaved(f"expected a hello first, got {type(message).__name__}")


class StandbyFactory(Factory):
    """What a standby's connections share: the secrets, the bounds, and where the leader is."""

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        secrets: RoleSecrets,
        leader: Callable[[], str],
        name: str = "taskmesh-scheduler",
        limits: ConnectionLimits | None = None,
        frame_budget: int = DEFAULT_FRAME_BUDGET,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.clock = clock
        self.secrets = secrets
        #: The leader's advertised address now ("" while none is known).
        self.leader = leader
        self.name = name
        self.limits = (limits or ConnectionLimits()).with_max_frame(STANDBY_MAX_FRAME)
        self.budget = PartialFrameBudget(frame_budget)
        self.max_connections = max_connections
        self.connections: set[StandbyProtocol] = set()

    def buildProtocol(self, addr: Any) -> StandbyProtocol:
        return StandbyProtocol(self)


class LeaderSwitch(Factory):
    """
    The factory a listening port serves: the standby's until ``lead``, then
    the leader's.  New connections go to whichever is current; a standby
    connection open at the switch ends as it would have (it gets its pointer,
    which may now be our own address: the peer then comes straight back).
    """

    noisy = False

    def __init__(self, standby: Factory) -> None:
        self.current: Factory = standby
        self._started = False

    def lead(self, factory: Factory) -> None:
        """From now on serve ``factory`` (the scheduler's)."""
        previous, self.current = self.current, factory
        if self._started:
            previous.doStop()
            factory.doStart()

    def startFactory(self) -> None:
        self._started = True
        self.current.doStart()

    def stopFactory(self) -> None:
        self._started = False
        self.current.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        return self.current.buildProtocol(addr)
