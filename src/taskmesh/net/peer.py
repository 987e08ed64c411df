"""
What a worker's and a client's connection share: the peer side of the handshake.

The peer sends its hello with a fresh nonce, checks the scheduler's proof in
the challenge before anything else (a fake scheduler is caught here, before
any task or result crosses), answers with its own proof, then waits for the
welcome.  An authentication failure, ours or the scheduler's verdict, goes to
``authentication_failed`` with a reason a person can act on.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from taskmesh import wire
from taskmesh.net.auth import AuthenticationFailed, PeerHandshake
from taskmesh.net.framing import ConnectionLimits, FramedProtocol


class PeerProtocol(FramedProtocol):
    """A connection to a scheduler, as a worker or a client."""

    expected_peer = "taskmesh scheduler"

    def __init__(self, clock: IReactorTime, limits: ConnectionLimits, secret: bytes) -> None:
        super().__init__(clock, limits)
        self._secret = secret
        self._handshake: PeerHandshake | None = None

    def hello(self) -> wire.Hello:
        """Who we are (the nonce is added by the handshake)."""
        raise NotImplementedError

    def connectionMade(self) -> None:
        super().connectionMade()
        self._handshake = PeerHandshake(self._secret, self.hello())
        self.flush()
        self.sendString(self._handshake.hello_body)

    @property
    def challenge_answered(self) -> bool:
        return self._handshake is not None and self._handshake.answered

    def answer_challenge(self, challenge: wire.Challenge) -> None:
        assert self._handshake is not None
        try:
            proof = self._handshake.answer(challenge)
        except AuthenticationFailed as e:
            reason = f"{e} (scheduler {challenge.name!r} at {self.peer})"
            self.fail(wire.ERROR_AUTH, str(e))
            self.authentication_failed(reason)
            return
        self.send(proof)

    def refused_by_scheduler(self, error: wire.Error) -> None:
        """An Error before the welcome: our secret was refused, or something else was."""
        if error.code == wire.ERROR_AUTH:
            self.authentication_failed(
                f"the scheduler at {self.peer} refused our secret: {error.message} "
                "(use the scheduler's secret: --secret-file PATH or TASKMESH_SECRET)"
            )

    def authentication_failed(self, reason: str) -> None:
        """Subclasses tell their user; the connection is already closing."""
