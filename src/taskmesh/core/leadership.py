"""
Who leads among schedulers sharing one store: the decisions, sans-I/O.

Several schedulers started on one PostgreSQL store elect one leader; the
others are hot standbys that answer every connection with the leader's
address.  This object decides when to ask, what an answer means and when
to give up; an ``IElection`` (``taskmesh.store.election``) does the asking,
and the service acts on ``on_lead`` and ``on_step_down``.

- A standby asks to lead every ``poll_interval`` (1 s): the answer is
  either "you lead now" or the current leader's advertised address, which
  standbys hand to peers.
- The leader asks the database to confirm its leadership every
  ``poll_interval``.  A confirmation that fails (the lock's connection
  broke, was terminated, or another term began) steps down at once; one
  that does not come within ``lease`` (5 s) steps down too, because by then
  the database may have let another scheduler lead.
- Stepping down is final for this object: the service stops serving at
  once and exits, and a supervisor starts it again as a standby.  Coming
  back as a standby in-process would need every piece of the core's state
  undone; a fresh process needs nothing undone.

Time comes from an ``IReactorTime``, so tests drive it with ``Clock``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds between two questions to the database (standby: may I lead? leader: do I still?).
DEFAULT_POLL_INTERVAL = 1.0
#: Seconds the leader may go without a confirmation before it stops serving.
#: Not what makes writes safe (the store writes only on the session holding
#: the lock); what stops a leader cut off from its database from serving
#: peers it can no longer answer.  Long enough not to step down because a
#: busy machine answered one question late.
DEFAULT_LEASE = 5.0


class IElection(Protocol):
    """The database side of an election (one dedicated connection)."""

    def try_lead(self) -> Deferred[str | None]:
        """
        Try to become the leader: fires with None if we lead now (a new term
        began), else with the leader's advertised address ("" if unknown).
        """

    def confirm(self) -> Deferred[None]:
        """Fires if we still lead (our lock and our term hold); fails with the reason if not."""


class Role(enum.Enum):
    STANDBY = "standby"
    LEADING = "leading"
    STOPPED = "stopped"


class Leadership:
    """One scheduler's view of the election, and the decisions it makes."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        election: IElection,
        advertise: str,
        on_lead: Callable[[], None],
        on_step_down: Callable[[str], None],
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease: float = DEFAULT_LEASE,
        on_standby: Callable[[str], None] = lambda leader: None,
    ) -> None:
        if not 0 < poll_interval < lease:
            raise ValueError("the poll interval must be positive and shorter than the lease")
        self.clock = clock
        self.election = election
        #: Our own advertised address (what we publish while we lead).
        self.advertise = advertise
        self.on_lead = on_lead
        self.on_step_down = on_step_down
        #: Called with the leader's address whenever a standby learns another one (the first included).
        self.on_standby = on_standby
        self._answered = False
        self.poll_interval = poll_interval
        self.lease = lease
        self.role = Role.STANDBY
        #: The leader's advertised address as last heard ("" while none is known).
        self.known_leader = ""
        #: Why we stepped down, once we have.
        self.reason: str | None = None
        self._asking = False
        self._poll_call: IDelayedCall | None = None
        self._lease_call: IDelayedCall | None = None
        self._started = False

    @property
    def leader(self) -> str:
        """Where the leader is, for a standby's answer: ourselves while we lead."""
        return self.advertise if self.role is Role.LEADING else self.known_leader

    def start(self) -> None:
        """Ask at once, then every poll interval."""
        self._started = True
        self._poll()

    def stop(self) -> None:
        """Stop asking (the service is stopping); no callback."""
        self._started = False
        self.role = Role.STOPPED
        self._cancel()

    def lost(self, reason: str) -> None:
        """Someone else learnt that we no longer lead (a commit found another term): step down."""
        if self.role is Role.LEADING:
            self._step_down(reason)

    # -- the loop ----------------------------------------------------------

    def _poll(self) -> None:
        self._poll_call = None
        if self.role is Role.STOPPED:
            return
        self._poll_call = self.clock.callLater(self.poll_interval, self._poll)
        if self._asking:
            return  # the last question is not answered yet (the lease covers a leader)
        self._asking = True
        if self.role is Role.STANDBY:
            self.election.try_lead().addCallbacks(self._lead_answer, self._lead_failed)
        else:
            self.election.confirm().addCallbacks(self._confirmed, self._not_confirmed)

    def _lead_answer(self, leader: str | None) -> None:
        self._asking = False
        if self.role is not Role.STANDBY:
            return
        if leader is not None:
            if leader != self.known_leader or not self._answered:
                self._answered = True
                self.log.info("standby: the leader is at {leader}", leader=leader or "(unknown)")
                self.known_leader = leader
                self.on_standby(leader)
            return
        self.role = Role.LEADING
        self.known_leader = self.advertise
        self._renew()
        self.log.info("leading, advertised as {address}", address=self.advertise)
        self.on_lead()

    def _lead_failed(self, failure: Failure) -> None:
        self._asking = False
        self.log.warn(
            "standby: cannot ask the database who leads: {reason}", reason=failure.getErrorMessage()
        )

    def _confirmed(self, _: Any) -> None:
        self._asking = False
        if self.role is Role.LEADING:
            self._renew()

    def _not_confirmed(self, failure: Failure) -> None:
        self._asking = False
        if self.role is Role.LEADING:
            self._step_down(f"leadership not confirmed: {failure.getErrorMessage()}")

    def _renew(self) -> None:
        if self._lease_call is not None and self._lease_call.active():
            self._lease_call.cancel()
        self._lease_call = self.clock.callLater(self.lease, self._lease_expired)

    def _lease_expired(self) -> None:
        self._lease_call = None
        if self.role is Role.LEADING:
            self._step_down(f"the database did not confirm leadership within {self.lease:g} s")

    def _step_down(self, reason: str) -> None:
        self.role = Role.STOPPED
        self.reason = reason
        self._cancel()
        self.log.critical("lost leadership: {reason}; stopping at once", reason=reason)
        self.on_step_down(reason)

    def _cancel(self) -> None:
        for call in (self._poll_call, self._lease_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = self._lease_call = None
