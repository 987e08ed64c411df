"""
Events that a peer can repeat at will, logged without amplification.

A worker that answers 100,000 tasks it was never given must not make the
scheduler write 100,000 log lines: the first event of a kind (per peer) is
logged as it happens, the rest are counted, and one line per interval says
how many more there were.  Time comes from the clock the core is given.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: Seconds over which repeats are counted before one summary line.
SUMMARY_INTERVAL = 10.0


class RepeatedEvents:
    """Logs the first of each kind at once and the repeats as one line per interval."""

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = SUMMARY_INTERVAL) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        #: (kind, peer) -> repeats since the first one was logged.
        self._repeats: dict[tuple[str, str], int] = {}
        self._call: IDelayedCall | None = None

    def note(self, kind: str, peer: str, format: str, **fields: Any) -> None:
        """One event of ``kind`` caused by ``peer``; ``format`` and ``fields`` as for Logger.info."""
        key = (kind, peer)
        repeats = self._repeats.get(key)
        if repeats is None:
            self._repeats[key] = 0
            self._log.info(format, **fields)
            if self._call is None:
                self._call = self._clock.callLater(self.interval, self._summarise)
        else:
            self._repeats[key] = repeats + 1

    def _summarise(self) -> None:
        self._call = None
        repeats, self._repeats = self._repeats, {}
        for (kind, peer), count in repeats.items():
            if count:
                self._log.info(
                    "{count} more {kind} from {peer} in the last {interval:g} s",
                    count=count,
                    kind=kind,
                    peer=peer,
                    interval=self.interval,
                )

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
