"""
Running a map from the client's side: stream items in, results out in order.

The scheduler answers a job's items in whatever order chunks finish; this
driver hands them to ``write`` in input order, each as soon as every earlier
item has its answer.  It keeps at most ``window`` items in flight (sent and
not yet answered), reading the input only as fast as the workers take it,
so a map of a million lines needs memory for ``window`` items, not a million.

If the connection to the scheduler drops, ``connect`` is asked for another
one and the items still in flight are sent again in a new job: every item
is answered (at-least-once), and each is written once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from taskmesh import wire
from taskmesh.codec import failure_summary
from taskmesh.errors import SchedulerGone
from taskmesh.net.client_protocol import ClientProtocol

#: Items in flight at the most, by default.
DEFAULT_WINDOW = 20_000
#: Items (and bytes) per JobItems frame, at the most.
ITEMS_PER_FRAME = 2_000
BYTES_PER_FRAME = 512 * 1024
#: Failures whose line and reason a summary keeps (all are counted).
FAILURES_KEPT = 100


def too_large(size: int, limit: int) -> str:
    return f"payload of {size} bytes exceeds the scheduler's limit of {limit} bytes"


class ItemRefused:
    """An item the client fails itself, unsent (its arguments do not fit the task): why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


#: write(index, ok, value): value is the result, or the reason it failed.
Writer = Callable[[int, bool, bytes], None]
#: progress(done, failed): called as answers come.
Progress = Callable[[int, int], None]
#: hold(resume): True while the consumer of the answers has no room; it
#: then calls resume() (in the reactor thread) once it has.
Hold = Callable[[Callable[[], None]], bool]


@dataclass
class MapSummary:
    """What a map did."""

    done: int = 0
    failed: int = 0
    #: (index, reason) of the first FAILURES_KEPT failures.
    failures: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Times the connection was made again, and in-flight items sent again.
    reconnections: int = 0

    @property
    def succeeded(self) -> int:
        return self.done - self.failed


class _OrderedOutput:
    """Answers in any order in, ``write`` calls in input order out."""

    def __init__(self, write: Writer, summary: MapSummary) -> None:
        self._write = write
        self._summary = summary
        self._early: dict[int, tuple[int, bytes]] = {}
        self.next_index = 0

    def add(self, index: int, status: int, value: bytes) -> None:
        self._early[index] = (status, value)

    def flush(self) -> None:
        early = self._early
        index = self.next_index
        summary = self._summary
        write = self._write
        while index in early:
            status, value = early.pop(index)
            ok = status == wire.STATUS_OK
            if not ok:
                summary.failed += 1
                if len(summary.failures) < FAILURES_KEPT:
                    summary.failures.append((index, failure_summary(value)))
            summary.done += 1
            write(index, ok, value)
            index += 1
        self.next_index = index


async def run_map(
    connect: Callable[[], Awaitable[ClientProtocol]],
    items: Iterator[bytes | ItemRefused],
    write: Writer,
    task_type: str,
    priority: int = 0,
    chunk_size: int = 0,
    window: int = DEFAULT_WINDOW,
    size_hint: int = 0,
    progress: Progress = lambda done, failed: None,
    on_no_worker: Callable[[str], None] = lambda task_type: None,
    reconnect: bool = False,
    hold: Hold | None = None,
) -> MapSummary:
    """
    Run every item of ``items`` as a task of ``task_type``; call ``write``
    for each answer, in input order.  With ``reconnect``, a dropped
    connection is replaced through ``connect`` and the items in flight are
    sent again; without, SchedulerGone ends the map.  ``hold(resume)`` is
    asked before more items are read: True pauses the map (no more items
    sent; those in flight are still answered) until ``resume()`` is called
    in the reactor thread: backpressure from a consumer slower than the
    workers.
    """
    wire.check_task_type(task_type)
    if window < 1:
        raise ValueError("window must be at least 1")
    started = time.monotonic()
    summary = MapSummary()
    output = _OrderedOutput(write, summary)
    in_flight: dict[int, bytes] = {}
    next_index = 0
    exhausted = False
    wake: list[Deferred[None]] = []

    def wake_up(failure: Exception | None = None) -> None:
        if wake:
            waiting = wake.pop()
            if failure is None:
                waiting.callback(None)
            else:
                waiting.errback(failure)

    def on_results(records: list[tuple[int, int, bytes]]) -> None:
        for index, status, value in records:
            if in_flight.pop(index, None) is not None:  # else: answered before a resend
                output.add(index, status, value)
        output.flush()
        progress(summary.done, summary.failed)
        if len(in_flight) <= window // 2 or (exhausted and not in_flight):
            wake_up()

    first = True
    while True:
        protocol = await connect()
        if not first:
            summary.reconnections += 1
        first = False
        protocol.lost.addCallback(
            lambda _: wake_up(SchedulerGone("connection to the scheduler lost during the map"))
        )
        try:
            job_id, flags = await protocol.open_job(task_type, on_results, priority, chunk_size, size_hint)
            if flags & wire.ACCEPTED_NO_WORKER:
                on_no_worker(task_type)
            # Frames well inside the scheduler's limit; an item that could
            # never be accepted is answered here, without sending it.
            welcome = protocol.welcome
            frame_bytes = BYTES_PER_FRAME if welcome is None else min(BYTES_PER_FRAME, welcome.max_frame // 2)
            max_payload = None if welcome is None else welcome.max_payload
            sent = _resend(protocol, job_id, in_flight, frame_bytes)
            ended = False
            while True:
                if not exhausted and hold is not None and hold(wake_up):
                    # The consumer has no room: wait for it (or a result, or
                    # the connection's loss), then ask again.
                    paused: Deferred[None] = Deferred()
                    wake.append(paused)
                    await paused
                    continue
                batch: list[bytes] = []
                batch_first = next_index
                batch_bytes = 0
                answered_here = False
                while not exhausted and len(in_flight) < window:
                    try:
                        payload = next(items)
                    except StopIteration:
                        exhausted = True
                        break
                    if isinstance(payload, ItemRefused):
                        refused: str | None = payload.reason
                        size = 0
                    else:
                        size = len(payload)
                        refused = None
                        if max_payload is not None and size > max_payload:
                            refused = too_large(size, max_payload)
                    if batch and (
                        refused is not None
                        or batch_bytes + size + 4 > frame_bytes
                        or len(batch) >= ITEMS_PER_FRAME
                    ):
                        protocol.send_items(job_id, batch_first, batch)
                        sent += len(batch)
                        batch, batch_bytes = [], 0
                    if refused is not None or isinstance(payload, ItemRefused):
                        # Answered here, never sent: the batch was cut before
                        # it, so the indexes of every frame stay consecutive.
                        output.add(next_index, wire.STATUS_FAILED, (refused or "").encode("utf-8"))
                        answered_here = True
                    else:
                        if not batch:
                            batch_first = next_index
                        in_flight[next_index] = payload
                        batch.append(payload)
                        batch_bytes += size + 4
                    next_index += 1
                if batch:
                    protocol.send_items(job_id, batch_first, batch)
                    sent += len(batch)
                if answered_here:
                    output.flush()
                    progress(summary.done, summary.failed)
                if exhausted and not ended:
                    protocol.end_job(job_id, sent)
                    ended = True
                if exhausted and not in_flight:
                    break
                waiting: Deferred[None] = Deferred()
                wake.append(waiting)
                await waiting
            protocol.forget_job(job_id)
            summary.seconds = time.monotonic() - started
            return summary
        except SchedulerGone:
            wake.clear()
            if not reconnect:
                raise


def _resend(protocol: ClientProtocol, job_id: int, in_flight: dict[int, bytes], frame_bytes: int) -> int:
    """Send the items still in flight again, in runs of consecutive indexes."""
    sent = 0
    run: list[bytes] = []
    run_first = -1
    run_bytes = 0
    for index in sorted(in_flight):
        payload = in_flight[index]
        if run and (
            index != run_first + len(run)
            or len(run) >= ITEMS_PER_FRAME
            or run_bytes + len(payload) + 4 > frame_bytes
        ):
            protocol.send_items(job_id, run_first, run)
            sent += len(run)
            run, run_bytes = [], 0
        if not run:
            run_first = index
        run.append(payload)
        run_bytes += len(payload) + 4
    if run:
        protocol.send_items(job_id, run_first, run)
        sent += len(run)
    return sent
