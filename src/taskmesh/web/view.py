"""
A read-only view of the scheduler core for the web layer.

The core keeps plain counters (incremented once per task as it finishes);
this view samples them once a second into a short history, from which the
dashboard draws its charts and computes rates.  Nothing here changes the
core: a bug in the web layer cannot change a scheduling decision.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from taskmesh._version import __version__
from taskmesh.core.scheduler import Scheduler
from taskmesh.store.interface import ITaskStore, Outcome, State

#: Samples kept for the charts: one a second, five minutes.
HISTORY = 300


class MeshView:
    """What the web layer may know about a scheduler: counts, workers, jobs, history."""

    def __init__(
        self,
        core: Scheduler,
        clock: IReactorTime,
        store: ITaskStore | None = None,
        connections: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._core = core
        self._clock = clock
        self._store = store
        self._connections = connections
        #: (time, submitted, completed, failed, queued, running) once a second.
        self.history: deque[tuple[float, int, int, int, int, int]] = deque(maxlen=HISTORY)

    @property
    def core(self) -> Scheduler:
        return self._core

    def connections(self) -> dict[str, int]:
        """Open connections by role (``client``, ``worker``, ``handshake``), counted now."""
        return self._connections() if self._connections is not None else {}

    def sample(self) -> None:
        """Record the counters now (called once a second by the web service)."""
        core = self._core
        counts = core.counts
        items_ok, items_failed = core.job_items
        stats_tasks = self._task_counts()
        self.history.append(
            (
                self._clock.seconds(),
                sum(core.submitted_by_type.values()),
                sum(counts.values()) + items_ok + items_failed,
                counts[State.FAILED] + items_failed,
                stats_tasks[0],
                stats_tasks[1],
            )
        )

    def _task_counts(self) -> tuple[int, int]:
        tasks = self._core.stats()["tasks"]
        return int(tasks["queued"]), int(tasks["running"])

    def rates(self, window: float = 10.0) -> dict[str, float]:
        """Submitted and completed per second over the last ``window`` seconds of samples."""
        if len(self.history) < 2:
            return {"submitted_per_second": 0.0, "completed_per_second": 0.0}
        last = self.history[-1]
        first = last
        for sample in reversed(self.history):
            first = sample
            if last[0] - sample[0] >= window:
                break
        span = last[0] - first[0]
        if span <= 0:
            return {"submitted_per_second": 0.0, "completed_per_second": 0.0}
        return {
            "submitted_per_second": round((last[1] - first[1]) / span, 2),
            "completed_per_second": round((last[2] - first[2]) / span, 2),
        }

    def status(self) -> dict[str, Any]:
        """The core's status with version and rates: what ``/api/status`` and the live pages send."""
        stats = self._core.stats()
        stats["version"] = __version__
        stats["rates"] = self.rates()
        return stats

    def chart(self) -> list[dict[str, float]]:
        """The history as per-second rates and gauges, oldest first, for the overview's charts."""
        points: list[dict[str, float]] = []
        previous = None
        for sample in self.history:
            if previous is not None and sample[0] > previous[0]:
                span = sample[0] - previous[0]
                points.append(
                    {
                        "t": round(sample[0], 3),
                        "submitted": round((sample[1] - previous[1]) / span, 2),
                        "completed": round((sample[2] - previous[2]) / span, 2),
                        "failed": round((sample[3] - previous[3]) / span, 2),
                        "queued": sample[4],
                        "running": sample[5],
                    }
                )
            previous = sample
        return points

    def healthy(self) -> tuple[bool, str]:
        """Serving (True) or degraded with the reason (the store cannot commit)."""
        error = self._core.store_error
        if error is not None:
            return False, f"degraded: store unavailable: {error}"
        return True, "serving"

    def task(self, task_id: int) -> dict[str, Any] | None:
        """One task as the core knows it (live), else as the store has its outcome, else None."""
        live = self._core.task(task_id)
        now = self._clock.seconds()
        if live is not None:
            state = self._core.state_of(task_id)
            progress = self._core.progress_of(task_id)
            return {
                "id": task_id,
                "type": live.type,
                "state": state.name.lower() if state is not None else "unknown",
                "payload": payload_preview(live.payload),
                "payload_bytes": len(live.payload),
                "attempts": live.attempts,
                "losses": live.losses,
                "key": live.options.key,
                "submitted_seconds_ago": round(now - live.submitted_at, 3),
                "worker": live.worker.name if live.worker is not None else None,
                "progress": list(progress) if progress is not None else None,
                "due": self._core.due_of(task_id),
            }
        outcome = self._core.watch(task_id)
        if not isinstance(outcome, Outcome):
            return None
        return {
            "id": task_id,
            "state": outcome.state.name.lower(),
            "result": payload_preview(outcome.value),
            "finished_seconds_ago": round(now - outcome.finished_at, 3),
        }

    def list_tasks(
        self,
        state: str | None,
        task_type: str | None,
        key: str | None,
        limit: int,
        before_id: int | None,
    ) -> dict[str, Any]:
        """
        A page of the store's task list, newest first, each unfinished task
        with its live state from the core; ``key`` finds the one task
        submitted with it.  ``state``: unfinished, succeeded, failed or
        cancelled (None: all).
        """
        if key is not None:
            task_id = self._store.task_for_key(key) if self._store is not None else None
            found = self.task(task_id) if task_id is not None else None
            return {"tasks": [found] if found is not None else [], "next_before": None}
        if self._store is None:
            return {"tasks": [], "next_before": None}
        wanted = None if state is None else LIST_STATES[state]
        rows, next_before = self._store.list_tasks(wanted, task_type, limit, before_id)
        now = self._clock.seconds()
        listed = []
        for row in rows:
            listed.append(
                {
                    "id": row.id,
                    "type": row.type,
                    "state": self._core.listed_state(row).name.lower(),
                    "attempts": row.attempts,
                    "losses": row.losses,
                    "key": row.key,
                    "submitted_seconds_ago": None
                    if row.submitted_at is None
                    else round(now - row.submitted_at, 3),
                    "finished_seconds_ago": None
                    if row.finished_at is None
                    else round(now - row.finished_at, 3),
                }
            )
        return {"tasks": listed, "next_before": next_before}


#: The task list's state filter: a name -> what the store filters on (QUEUED: unfinished).
LIST_STATES = {
    "unfinished": State.QUEUED,
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
}

#: Bytes of a payload or result shown on a task's page at the most.
PREVIEW_BYTES = 2048


def payload_preview(value: bytes, limit: int = PREVIEW_BYTES) -> str:
    """
    Text for a person: UTF-8 with anything undecodable replaced, cut at
    ``limit`` bytes.  The page puts it in a text node (never markup), so a
    payload cannot inject script.
    """
    text = value[:limit].decode("utf-8", "replace")
    if len(value) > limit:
        text += f"... ({len(value) - limit} more bytes)"
    return text
