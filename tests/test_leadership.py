"""
The leadership state machine with Clock: a standby asks every poll interval
and learns where the leader is; elected, it leads once; a leader whose
confirmation fails, or does not come within the lease, steps down at once
and for good; questions never pile up behind a slow database.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from taskmesh.core.leadership import Leadership, Role
from taskmesh.errors import StoreUnavailable


class Election:
    """The database side, answered by the test: each question is a Deferred it fires."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Deferred[object]]] = []

    def try_lead(self) -> Deferred[str | None]:
        answer: Deferred[str | None] = Deferred()
        self.asked.append(("lead", answer))  # type: ignore[arg-type]
        return answer

    def confirm(self) -> Deferred[None]:
        answer: Deferred[None] = Deferred()
        self.asked.append(("confirm", answer))  # type: ignore[arg-type]
        return answer

    def last(self, kind: str) -> Deferred[object]:
        asked, answer = self.asked[-1]
        assert asked == kind, self.asked
        return answer


def make() -> tuple[Clock, Election, Leadership, list[str]]:
    clock = Clock()
    election = Election()
    events: list[str] = []
    leadership = Leadership(
        clock,
        election,
        "me:9001",
        on_lead=lambda: events.append("lead"),
        on_step_down=lambda reason: events.append(f"down: {reason}"),
        poll_interval=1.0,
        lease=3.0,  # shorter than the default, for the test
    )
    return clock, election, leadership, events


def test_the_standby_is_told_each_new_leader_once_the_first_answer_included() -> None:
    clock = Clock()
    election = Election()
    told: list[str] = []
    leadership = Leadership(
        clock, election, "me:1", lambda: None, lambda reason: None, on_standby=told.append
    )
    leadership.start()
    election.last("lead").callback("")  # nobody leads yet: still an answer
    for leader in ("a:1", "a:1", "b:1"):
        clock.advance(1.0)
        election.last("lead").callback(leader)
    assert told == ["", "a:1", "b:1"]


def test_a_standby_asks_every_second_and_hands_out_the_leader() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    assert leadership.role is Role.STANDBY and leadership.leader == ""
    election.last("lead").callback("other:9001")
    assert leadership.leader == "other:9001"
    clock.advance(1.0)
    assert len(election.asked) == 2
    election.last("lead").callback("third:9001")
    assert leadership.leader == "third:9001" and events == []


def test_elected_it_leads_once_and_then_confirms_every_second() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    election.last("lead").callback(None)
    assert leadership.role is Role.LEADING and events == ["lead"]
    assert leadership.leader == "me:9001"
    for _ in range(10):
        clock.advance(1.0)
        election.last("confirm").callback(None)
    assert leadership.role is Role.LEADING and events == ["lead"]


def test_a_failed_confirmation_steps_down_at_once_and_for_good() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    election.last("lead").callback(None)
    clock.advance(1.0)
    election.last("confirm").errback(StoreUnavailable("the election's connection broke: terminated"))
    assert leadership.role is Role.STOPPED
    assert events == [
        "lead",
        "down: leadership not confirmed: store unavailable: the election's connection broke: terminated",
    ]
    asked = len(election.asked)
    clock.advance(10.0)
    assert len(election.asked) == asked and len(events) == 2  # no more questions, no second lead


def test_a_leader_whose_database_is_silent_steps_down_when_the_lease_ends() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    election.last("lead").callback(None)
    clock.advance(1.0)
    election.last("confirm").callback(None)  # confirmed at t=1: the lease runs to t=4
    clock.advance(1.0)  # t=2: a confirmation that never comes
    clock.advance(1.0)  # t=3: not asked again while one is outstanding
    assert [kind for kind, _ in election.asked].count("confirm") == 2
    clock.advance(0.9)
    assert leadership.role is Role.LEADING
    clock.advance(0.1)
    assert leadership.role is Role.STOPPED
    assert events[-1] == "down: the database did not confirm leadership within 3 s"


def test_a_standby_that_cannot_reach_the_database_keeps_asking_and_keeps_its_pointer() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    election.last("lead").callback("other:9001")
    clock.advance(1.0)
    election.last("lead").errback(StoreUnavailable("cannot reach the database"))
    assert leadership.role is Role.STANDBY and leadership.leader == "other:9001"
    clock.advance(1.0)
    assert election.asked[-1][0] == "lead" and events == []


def test_lost_from_a_fenced_commit_steps_down_and_means_nothing_to_a_standby() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    leadership.lost("another scheduler leads now")
    assert leadership.role is Role.STANDBY and events == []
    election.last("lead").callback(None)
    leadership.lost("another scheduler leads now (term 3, ours 2)")
    assert leadership.role is Role.STOPPED
    assert events == ["lead", "down: another scheduler leads now (term 3, ours 2)"]


def test_a_late_answer_after_stepping_down_or_stopping_changes_nothing() -> None:
    clock, election, leadership, events = make()
    leadership.start()
    answer = election.last("lead")
    leadership.stop()
    answer.callback(None)
    assert leadership.role is Role.STOPPED and events == []
    assert clock.getDelayedCalls() == []
