"""
Time on the command line and in the scheduler's configuration: durations
and ISO times (taskmesh submit, schedule add), and the ``--schedules`` TOML
file, read and checked before the scheduler starts, and declared into its
store by ``makeService``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from taskmesh.cli.commands import Options as CommandOptions
from taskmesh.cli.times import parse_at, parse_duration
from taskmesh.codec import decode_arguments
from taskmesh.store.sqlite import SqliteStore
from taskmesh.tap import scheduler as scheduler_tap
from taskmesh.tap.schedules import read_schedules


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0), ("250ms", 0.25), ("90", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "1h 30m", "m5", "30s5"])
def test_bad_durations_say_what_a_duration_is(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_times_need_their_zone() -> None:
    assert parse_at("2026-12-24T18:00:00Z") == 1798135200.0
    assert parse_at("2026-12-24T19:00:00+01:00") == 1798135200.0
    with pytest.raises(ValueError, match="no time zone"):
        parse_at("2026-12-24T18:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_at("tomorrow")


def test_submit_takes_a_delay_or_a_time_not_both() -> None:
    options = CommandOptions()
    options.parseOptions(["submit", "--delay", "1h", "x"])
    assert options.subOptions["options"]["delay"] == 3600.0
    for argv, complaint in (
        (["submit", "--delay", "1h", "--at", "2030-01-01T00:00:00Z", "x"], "not both"),
        (["submit", "--delay", "60d", "x"], "use at="),
        (["submit", "--at", "2030-01-01", "x"], "no time zone"),
        (["schedule", "add", "--cron", "* * * * *", "--every", "1s", "n"], "exactly one"),
        (["schedule", "add", "n"], "exactly one"),
        (["schedule"], "needs a command"),
    ):
        with pytest.raises(usage.UsageError, match=complaint):
            CommandOptions().parseOptions(argv)


SCHEDULES = """
[schedule.tidy]
cron = "*/5 * * * *"
tz = "Europe/Paris"
payload = "some payload"
missed = "skip"

[schedule.beat]
every = "10s"
type = "add"
args = [1, 2]
priority = 3
"""


def test_a_schedules_file_is_read_and_declared_into_the_store(tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(SCHEDULES)
    beat, tidy = sorted(read_schedules(str(path), 1000.0), key=lambda record: record.name)
    assert (tidy.cron, tidy.tz, tidy.payload, tidy.catch_up, tidy.source) == (
        "*/5 * * * *",
        "Europe/Paris",
        b"some payload",
        False,
        "config",
    )
    assert (beat.every, beat.task_type, beat.priority, beat.next_due) == (10.0, "add", 3, 1010.0)
    assert decode_arguments(beat.payload) == ([1, 2], {})
    options = scheduler_tap.Options()
    options.parseOptions(["--store", str(tmp_path / "s.db"), "--schedules", str(path), "--web", "none"])
    service = scheduler_tap.makeService(options)
    assert isinstance(service.store, SqliteStore)
    stored = service.store.schedules()
    service.store.close()
    assert [(record.name, record.source) for record in stored] == [("beat", "config"), ("tidy", "config")]


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[schedule.x]\nevery = 1\ncron = '* * * * *'", "not both"),
        ("[schedule.x]\ncron = '61 * * * *'", "bad cron"),
        ("[schedule.x]\ncron = '* * * * *'\ntz = 'Nowhere/Else'", "unknown time zone"),
        ("[schedule.x]\nevery = '1 fortnight'", "not a duration"),
        ("[schedule.x]\nevery = 1\ncolour = 'red'", "unknown fields colour"),
        ("[schedule.x]\nevery = 1\nmissed = 'all'", "run-once"),
        ("[other]\n", "unknown tables other"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_bad_schedules_file_stops_the_scheduler_with_the_field_at_fault(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    with pytest.raises(usage.UsageError, match=complaint):
        scheduler_tap.Options().parseOptions(["--schedules", str(path)])
