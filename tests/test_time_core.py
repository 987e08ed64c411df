"""
Time in the scheduler core, driven by a Clock: delayed tasks (held within
the horizon, read back from the store beyond it, cancelled from the store),
periodic schedules (a tick per interval, cron in a time zone across DST
changes), a restart in the middle of a tick, and the missed-tick policies;
and delayed tasks and ticks over the PostgreSQL store, whose commits land
from its own thread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from twisted.internet.task import Clock

from taskmesh.core.scheduler import Policy, Scheduler, tick_key
from taskmesh.core.schedules import ScheduleError, next_after
from taskmesh.store import ITaskStore, MemoryStore, State
from taskmesh.store.interface import ScheduleRecord
from taskmesh.store.postgres import PostgresStore
from taskmesh.store.sqlite import SqliteStore
from taskmesh.wire import TaskOptions
from tests.test_scheduler_core import FakeChannel, killed
from tests.test_store_time import Landings

#: Thursday 1 January 2026, 00:00 UTC: the clocks of these tests start there.
START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def rig(store: ITaskStore | None = None, at: float = START, **policy: Any) -> tuple[Clock, Scheduler]:
    clock = Clock()
    clock.advance(at)
    # The fake workers send no heartbeats: keep them connected for weeks of Clock time.
    quiet = Policy(heartbeat_interval=4e6, heartbeat_tolerance=0xFFFF, **policy)
    core = Scheduler(clock, store if store is not None else MemoryStore(), quiet)
    core.start()
    return clock, core


def worker(core: Scheduler, types: tuple[str, ...] = ("t",)) -> FakeChannel:
    channel = FakeChannel()
    core.add_worker(channel, "w", 100_000, frozenset(types))
    return channel


def schedule(name: str = "s", **fields: Any) -> ScheduleRecord:
    values: dict[str, Any] = dict(
        name=name,
        cron=None,
        every=None,
        tz="UTC",
        task_type="t",
        payload=b"p",
        priority=0,
        timeout=None,
        max_attempts=0,
        retry_on_error=False,
        catch_up=True,
        paused=False,
        next_due=0.0,
        last_due=None,
        last_task=None,
    )
    values.update(fields)
    return ScheduleRecord(**values)


def test_a_delayed_task_is_scheduled_until_its_delay_is_over() -> None:
    clock, core = rig()
    channel = worker(core)
    task_id, _ = core.submit("t", b"x", TaskOptions(delay=30.0))
    clock.advance(0)
    assert core.state_of(task_id) is State.SCHEDULED
    assert core.due_of(task_id) == START + 30.0
    assert core.stats()["tasks"]["scheduled"] == 1
    clock.advance(29.9)
    assert channel.ids() == []
    clock.advance(0.1)
    assert channel.ids() == [task_id]
    assert core.state_of(task_id) is State.RUNNING
    assert core.stats()["tasks"]["scheduled"] == 0


def test_a_time_already_past_runs_at_once_and_a_delay_costs_nothing_for_others() -> None:
    clock, core = rig()
    channel = worker(core)
    past, _ = core.submit("t", b"x", TaskOptions(at=START - 5))
    plain, _ = core.submit("t", b"y")
    assert channel.ids() == [past, plain]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_tasks_beyond_the_horizon_stay_in_the_store_until_the_window_reaches_them(
    kind: str, tmp_path: Path
) -> None:
    store: ITaskStore = MemoryStore() if kind == "memory" else SqliteStore(str(tmp_path / "s.db"))
    clock, core = rig(store, horizon=60.0)
    channel = worker(core)
    ids = [core.submit("t", str(i).encode(), TaskOptions(delay=3600.0 + i))[0] for i in range(2500)]
    clock.advance(0)
    # Durable, and not held: the core's task table is empty.
    assert core._tasks == {}
    assert core.stats()["tasks"]["scheduled"] == 2500
    clock.advance(3600 - 30)  # the window (now + 60 s, every 30 s) reaches the first ones
    held = len(core._tasks)
    assert 0 < held <= 60
    assert channel.ids() == []
    clock.advance(30)
    assert channel.ids() == ids[:1]
    for _ in range(2600):
        clock.advance(1)
    assert channel.ids() == ids
    assert core.stats()["tasks"]["scheduled"] == 0
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_scheduled_task_only_in_the_store_is_seen_and_cancelled(kind: str, tmp_path: Path) -> None:
    store: ITaskStore = MemoryStore() if kind == "memory" else SqliteStore(str(tmp_path / "s.db"))
    clock, core = rig(store)
    channel = worker(core)
    task_id, _ = core.submit("t", b"x", TaskOptions(delay=86400.0))
    clock.advance(0)
    assert task_id not in core._tasks
    assert core.state_of(task_id) is State.SCHEDULED
    assert core.due_of(task_id) == START + 86400.0
    assert core.cancel(task_id, "no longer needed")
    clock.advance(0)
    outcome = store.outcome(task_id)
    assert outcome is not None and outcome.state is State.CANCELLED
    assert core.stats()["tasks"]["scheduled"] == 0
    clock.advance(86400.0 + 60)
    assert channel.ids() == []
    store.close()


def test_listed_delayed_tasks_are_scheduled_and_not_held_in_memory(tmp_path: Path) -> None:
    """A dashboard page of tasks beyond the horizon costs neither a read nor memory per task."""
    store = SqliteStore(str(tmp_path / "s.db"))
    clock, core = rig(store)
    far = [core.submit("t", b"far", TaskOptions(delay=86400.0))[0] for _ in range(3)]
    now, _ = core.submit("t", b"now", TaskOptions())
    clock.advance(0)
    assert set(core._tasks) == {now}
    listed = core.list_tasks(None, None, 10, None)["tasks"]
    assert [(t["id"], t["state"]) for t in listed] == [(now, "queued")] + [
        (i, "scheduled") for i in reversed(far)
    ]
    assert set(core._tasks) == {now}  # listing held none of them
    store.close()


def test_delayed_tasks_survive_a_restart_and_run_once_due(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    clock, core = rig(store)
    near, _ = core.submit("t", b"near", TaskOptions(delay=10.0))
    far, _ = core.submit("t", b"far", TaskOptions(at=START + 7200))
    clock.advance(0)
    core.stop()
    store.close()
    # The scheduler is down past the first one's due time.
    store = SqliteStore(path)
    clock, core = rig(store, at=START + 100)
    assert core.stats()["tasks"]["scheduled"] == 1
    channel = worker(core)
    assert channel.ids() == [near]
    clock.pump([1.0] * (7100 - 1))
    assert channel.ids() == [near]
    clock.advance(1)
    assert channel.ids() == [near, far]
    store.close()


def test_an_every_schedule_enqueues_one_task_per_interval() -> None:
    clock, core = rig()
    channel = worker(core)
    core.add_schedule(schedule(every=10.0))
    for _ in range(100):
        clock.advance(1)
    assert len(channel.ids()) == 10
    (record,) = core.schedules()
    assert record.last_due == START + 100
    assert record.next_due == START + 110
    assert record.last_task == channel.ids()[-1]
    task = core.task(channel.ids()[-1])
    assert task is not None and task.options.key == tick_key("s", START + 100)


def test_pause_and_resume_and_remove() -> None:
    clock, core = rig()
    channel = worker(core)
    core.add_schedule(schedule(every=10.0))
    clock.advance(10)
    assert core.pause_schedule("s") is not None
    clock.advance(100)
    assert len(channel.ids()) == 1
    resumed = core.pause_schedule("s", paused=False)
    assert resumed is not None and resumed.next_due == START + 120
    clock.advance(10)
    assert len(channel.ids()) == 2
    assert core.remove_schedule("s")
    assert not core.remove_schedule("s")
    clock.advance(100)
    assert len(channel.ids()) == 2
    assert core.pause_schedule("nope") is None


def test_bad_schedules_are_refused_with_their_reason() -> None:
    _, core = rig()
    with pytest.raises(ScheduleError, match="either a cron"):
        core.add_schedule(schedule(every=None, cron=None))
    with pytest.raises(ScheduleError, match="five fields"):
        core.add_schedule(schedule(cron="* * *"))
    with pytest.raises(ScheduleError, match="bad cron"):
        core.add_schedule(schedule(cron="61 * * * *"))
    with pytest.raises(ScheduleError, match="unknown time zone"):
        core.add_schedule(schedule(cron="* * * * *", tz="Mars/Olympus"))
    with pytest.raises(ScheduleError, match="at most 128 bytes"):
        core.add_schedule(schedule(name="x" * 129, every=1.0))


def paris(*fields: int) -> float:
    return datetime(*fields, tzinfo=ZoneInfo("Europe/Paris")).timestamp()  # type: ignore[misc]


def test_cron_in_a_time_zone_across_the_dst_changes() -> None:
    # Daily at 09:00 in Paris: 08:00 UTC in winter, 07:00 UTC in summer.
    clock, core = rig(at=paris(2026, 3, 27, 12))
    channel = worker(core)
    core.add_schedule(schedule(cron="0 9 * * *", tz="Europe/Paris"))
    clock.pump([3600.0] * 24 * 4)
    dues = [core.task(i).options.at for i in channel.ids()]  # type: ignore[union-attr]
    assert dues == [paris(2026, 3, day, 9) for day in (28, 29, 30, 31)]
    assert [datetime.fromtimestamp(d, UTC).hour for d in dues] == [8, 7, 7, 7]
    # 02:30 does not exist on 29 March: it runs once, at 03:00 (when the clocks jump).
    jump = next_after("30 2 * * *", None, "Europe/Paris", paris(2026, 3, 28, 12))
    assert jump == paris(2026, 3, 29, 3)
    # 02:30 happens twice on 25 October: a fixed-time cron runs once...
    ticks = [paris(2026, 10, 24, 12)]
    for _ in range(3):
        ticks.append(next_after("30 2 * * *", None, "Europe/Paris", ticks[-1]))
    assert [datetime.fromtimestamp(t, UTC).isoformat() for t in ticks[1:]] == [
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
        "2026-10-27T01:30:00+00:00",
    ]
    # ... an hourly one runs every real hour: 25 on that day, an hour apart.
    hours = [paris(2026, 10, 25, 0) - 1]
    while hours[-1] < paris(2026, 10, 26, 0) - 1:
        hours.append(next_after("0 * * * *", None, "Europe/Paris", hours[-1]))
    hours = hours[1:-1]
    assert len(hours) == 25
    assert {b - a for a, b in zip(hours, hours[1:])} == {3600.0}


def test_a_restart_in_the_middle_of_a_tick_enqueues_it_once(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    clock, core = rig(store)
    core.add_schedule(schedule(every=10.0))
    clock.advance(0)
    # The tick fires; its commit is queued for the end of the turn...
    call = core._tick_calls["s"]
    clock.advance(call.getTime() - clock.seconds() - 0.001)
    clock.calls.remove(call)
    clock.rightNow = call.getTime()
    call.func(*call.args)
    assert store.pending() == 2  # its task and its record, together
    killed(store)  # ... and the process dies before it
    # Nothing of the tick is durable: the next scheduler runs it (missed) once.
    store = SqliteStore(path)
    clock, core = rig(store, at=START + 10.5)
    channel = worker(core)
    clock.advance(0)
    assert len(channel.ids()) == 1
    (record,) = core.schedules()
    assert record.last_due == START + 10 and record.next_due == START + 20
    core.stop()
    store.close()
    # And once it is durable, a restart does not run it again.
    store = SqliteStore(path)
    clock, core = rig(store, at=START + 11)
    channel = worker(core)
    clock.advance(0)
    assert channel.ids() == [record.last_task]  # only the unfinished tick, recovered
    assert store.task_for_key(tick_key("s", START + 10)) == record.last_task
    store.close()


def test_a_tick_whose_task_is_durable_but_not_its_record_is_not_enqueued_again(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    clock, core = rig(store)
    core.add_schedule(schedule(every=10.0))
    clock.advance(0)
    # Another scheduler's tick at START + 10 reached the store, its record did not.
    key = tick_key("s", START + 10)
    earlier, _ = core.submit("t", b"p", TaskOptions(key=key, at=START + 10))
    clock.advance(0)
    core.stop()
    store.close()
    store = SqliteStore(path)
    clock, core = rig(store, at=START + 10.5)
    clock.advance(0)
    (record,) = core.schedules()
    assert record.last_task == earlier and record.next_due == START + 20
    store.close()


@pytest.mark.parametrize("catch_up", [True, False])
def test_ticks_missed_while_down_run_once_or_are_skipped(catch_up: bool, tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    clock, core = rig(store)
    core.add_schedule(schedule(every=10.0, catch_up=catch_up))
    clock.pump([1.0] * 25)  # ticks at +10 and +20
    core.stop()
    store.close()
    store = SqliteStore(path)
    clock, core = rig(store, at=START + 100.5)  # +30 ... +100 missed
    channel = worker(core)
    clock.advance(0)
    (record,) = core.schedules()
    if catch_up:
        assert len(channel.ids()) == 1 + 2  # the latest missed once, and the two unfinished ticks
        assert record.last_due == START + 100
    else:
        assert len(channel.ids()) == 2
        assert record.last_due == START + 20
    assert record.next_due == START + 110
    clock.advance(9.5)
    assert len(channel.ids()) == (4 if catch_up else 3)
    store.close()


def test_schedules_declared_in_the_configuration_replace_their_definition_only(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    clock, core = rig(store)
    core.add_schedule(schedule("mine", every=10.0))
    core.declare_schedules(
        [schedule("nightly", cron="0 3 * * *", next_due=START + 3 * 3600, source="config")]
    )
    clock.advance(0)
    core.stop()
    store.close()
    store = SqliteStore(path)
    clock = Clock()
    clock.advance(START + 1)
    core = Scheduler(clock, store, Policy())
    core.declare_schedules([])  # the file no longer declares it
    core.start()
    assert [record.name for record in core.schedules()] == ["mine"]
    store.close()


def _turn(landings: Landings, clock: Clock, core: Scheduler, seconds: float = 0.0) -> None:
    """Let time pass, every commit that begins landing before the next step."""
    clock.advance(seconds)
    while core._in_flight is not None:
        landings.run_one()
        clock.advance(0)


def test_a_far_task_is_the_store_s_once_its_background_commit_lands_not_before(postgres_url: str) -> None:
    landings = Landings()
    store = PostgresStore(postgres_url, landings)
    clock, core = rig(store, horizon=60.0)
    first, _ = core.submit("t", b"1", TaskOptions(delay=600.0))
    clock.advance(0)
    assert core._in_flight is not None  # its commit is in the store's thread
    second, _ = core.submit("t", b"2", TaskOptions(delay=600.0))
    landings.run_one()
    # Only what that commit carried is the store's: the second is held until its own lands.
    assert list(core._far) == [second]
    _turn(landings, clock, core)
    assert core._far == {}
    assert [t.id for t in store.due_tasks(START + 601, (-1.0, 0), 10)] == [first, second]
    core.stop()
    store.close()


def test_delayed_tasks_and_ticks_over_postgresql_survive_a_restart(postgres_url: str) -> None:
    landings = Landings()
    turn = partial(_turn, landings)
    store = PostgresStore(postgres_url, landings)
    clock, core = rig(store, horizon=60.0)
    channel = worker(core)
    far, _ = core.submit("t", b"far", TaskOptions(delay=100.0))
    core.add_schedule(schedule(every=10.0))
    turn(clock, core)
    assert far not in core._tasks  # beyond the horizon: in the database only
    assert store.count_scheduled(START) == 1
    for _ in range(95):
        turn(clock, core, 1.0)
    ticks = channel.ids()
    assert len(ticks) == 9  # +10 ... +90
    (record,) = store.schedules()  # what the database has, not the core
    assert (record.last_due, record.last_task, record.next_due) == (START + 90, ticks[-1], START + 100)
    assert store.task_for_key(tick_key("s", START + 90)) == ticks[-1]
    for _ in range(10):
        turn(clock, core, 1.0)
    # The far task, read back by the window (skipped while the core held it), and the tick at +100.
    assert len(channel.ids()) == 11 and far in channel.ids()[9:]
    core.stop()
    store.close()

    # Down from +105 to +200.5: the unfinished ticks and the far task run again (at least
    # once), the ticks missed meanwhile once, as the latest (catch_up).
    store = PostgresStore(postgres_url, landings)
    before = channel.ids()
    clock, core = rig(store, at=START + 200.5, horizon=60.0)
    channel = worker(core)
    turn(clock, core)
    assert sorted(channel.ids()[: len(before)]) == sorted(before)
    assert len(channel.ids()) == len(before) + 1
    (record,) = store.schedules()
    assert (record.last_due, record.next_due) == (START + 200, START + 210)
    assert record.last_task == channel.ids()[-1]
    core.stop()
    store.close()
