"""
Periodic schedules: when each tick is due.

A schedule is ``every`` N seconds, or a cron expression read by croniter in
an IANA time zone (zoneinfo), so that "0 9 * * *" in Europe/Paris is nine
o'clock there in winter and in summer.  Across a DST change a cron tick
falls where croniter puts it in that zone's local time; what we guarantee
here is what the scheduler needs: due times strictly increase, and each is
computed from the previous one alone, so a restarted scheduler computes the
same next tick as the one that stopped.

Pure functions of time: the scheduler core calls them and decides the rest.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterError, croniter

from taskmesh.wire import MAX_CRON_LENGTH, MAX_EVERY_SECONDS, MAX_TZ_LENGTH
from taskmesh.wire import MAX_SCHEDULE_NAME as MAX_NAME_BYTES

#: The shortest and longest interval of an ``every`` schedule, in seconds (the wire's bounds).
MIN_EVERY = 0.001
MAX_EVERY = MAX_EVERY_SECONDS
#: Schedules a scheduler keeps, at the most.
MAX_SCHEDULES = 10_000
#: Cron ticks looked at, at the most, to find the latest missed one.
MAX_CRON_STEPS = 100_000


class ScheduleError(ValueError):
    """A schedule that cannot be: its reason says what to change."""


def check_name(name: str) -> str:
    """A schedule name: 1 to 128 bytes of UTF-8 without control characters."""
    if not isinstance(name, str) or not name:
        raise ScheduleError("a schedule needs a name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ScheduleError(f"a schedule name is at most {MAX_NAME_BYTES} bytes of UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ScheduleError("a schedule name may not contain control characters")
    return name


def zone(name: str) -> ZoneInfo:
    """The time zone of that IANA name, or ScheduleError."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TZ_LENGTH:
        raise ScheduleError(f"a time zone name is 1 to {MAX_TZ_LENGTH} characters")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris or UTC)") from None


def check_spec(cron: str | None, every: float | None, tz: str) -> None:
    """ScheduleError unless exactly one of cron and every is set, and valid, in a known zone."""
    zone(tz)
    if (cron is None) == (every is None):
        raise ScheduleError("a schedule needs either a cron expression or an interval (every), not both")
    if every is not None:
        if (
            not isinstance(every, int | float)
            or not math.isfinite(every)
            or not MIN_EVERY <= every <= MAX_EVERY
        ):
            raise ScheduleError(f"an interval must be {MIN_EVERY:g} to {MAX_EVERY:g} seconds")
    if cron is not None:
        if not isinstance(cron, str) or not 0 < len(cron) <= MAX_CRON_LENGTH:
            raise ScheduleError(f"a cron expression is 1 to {MAX_CRON_LENGTH} characters")
        if len(cron.split()) != 5:
            raise ScheduleError(
                f"a cron expression has five fields (minute hour day month weekday): {cron!r}"
            )
        try:
            croniter(cron)
        except (CroniterBadCronError, CroniterError, ValueError, KeyError) as e:
            raise ScheduleError(f"bad cron expression {cron!r}: {e}") from None


def next_after(cron: str | None, every: float | None, tz: str, after: float) -> float:
    """The first tick strictly after ``after`` (seconds since the epoch)."""
    if every is not None:
        return after + every
    assert cron is not None
    where = zone(tz)
    # A time of day that happens twice when the clocks go back (02:30 in
    # Paris on the last Sunday of October) runs once, at its first
    # occurrence, for a cron with fixed hours, as cron itself does; one whose
    # hours are a wildcard ("0 * * * *") runs every real hour, both included.
    fixed_hours = not cron.split()[1].startswith("*")
    following = after
    for _ in range(MAX_CRON_STEPS):
        following = float(croniter(cron, datetime.fromtimestamp(following, where)).get_next(float))
        # croniter works at whole seconds; never give back a time not after ``after``.
        if following <= after:
            continue
        if fixed_hours and datetime.fromtimestamp(following, where).fold:
            continue
        return following
    raise ScheduleError(f"the cron expression {cron!r} has no next time")


def first_due(cron: str | None, every: float | None, tz: str, now: float) -> float:
    """A new schedule's first tick: one interval from now, or the cron's next time."""
    return next_after(cron, every, tz, now)


def latest_missed(cron: str | None, every: float | None, tz: str, next_due: float, now: float) -> float:
    """
    The latest tick due at or before ``now``, counting from ``next_due`` (itself
    at or before now): the one a schedule that catches up runs.
    """
    if every is not None:
        return next_due + math.floor((now - next_due) / every) * every
    due = next_due
    for _ in range(MAX_CRON_STEPS):
        following = next_after(cron, every, tz, due)
        if following > now:
            return due
        due = following
    return due
