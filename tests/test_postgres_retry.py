"""
What ``taskmesh retry`` needs of the PostgreSQL store (the ops branch's
``stored_task`` and ``reopen``), on a throwaway cluster: a task read back as
submitted, with its state; a finished one made unfinished again, in order
with the other writes of its batch, kept when a commit fails, taken back by
``discard``; and a reopened delayed task runs at once after a restart too,
as the core queued it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskmesh.core.scheduler import Task
from taskmesh.errors import StoreUnavailable
from taskmesh.store import State
from taskmesh.store.postgres import PostgresStore
from taskmesh.testing_postgres import PostgresCluster
from taskmesh.wire import DEFAULT_OPTIONS, TaskOptions


def task(task_id: int, options: TaskOptions = DEFAULT_OPTIONS) -> Task:
    return Task(task_id, "t", b"p%d" % task_id, options, 100.0 + task_id)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    made = PostgresStore(postgres_url)
    yield made
    if made._thread.is_alive():
        made.close()


def test_a_stored_task_is_read_back_as_submitted_with_its_state(store: PostgresStore) -> None:
    store.add(task(1, TaskOptions(priority=3, timeout=2.5, max_attempts=4, key="k", retry_on_error=True)))
    store.add(task(2))
    store.add(task(3, TaskOptions(at=900.0)))
    store.record_attempts(2, attempts=2, losses=1)
    store.finish(2, State.FAILED, b"boom", 300.0)
    assert store.stored_task(1) is None  # not committed yet: not the store's
    store.commit()
    first = store.stored_task(1)
    assert first is not None and first.state is State.QUEUED
    assert (first.type, first.payload, first.submitted_at, first.key) == ("t", b"p1", 101.0, "k")
    assert (first.priority, first.timeout, first.max_attempts, first.retry_on_error) == (3, 2.5, 4, True)
    second = store.stored_task(2)
    assert second is not None and (second.state, second.attempts, second.losses) == (State.FAILED, 2, 1)
    third = store.stored_task(3)
    assert third is not None and (third.state, third.due_at) == (State.QUEUED, 900.0)
    assert store.stored_task(99) is None


def test_a_reopened_task_is_unfinished_with_no_outcome_and_no_attempts(
    store: PostgresStore, postgres_url: str
) -> None:
    store.add(task(1))
    store.add(task(2, TaskOptions(at=5000.0)))  # cancelled before its time, then retried
    store.record_attempts(1, attempts=3, losses=2)
    store.finish(1, State.FAILED, b"boom", 300.0)
    store.finish(2, State.CANCELLED, b"no", 300.0)
    store.commit()
    store.reopen(1)
    store.reopen(2)
    assert store.outcome(1) is not None  # buffered only
    store.commit()
    assert store.outcome(1) is None and store.outcome(2) is None
    back = store.stored_task(1)
    assert back is not None and (back.state, back.attempts, back.losses) == (State.QUEUED, 0, 0)
    # Both are the restart's to queue at once, as the core queued them: none waits for a due time.
    store.close()
    again = PostgresStore(postgres_url)
    try:
        assert [t.id for t in again.unfinished()] == [1, 2]
        assert again.due_tasks(1e12, (-1.0, 0), 10) == [] and again.count_scheduled(0.0) == 0
    finally:
        again.close()


def test_a_reopening_is_written_in_order_with_its_batch_s_outcomes_and_attempts(store: PostgresStore) -> None:
    store.add(task(1))
    store.add(task(2))
    store.commit()
    # One batch: a failure, the retry, its new attempt and its success.
    store.record_attempts(1, attempts=1, losses=0)
    store.finish(1, State.FAILED, b"boom", 10.0)
    store.reopen(1)
    store.record_attempts(1, attempts=1, losses=1)
    store.finish(1, State.SUCCEEDED, b"ok", 20.0)
    # And one left unfinished by its retry.
    store.finish(2, State.FAILED, b"boom", 10.0)
    store.reopen(2)
    store.commit()
    first = store.stored_task(1)
    assert first is not None and (first.state, first.attempts, first.losses) == (State.SUCCEEDED, 1, 1)
    outcome = store.outcome(1)
    assert outcome is not None and (outcome.value, outcome.finished_at) == (b"ok", 20.0)
    second = store.stored_task(2)
    assert second is not None and second.state is State.QUEUED
    assert [t.id for t in store.unfinished()] == [2]


def test_a_reopening_is_kept_when_its_commit_fails_and_taken_back_by_discard(
    postgres: PostgresCluster, store: PostgresStore
) -> None:
    for task_id in (1, 2):
        store.add(task(task_id))
        store.finish(task_id, State.FAILED, b"boom", 10.0)
    store.commit()
    store.reopen(1)
    store.reopen(2)
    store.discard([2])  # its retry was refused: it stays failed
    postgres.stop("immediate")
    with pytest.raises(StoreUnavailable):
        store.commit()
    postgres.start()
    assert store.commit()
    first, second = store.stored_task(1), store.stored_task(2)
    assert first is not None and first.state is State.QUEUED
    assert second is not None and second.state is State.FAILED
