"""
Times on the command line: ``--delay 30s``, ``--at 2026-12-24T18:00:00Z``
(``taskmesh submit``) and ``--every 10s`` (``taskmesh schedule add``).
"""

from __future__ import annotations

import re
from datetime import datetime

from twisted.python import usage

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """
    "30s", "5m", "1h30m", "2d", "250ms", or plain seconds ("90"); ValueError
    otherwise.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h30m, 2d, or seconds)")
    return total


def parse_at(text: str) -> float:
    """An ISO 8601 time with its zone ("2026-12-24T18:00:00Z", "...+01:00") as seconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-24T18:00:00Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
    return moment.timestamp()


def time_options(options: usage.Options) -> dict[str, float]:
    """``delay``/``at`` task options from ``--delay``/``--at``; UsageError if both or malformed."""
    found: dict[str, float] = {}
    try:
        if options["delay"] is not None:
            found["delay"] = parse_duration(options["delay"])
        if options["at"] is not None:
            found["at"] = parse_at(options["at"])
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    if len(found) > 1:
        raise usage.UsageError("--delay or --at, not both")
    return found


#: For ``taskmesh submit``.
TIME_PARAMETERS = [
    [
        "delay",
        None,
        None,
        "Run the task this long after it is stored (30s, 5m, 1h30m, 2d): it is scheduled until "
        "then; prints its id and exits.",
    ],
    ["at", None, None, "Run the task at this time (ISO 8601 with a zone: 2026-12-24T18:00:00Z); as --delay."],
]
