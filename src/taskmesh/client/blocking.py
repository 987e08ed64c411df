"""
The blocking client, for code that is not Twisted code: scripts, Flask and
Django views, Jupyter.

    import taskmesh
    from tasks import add

    client = taskmesh.connect("localhost:9001")
    print(client.submit(add, 2, 3))                 # 5: waits for the result
    task_id = client.enqueue(add, 2, 3)             # the id, once the task is durable
    print(client.result(task_id, json=True))        # 5
    for total in client.map(add, [(1, 2), (3, 4)]): # 3, 7: in input order
        print(total)

It drives the Twisted ``Client`` (so the same connection core) on one
reactor thread per process, started on first use and stopped at interpreter
exit (before non-daemon threads are joined, so a script never hangs there).
Every method may be called from any thread.  Every wait is bounded: by
``wait_timeout=`` where a method takes it, else by the ``wait_timeout``
given to ``connect`` (60 s by default; None waits forever).  A timed-out
wait raises TimeoutError; the task itself goes on.

A process forked after its client started (gunicorn's ``--preload``,
``multiprocessing`` with fork) cannot use it in the child: the reactor
thread is not there, and the reactor and its sockets are the parent's (a
Twisted reactor cannot be started twice, so the child cannot connect
either).  Every call there raises RuntimeError saying so.  Connect after
the fork instead: lazily, on first use in each worker process, not at
import time in a preloading parent.

Pipelining: ``start(...)`` submits without waiting and returns a ``Handle``
(``.result(timeout)``, ``.task_id``): start many, then gather, and each task
costs no thread round trip of its own.  Calls from user threads are handed
to the reactor in batches (one wake-up of the reactor per batch, not per
call).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskmesh.client.submission import submission
from taskmesh.client.twisted_client import DEFAULT_CONNECT_TIMEOUT, Client
from taskmesh.errors import SchedulerGone
from taskmesh.net.address import DEFAULT_ADDRESS, parse_addresses
from taskmesh.net.tls import ClientTLS

__all__ = ["BlockingClient", "Handle", "connect", "shutdown"]

#: The default bound of every wait, in seconds.
DEFAULT_WAIT_TIMEOUT = 60.0
#: Seconds the reactor thread has to stop at exit.
STOP_TIMEOUT = 5.0

T = TypeVar("T")


class _ReactorThread:
    """The process's one reactor, running in a daemon thread; calls reach it in batches."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any] | None]] = deque()
        self._scheduled = False
        self._thread: threading.Thread | None = None
        #: Why calls are refused from now on (None: they are not): stopped, or forked.
        self._refusal: str | None = None
        #: Whether this is a child forked from the process whose thread this was.
        self.forked = False

    def start(self) -> None:
        if self.reactor.running:
            raise RuntimeError(
                "the Twisted reactor already runs in this process: use taskmesh.Client, "
                "not the blocking client"
            )
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self._thread = threading.Thread(
            target=self.reactor.run,
            kwargs={"installSignalHandlers": False},
            name="taskmesh-reactor",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(STOP_TIMEOUT * 2):
            raise RuntimeError("the reactor thread did not start")
        _at_exit(self.stop)

    def call(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """
        Run ``function(*args)`` on the reactor thread; the Future has its
        result (a Deferred's, once it fires).  Thread-safe; calls made while
        a batch is pending join it, without another wake-up.
        """
        future: Future[Any] = Future()
        self._post(function, args, future)
        return future

    def post(self, function: Callable[..., Any], *args: Any) -> None:
        """``call`` for a function that reports by itself: no Future (the pipelined hot path)."""
        self._post(function, args, None)

    @property
    def stopped(self) -> bool:
        return self._refusal is not None

    def _post(self, function: Callable[..., Any], args: tuple[Any, ...], future: Future[Any] | None) -> None:
        if self._refusal is not None:
            raise RuntimeError(self._refusal)
        self._calls.append((function, args, future))
        if not self._scheduled:
            self._scheduled = True
            self.reactor.callFromThread(self._drain)

    def _drain(self) -> None:
        # Cleared before taking calls: one appended from now on schedules
        # another drain, so none is left behind.
        self._scheduled = False
        calls = self._calls
        while calls:
            function, args, future = calls.popleft()
            try:
                result = function(*args)
            except BaseException as e:
                if future is None:
                    raise  # a bug: post()ed functions report their own errors
                future.set_exception(e)
                continue
            if future is None:
                continue
            if isinstance(result, Deferred):
                result.addCallbacks(_set_result, _set_failure, (future,), {}, (future,))
            else:
                future.set_result(result)

    def refuse_after_fork(self, parent: int) -> None:
        """
        In a child process forked from one where this thread ran: the
        thread is not here (fork copies only the forking thread), and the
        reactor's epoll and sockets are the parent's, shared: using them
        would hang, or steal the parent's answers.  Refuse, saying why.
        """
        self.forked = True
        self._refusal = (
            f"this process was forked from pid {parent} after its taskmesh client had started; "
            "a forked child can neither use its parent's connection nor start its own: connect "
            "only after forking (lazily, on first use in each worker process; not at import time "
            "in a parent that preloads)"
        )

    def stop(self) -> None:
        """Stop the reactor (it closes its connections and thread pool) and wait for its thread."""
        if self.stopped or self._thread is None:
            return
        self._refusal = "the taskmesh reactor thread has stopped (shutdown(), or the interpreter is exiting)"
        if self.reactor.running:
            self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(STOP_TIMEOUT)


def _set_result(result: Any, future: Future[Any]) -> None:
    if not future.done():
        future.set_result(result)


def _set_failure(failure: Any, future: Future[Any]) -> None:
    if not future.done():
        future.set_exception(failure.value)


def _at_exit(stop: Callable[[], None]) -> None:
    """
    Stop at interpreter exit, before non-daemon threads are joined (the
    reactor's thread pool holds some: joined first, they would hang the exit).
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(stop)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(stop)


_lock = threading.Lock()
_thread: _ReactorThread | None = None


def _after_fork_in_child() -> None:
    global _lock, _handoff
    # A fork while another thread held one would leave it held forever.
    _lock, _handoff = threading.Lock(), threading.Lock()
    if _thread is not None:
        _thread.refuse_after_fork(os.getppid())


os.register_at_fork(after_in_child=_after_fork_in_child)


def reactor_thread() -> _ReactorThread:
    """The process's reactor thread, started on first use (in a forked child: refused, saying why)."""
    global _thread
    with _lock:
        if _thread is not None and _thread._refusal is not None:
            raise RuntimeError(_thread._refusal)
        if _thread is None:
            thread = _ReactorThread()
            thread.start()
            _thread = thread
        return _thread


def shutdown() -> None:
    """Stop the reactor thread now (it is stopped at exit anyway); clients stop working."""
    with _lock:
        if _thread is not None:
            _thread.stop()


def _wait(future: Future[T], timeout: float | None) -> T:
    try:
        return future.result(timeout)
    except TimeoutError:
        if future.done():
            raise  # the task's own TimeoutError
        raise TimeoutError(f"no answer within {timeout:g} s") from None


#: Guards the hand-off between the reactor thread finishing a Handle and a
#: thread starting to wait on it: one lock for all of them, held for a few
#: attribute reads and writes, so that a Handle needs no lock of its own.
_handoff = threading.Lock()


class Handle:
    """
    A task submitted with ``start``: its id once accepted, its result later.

    It is also what the connection core fires (its answer, on the reactor
    thread): no Deferred or Future per task, and a waiting thread's Event
    only if it has to wait, so pipelined tasks cost little memory and little
    garbage collection.
    """

    __slots__ = ("_client", "_event", "_id_waiters", "_outcome", "accepted_id")

    def __init__(self, client: BlockingClient) -> None:
        self._client = client
        #: (True, result) or (False, exception), once finished.
        self._outcome: tuple[bool, Any] | None = None
        self._event: threading.Event | None = None
        #: The task's id once the scheduler accepted it (set on the reactor thread).
        self.accepted_id: int | None = None
        self._id_waiters: list[Deferred[int]] | None = None

    def result(self, timeout: float | None = -1.0) -> Any:
        """The task's result; waits at most ``timeout`` seconds (default: the client's wait_timeout)."""
        outcome = self._outcome
        if outcome is None:
            if self._client._thread.forked:  # never to be answered here: the parent's
                raise RuntimeError(self._client._thread._refusal)
            with _handoff:
                outcome = self._outcome
                if outcome is None:
                    event = self._event = self._event or threading.Event()
            if outcome is None:
                seconds = self._client.wait_timeout if timeout == -1.0 else timeout
                if not event.wait(seconds):
                    raise TimeoutError(f"no answer within {seconds:g} s")
                outcome = self._outcome
        assert outcome is not None
        ok, value = outcome
        if ok:
            return value
        raise value

    def done(self) -> bool:
        return self._outcome is not None

    @property
    def task_id(self) -> int:
        """The task's id, once the scheduler accepted it (waits for that, within the client's bound)."""
        known = self.accepted_id
        if known is not None:
            return known
        return int(_wait(self._client._thread.call(self._id), self._client.wait_timeout))

    # -- the reactor thread's side: the connection core's answer -----------------

    @property
    def called(self) -> bool:
        return self._outcome is not None

    def accepted(self, task_id: int) -> None:
        self.accepted_id = task_id
        waiters, self._id_waiters = self._id_waiters, None
        for waiting in waiters or ():
            waiting.callback(task_id)

    def callback(self, result: Any) -> None:
        if isinstance(result, Failure):  # as for a Deferred: a failure all the same
            self.errback(result)
        else:
            self._finish((True, result))

    def errback(self, fail: Any = None) -> None:
        self._finish((False, fail.value if isinstance(fail, Failure) else fail))

    def _finish(self, outcome: tuple[bool, Any]) -> None:
        with _handoff:
            if self._outcome is not None:
                return
            self._outcome = outcome
            event = self._event
        if event is not None:
            event.set()
        waiters, self._id_waiters = self._id_waiters, None
        for waiting in waiters or ():
            waiting.errback(_no_id(outcome))

    def _id(self) -> Any:
        """On the reactor thread: the id, or a Deferred of it (calls run in order: after the submission)."""
        if self.accepted_id is not None:
            return self.accepted_id
        outcome = self._outcome
        if outcome is not None:
            raise _no_id(outcome)
        waiting: Deferred[int] = Deferred()
        if self._id_waiters is None:
            self._id_waiters = []
        self._id_waiters.append(waiting)
        return waiting


def _no_id(outcome: tuple[bool, Any]) -> BaseException:
    """Why a task finished without an id: its submission's error (or, oddly, none)."""
    ok, value = outcome
    return SchedulerGone("the task was never accepted") if ok else value


class BlockingClient:
    """A connection to a scheduler whose every method blocks (boundedly); thread-safe."""

    def __init__(self, client: Client, thread: _ReactorThread, wait_timeout: float | None) -> None:
        self._client = client
        self._thread = thread
        #: The default bound of every wait, in seconds (None: unbounded).
        self.wait_timeout = wait_timeout

    def _bound(self, wait_timeout: float | None) -> float | None:
        return self.wait_timeout if wait_timeout is None else wait_timeout

    def start(self, task: Any, /, *args: Any, **kwargs: Any) -> Handle:
        """Submit without waiting, in ``submit``'s shape; the Handle has the result later."""
        handle = Handle(self)
        self._thread.post(self._start, handle, task, args, kwargs)
        return handle

    def _start(self, handle: Handle, task: Any, args: Any, kwargs: Any) -> None:
        try:
            self._client.submit_into(handle, submission(task, args, kwargs))
        except Exception as e:  # the arguments were refused (TypeError, ...): the caller's error
            handle.errback(e)

    def submit(self, task: Any, /, *args: Any, **kwargs: Any) -> Any:
        """
        Run one task and return its result: ``submit(add, 2, 3)`` is 5;
        ``submit("text", "sha256")`` the result's bytes.  Raises as the
        Twisted client's Deferred fails (TaskFailed, TaskCancelled,
        TaskRejected, SchedulerGone), or TimeoutError after the client's
        ``wait_timeout``.
        """
        return self.start(task, *args, **kwargs).result()

    def enqueue(self, task: Any, /, *args: Any, **kwargs: Any) -> int:
        """Queue one task without waiting for it; returns its id once it is durable."""
        found = self._thread.call(lambda: self._client.enqueue(task, *args, **kwargs))
        return int(_wait(found, self.wait_timeout))

    def result(
        self, task_id: int, wait: bool = True, *, json: bool = False, wait_timeout: float | None = None
    ) -> Any:
        """A task's result by id (see ``Client.result``), waiting at most ``wait_timeout`` seconds."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(lambda: self._client.result(task_id, wait, json=json, wait_timeout=bound))
        return _wait(found, None if bound is None else bound + 1)

    def cancel(self, task_id: int, *, wait_timeout: float | None = None) -> str:
        """Cancel a task; returns its state afterwards ('cancelled', 'succeeded' or 'failed')."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(lambda: self._client.cancel(task_id, wait_timeout=bound))
        return str(_wait(found, None if bound is None else bound + 1))

    def add_schedule(self, name: str, task: Any, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """
        Create or replace a periodic schedule; returns it (``next_due``, ...).
        ``client.add_schedule("tidy", tidy, cron="*/5 * * * *", tz="Europe/Paris")``
        or ``every=10``; see ``taskmesh.Client.add_schedule`` for the rest.
        """
        wait_timeout = kwargs.pop("wait_timeout", None)
        return dict(
            self._schedule(lambda: self._client.add_schedule(name, task, *args, **kwargs), wait_timeout)
        )

    def schedules(self, *, wait_timeout: float | None = None) -> list[dict[str, Any]]:
        """Every schedule: name, cron or every, tz, next_due, last_due, last_task, paused."""
        return list(self._schedule(self._client.schedules, wait_timeout))

    def remove_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return self._schedule(lambda: self._client.remove_schedule(name), wait_timeout)

    def pause_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return self._schedule(lambda: self._client.pause_schedule(name), wait_timeout)

    def resume_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return self._schedule(lambda: self._client.resume_schedule(name), wait_timeout)

    def _schedule(self, request: Callable[[], Any], wait_timeout: float | None) -> Any:
        bound = self._bound(wait_timeout)

        def bounded() -> Any:
            return self._client._bounded(request(), bound)

        return _wait(self._thread.call(bounded), None if bound is None else bound + 1)

    def status(self, *, wait_timeout: float | None = None) -> dict[str, Any]:
        """The scheduler's workers and task counts, as a dict."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(lambda: self._client.status(wait_timeout=bound))
        return dict(_wait(found, None if bound is None else bound + 1))

    def tasks(
        self,
        state: str | None = None,
        task_type: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        *,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """A page of the task list, newest first (see the Twisted client's ``tasks``)."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(
            lambda: self._client.tasks(state, task_type, limit, before_id, wait_timeout=bound)
        )
        return dict(_wait(found, None if bound is None else bound + 1))

    def retry(
        self,
        *task_ids: int,
        failed: bool = False,
        task_type: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run failed or cancelled tasks again under their ids (see the Twisted client's ``retry``)."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(
            lambda: self._client.retry(*task_ids, failed=failed, task_type=task_type, wait_timeout=bound)
        )
        return dict(_wait(found, None if bound is None else bound + 1))

    def purge(self, task_type: str, *, wait_timeout: float | None = None) -> dict[str, Any]:
        """Cancel every queued task of this type: ``{"purged": count}``."""
        bound = self._bound(wait_timeout)
        found = self._thread.call(lambda: self._client.purge(task_type, wait_timeout=bound))
        return dict(_wait(found, None if bound is None else bound + 1))

    def map(self, task: Any, /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """
        Run every item as a task (``map(add, [(1, 2), (3, 4)])``, or payloads
        and a task type, as ``Client.map``); yields the results in input
        order as they come, a failed item's TaskFailed in its place.  Each
        result must come within ``wait_timeout`` (keyword) of the one before.

        Backpressure: once ``buffer`` (keyword, default 10,000) results wait
        for the loop that reads them, the map sends no more items until the
        reader has taken half of them, so a slow consumer holds at most
        ``buffer`` + ``window`` results (the items already in flight are
        still answered), never the whole map.
        """
        bound = self._bound(kwargs.pop("wait_timeout", None))
        buffer = kwargs.pop("buffer", DEFAULT_MAP_BUFFER)
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        answers: deque[tuple[bool, Any]] = deque()
        ready = threading.Condition()
        #: The map's resume() while it is held because the consumer has no room.
        held: list[Callable[[], None]] = []

        def put(entry: tuple[bool, Any]) -> None:
            with ready:
                answers.append(entry)
                ready.notify()

        def write(index: int, ok: bool, value: Any) -> None:
            put((False, value))

        def hold(resume: Callable[[], None]) -> bool:
            # In the reactor thread, before the map reads more items.
            with ready:
                if len(answers) < buffer:
                    return False
                held[:] = [resume]
                return True

        def run() -> Deferred[Any]:
            options = {**kwargs, "hold": hold}
            if callable(task) and not isinstance(task, str | bytes):
                running = self._client.map_stream(task, args[0], write, *args[1:], **options)
            else:
                running = self._client.map_stream(task, _bytes_writer(write), *args, **options)
            return running.addBoth(lambda outcome: put((True, outcome)))

        self._thread.call(run)
        return self._answers(answers, ready, bound, buffer, held)

    def _answers(
        self,
        answers: deque[tuple[bool, Any]],
        ready: threading.Condition,
        bound: float | None,
        buffer: int,
        held: list[Callable[[], None]],
    ) -> Iterator[Any]:
        while True:
            with ready:
                if not answers and not ready.wait_for(lambda: bool(answers), bound):
                    raise TimeoutError(f"no answer within {bound} s")
                finished, value = answers.popleft()
                resume = held.pop() if held and len(answers) <= buffer // 2 else None
            if resume is not None:
                self._thread.post(resume)  # the map reads on (in the reactor thread)
            if finished:
                if hasattr(value, "raiseException"):
                    value.raiseException()
                return
            yield value

    def close(self, *, wait_timeout: float | None = None) -> None:
        """Disconnect; what is still pending fails with SchedulerGone."""
        if self._thread.stopped:
            return
        _wait(self._thread.call(self._client.close), self._bound(wait_timeout))

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: Results a blocking map holds for its reader before it stops sending items.
DEFAULT_MAP_BUFFER = 10_000


def _bytes_writer(write: Callable[[int, bool, Any], None]) -> Callable[[int, bool, bytes], None]:
    from taskmesh.codec import task_failed

    def written(index: int, ok: bool, value: bytes) -> None:
        write(index, ok, value if ok else task_failed(value))

    return written


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    secret: str | bytes | None = None,
    secret_file: str | None = None,
    tls: ClientTLS | None = None,
    reconnect: bool = False,
    on_no_worker: Callable[[str], None] = lambda task_type: None,
    reconnect_timeout: float | None = None,
) -> BlockingClient:
    """
    Connect to the scheduler at ``address`` (``host:port`` or an endpoint
    string, or several separated by commas, tried in turn), within
    ``timeout`` seconds each; see ``taskmesh.Client.connect`` for
    the secret, TLS, ``reconnect`` and ``reconnect_timeout``.  ``wait_timeout`` bounds every later
    wait (None: unbounded).  The first call starts the reactor thread.
    """
    thread = reactor_thread()
    connecting = thread.call(
        lambda: Client.connect(
            address,
            thread.reactor,
            timeout,
            on_no_worker,
            secret=secret,
            secret_file=secret_file,
            tls=tls,
            reconnect=reconnect,
            reconnect_timeout=reconnect_timeout,
        )
    )
    tries = len(parse_addresses(address)) + 1  # each in the list, and one pointer followed
    client = _wait(connecting, timeout * 2 * tries + 1)
    return BlockingClient(client, thread, wait_timeout)
