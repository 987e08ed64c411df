"""
The Python API: connect to a scheduler, submit tasks, get Deferreds back.

    client = await Client.connect("localhost:9001")
    total = await client.submit(add, 2, 3)              # 5: a task function, JSON in and out
    handle = client.submit(add, 2, 3)                   # a TaskHandle: a Deferred of the result,
    task_id = await handle.id()                         #   which knows the task's id once accepted
    sums = await client.map(add, [(1, 2), (3, 4)])      # [3, 7], in input order
    digest = await client.submit("Hello, World!")       # b"dffd60...": a payload and a type (sha256)
    task_id = await client.enqueue(add, 2, 3)           # durable, not waited for
    total = await client.result(task_id, json=True)     # from any connection, later
    await client.close()

The call shape is the same in every taskmesh client: the first argument is
the task, a task function (``@taskmesh.task``) followed by *its* arguments,
all of them; or a payload (str or bytes) followed by a task type name and
keyword options, as before task functions.  A task function's options come
with it: its decorator's defaults, or ``add.options(priority=5, ...)``.

One rule for return types: every method returns a Deferred (``connect``
too), so ``await`` works in Twisted coroutines and ``addCallback`` works
anywhere.  Every wait can be bounded: ``wait_timeout=`` (seconds) on
``result``, ``cancel``, ``status`` and ``map``, and ``connect(...,
wait_timeout=)`` as the default for every call, ``submit`` included.  (The
task option ``timeout=`` bounds the worker's attempt, not the caller's
wait.)  A timed-out wait fails with TimeoutError; the task itself goes on.
With ``connect(..., reconnect=True)`` a dropped connection is made again
(with backoff, until ``close``) and every submission the scheduler had
accepted is re-attached by its id: its handle fires with the result all the
same.  A submission not yet accepted is sent again on the new connection:
one with a ``key`` runs once (the scheduler answers a repeated key with the
first task), one without runs at least once (twice, if the scheduler had
stored it but its acknowledgement was lost with the connection).
``reconnect_timeout=`` bounds how long it tries after a drop (seconds):
when that is spent, every pending call fails with SchedulerGone saying so,
and so does every later one.  ``on_lost()`` and ``on_reconnected()`` are
called when the connection drops and when it is back (the ``taskmesh``
command prints one line for each drop through them).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Coroutine, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskmesh import wire
from taskmesh.client.mapping import DEFAULT_WINDOW, Hold, ItemRefused, MapSummary, Progress, Writer, run_map
from taskmesh.client.operations import list_request, purge_request, retry_request
from taskmesh.client.schedules import add_command, name_command
from taskmesh.client.submission import Submission, as_bytes, submission
from taskmesh.codec import decode_result, encode_arguments, task_failed
from taskmesh.errors import (
    AuthenticationFailed,
    SchedulerGone,
    TaskCancelled,
    TaskFailed,
    TaskPending,
    TaskRejected,
    TaskUnknown,
)
from taskmesh.functions import TaskFunction, as_task, task_options
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, Addresses, client_endpoint, reach_leader
from taskmesh.net.client_protocol import ClientProtocol, outcome_error
from taskmesh.net.connection import cancelled_state, result_value
from taskmesh.net.credentials import peer_secret
from taskmesh.net.tls import ClientTLS

__all__ = [
    "Client",
    "MapSummary",
    "SchedulerGone",
    "TaskCancelled",
    "TaskFailed",
    "TaskHandle",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
    "task_options",
]

#: How long connect() waits for the scheduler's handshake before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds between attempts to reach a scheduler that went away (doubling up to the cap).
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0

_log = Logger()

Payload = str | bytes
P = ParamSpec("P")
R = TypeVar("R")
#: write(index, ok, value) of a task function's map: the decoded result, or a TaskFailed.
ValueWriter = Callable[[int, bool, Any], None]


class TaskHandle(Deferred[R], Generic[R]):
    """
    What ``submit`` returns at once: a Deferred of the task's result that
    also knows the task's id, once the scheduler has accepted it
    (``task_id``, or ``id()``, a Deferred of it).  A caller that gives up
    waiting can still ``client.cancel(handle.task_id)`` or fetch the result
    later with ``client.result(task_id)``.
    """

    # Class-level defaults instead of an __init__: one handle per submitted
    # task, so its creation is on the hot path.
    #: The task's id, once the scheduler has accepted it (None before).
    task_id: int | None = None
    _id_waiters: list[Deferred[int]] | None = None

    def id(self) -> Deferred[int]:
        """The task's id, once accepted; fails as the submission does if it never is."""
        if self.task_id is not None:
            return succeed(self.task_id)
        waiting: Deferred[int] = Deferred()
        if self.called:
            # Failed (or cancelled) before the scheduler accepted it.
            waiting.errback(SchedulerGone("the task was never accepted"))
            return waiting
        if self._id_waiters is None:
            self._id_waiters = []
            self.addErrback(self._no_id)
        self._id_waiters.append(waiting)
        return waiting

    @property
    def accepted_id(self) -> int | None:
        return self.task_id

    def accepted(self, task_id: int) -> None:
        self.task_id = task_id
        waiters = self._id_waiters
        if waiters is not None:
            self._id_waiters = None
            for waiting in waiters:
                waiting.callback(task_id)

    def _no_id(self, failure: Any) -> Any:
        waiters, self._id_waiters = self._id_waiters, None
        for waiting in waiters or ():
            waiting.errback(failure)
        return failure


class SubmissionAnswer(Protocol):
    """
    What a submission's outcome goes to: a TaskHandle, or the blocking
    client's Handle.  ``accepted`` is told the id when the scheduler has
    accepted the task; then the outcome fires it, at most once.
    """

    @property
    def called(self) -> bool: ...
    @property
    def accepted_id(self) -> int | None:
        """The task's id once the scheduler accepted it (None before)."""

    def accepted(self, task_id: int) -> None: ...
    def callback(self, result: Any) -> Any: ...
    def errback(self, fail: Any = None) -> Any: ...


def _timed_out(result: Any, timeout: float) -> Any:
    """A wait cut short raises the builtin TimeoutError, in all three clients alike."""
    if isinstance(result, Failure) and result.check(CancelledError):
        raise TimeoutError(f"no answer within {timeout:g} s")
    return result


def _resolve_reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


def _secret_bytes(secret: str | bytes | None, secret_file: str | None) -> bytes:
    if secret is None:
        return peer_secret(secret_file)
    return secret.encode("utf-8") if isinstance(secret, str) else secret


async def open_protocol(
    reactor: Any,
    address: str,
    timeout: float,
    on_no_worker: Callable[[str], None],
    key: bytes,
    tls: ClientTLS | None,
) -> ClientProtocol:
    """One connection, its handshake done within ``timeout`` seconds."""
    protocol = ClientProtocol(
        reactor, name=f"{socket.gethostname()}-{os.getpid()}", on_no_worker=on_no_worker, secret=key
    )
    connecting = connectProtocol(client_endpoint(reactor, address, tls), protocol)
    connecting.addTimeout(timeout, reactor)
    await connecting
    ready = protocol.ready
    ready.addTimeout(timeout, reactor)
    try:
        await ready
    except BaseException:
        protocol.transport.abortConnection()
        raise
    return protocol


class Client:
    """A connection to a scheduler, for submitting tasks and fetching results."""

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        reactor: Any = None,
        wait_timeout: float | None = None,
        reconnect: Callable[[], Deferred[ClientProtocol]] | None = None,
        reconnect_timeout: float | None = None,
        on_lost: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
    ) -> None:
        self._protocol = protocol
        # Time for timeouts and backoff: the connection's own clock unless told otherwise.
        self._reactor = protocol.clock if reactor is None else reactor
        #: The default bound, in seconds, of every wait (None: unbounded).
        self.wait_timeout = wait_timeout
        self._reconnect = reconnect
        #: Seconds to keep trying after a drop (None: until ``close``).
        self.reconnect_timeout = reconnect_timeout
        #: Called when the connection drops (reconnecting) and when it is back;
        #: attributes, so that a caller can change what it says as it goes.
        self.on_lost = on_lost
        self.on_reconnected = on_reconnected
        self._closed = False
        #: Why every call now fails: the reconnection's time was spent.
        self._gone: SchedulerGone | None = None
        #: Submissions sent again after a reconnection because they had not been accepted.
        self.resubmissions = 0
        #: Waiting for the next connection (while reconnecting).
        self._next_protocol: list[Deferred[ClientProtocol]] = []
        #: Times the connection was made again.
        self.reconnections = 0
        if reconnect is not None:
            self._watch(protocol)

    @classmethod
    def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        reactor: Any = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
        *,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        tls: ClientTLS | None = None,
        wait_timeout: float | None = None,
        reconnect: bool = False,
        reconnect_timeout: float | None = None,
        on_lost: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
    ) -> Deferred[Client]:
        """
        Connect and shake hands.  ``address`` is ``host:port`` or an endpoint
        string, or several separated by commas (``a:9001,b:9001``): each is
        tried in turn, and a hot standby's pointer to the leader is followed.
        ``on_no_worker(task_type)`` is called when a task is accepted
        but no connected worker runs its type yet (it waits for one).

        The clients' secret is ``secret``, else ``TASKMESH_SECRET``, else the
        file ``secret_file``, else the one a scheduler of this user created on
        this machine; AuthenticationFailed if the scheduler refuses it or
        cannot prove it knows it.  ``tls`` connects a ``host:port`` over TLS.

        ``wait_timeout``: the default bound of every wait (see the module's
        docstring).  ``reconnect``: make the connection again when it drops,
        and re-attach accepted submissions by id; ``reconnect_timeout``:
        for at most that many seconds after each drop, then every pending
        and later call fails with SchedulerGone; ``on_lost()`` and
        ``on_reconnected()``: called when it drops and when it is back.
        """
        reactor = _resolve_reactor(reactor)
        key = _secret_bytes(secret, secret_file)
        addresses = Addresses(address)

        def attempt(one: str) -> Deferred[ClientProtocol]:
            return Deferred.fromCoroutine(open_protocol(reactor, one, timeout, on_no_worker, key, tls))

        def again() -> Deferred[ClientProtocol]:
            return Deferred.fromCoroutine(reach_leader(addresses, attempt))

        async def first() -> Client:
            protocol = await reach_leader(addresses, attempt)
            return cls(
                protocol,
                reactor=reactor,
                wait_timeout=wait_timeout,
                reconnect=again if reconnect else None,
                reconnect_timeout=reconnect_timeout,
                on_lost=on_lost,
                on_reconnected=on_reconnected,
            )

        return Deferred.fromCoroutine(first())

    # -- reconnecting ----------------------------------------------------------

    def _watch(self, protocol: ClientProtocol) -> None:
        protocol.lost.addCallback(lambda _: self._lost(protocol))

    def _lost(self, protocol: ClientProtocol) -> None:
        if self._closed or protocol is not self._protocol:
            return
        _log.info("connection to the scheduler lost: reconnecting")
        if self.on_lost is not None:
            self.on_lost()
        Deferred.fromCoroutine(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        assert self._reconnect is not None
        delay = RECONNECT_FIRST_DELAY
        bound = self.reconnect_timeout
        deadline = None if bound is None else self._reactor.seconds() + bound
        while not self._closed:
            try:
                protocol = await self._reconnect()
            except AuthenticationFailed as e:
                _log.error("reconnecting: {error}; giving up", error=str(e))
                self._closed = True
                self._wake(None, e)
                return
            except Exception as e:
                _log.debug("reconnecting: {error}", error=str(e))
                if deadline is not None:
                    left = deadline - self._reactor.seconds()
                    if left <= 0:
                        self._give_up(bound or 0.0, e)
                        return
                    delay = min(delay, left)
                await deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if self._closed:
                protocol.transport.loseConnection()
                return
            self._protocol = protocol
            self.reconnections += 1
            self._watch(protocol)
            _log.info("reconnected to the scheduler")
            self._wake(protocol, None)
            if self.on_reconnected is not None:
                self.on_reconnected()
            return
        self._wake(None, SchedulerGone("the client was closed"))

    def _give_up(self, seconds: float, error: Exception) -> None:
        """The scheduler stayed away for ``reconnect_timeout``: every call fails from now on."""
        self._gone = SchedulerGone(
            f"lost the connection and could not reconnect within {seconds:g} seconds (last: {error})"
        )
        _log.error("reconnecting: {error}; giving up", error=str(self._gone))
        self._closed = True
        self._wake(None, self._gone)

    def _wake(self, protocol: ClientProtocol | None, error: Exception | None) -> None:
        waiting, self._next_protocol = self._next_protocol, []
        for answer in waiting:
            if protocol is not None:
                answer.callback(protocol)
            else:
                answer.errback(error)

    def _current(self) -> Deferred[ClientProtocol]:
        """The connection now, or the next one while reconnecting."""
        protocol = self._protocol
        if self._gone is not None:
            return fail(self._gone)
        if self._reconnect is None or self._closed or not protocol.closing:
            return succeed(protocol)
        waiting: Deferred[ClientProtocol] = Deferred()
        self._next_protocol.append(waiting)
        return waiting

    async def _retrying(self, request: Callable[[ClientProtocol], Deferred[Any]]) -> Any:
        """Make a request; while reconnecting, again on the next connection (requests here are idempotent)."""
        while True:
            protocol = await self._current()
            try:
                return await request(protocol)
            except SchedulerGone:
                if self._reconnect is None or self._closed:
                    raise

    def _bounded(self, waiting: Deferred[Any], wait_timeout: float | None) -> Deferred[Any]:
        seconds = self.wait_timeout if wait_timeout is None else wait_timeout
        if seconds is not None:
            waiting.addTimeout(seconds, self._reactor, onTimeoutCancel=_timed_out)
        return waiting

    def _submit(
        self, task_type: str, payload: bytes, options: wire.TaskOptions, decode: Any = None
    ) -> TaskHandle[Any]:
        handle: TaskHandle[Any] = TaskHandle()
        self.submit_into(handle, (task_type, payload, options, decode))
        if self.wait_timeout is not None:
            self._bounded(handle, None)
        return handle

    def submit_into(self, answer: SubmissionAnswer, request: Submission) -> None:
        """
        Send one submission whose outcome goes to ``answer``: ``submit``
        makes a TaskHandle, the blocking client passes its own handle, so
        that no Deferred stands between the connection and the caller's
        thread.  With reconnect on, it is re-attached or sent again after a
        drop, as ``submit``'s.
        """
        if self._reconnect is None:
            # Straight to the connection core: this runs once per task.
            self._protocol.core.submit(answer, *request, answer.accepted)
        else:
            self._submit_on(self._protocol, answer, request)

    def _submit_on(self, protocol: ClientProtocol, handle: SubmissionAnswer, request: Submission) -> None:
        """Submit on this connection; if it drops first, ``_reattach`` takes over."""
        if handle.called:  # its caller gave up (a timeout) while we reconnected
            return
        task_type, payload, options, decode = request
        inner = protocol.submit(task_type, payload, options, decode, handle.accepted)
        inner.addCallbacks(handle.callback, self._reattach, errbackArgs=(handle, request))

    def _reattach(self, failure: Any, handle: SubmissionAnswer, request: Submission) -> None:
        """
        The connection dropped under a submission.  Accepted: fetch its
        result by id on the next connection.  Never accepted: submit it
        again there (the scheduler may have stored it without our hearing
        so: a task with a ``key`` is then answered by the first one, never
        run twice; one without a key may run twice: at least once).
        """
        if handle.called:
            return
        task_id = handle.accepted_id
        if not failure.check(SchedulerGone) or self._closed:
            handle.errback(failure)
            return
        if task_id is None:
            self.resubmissions += 1
            self._current().addCallbacks(
                lambda protocol: self._submit_on(protocol, handle, request),
                lambda failure: None if handle.called else handle.errback(failure),
            )
            return
        decode = request[3]

        async def fetch() -> Any:
            status, value = await self._retrying(lambda protocol: protocol.query(task_id, True))
            if status != wire.STATUS_OK:
                raise outcome_error(task_id, status, value)
            return value if decode is None else decode(value)

        def fire(result: Any) -> None:
            if handle.called:
                return
            if isinstance(result, Failure):
                handle.errback(result)  # a Deferred would take it either way; a blocking Handle not
            else:
                handle.callback(result)

        Deferred.fromCoroutine(fetch()).addBoth(fire)

    @overload
    def submit(self, task: TaskFunction[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...

    @overload
    def submit(
        self,
        task: Payload,
        /,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
        delay: float | timedelta | None = None,
        at: float | datetime | None = None,
    ) -> TaskHandle[bytes]: ...

    @overload
    def submit(
        self, task: Callable[P, Coroutine[Any, Any, R]] | Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]: ...

    def submit(self, task: Any, /, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """
        Run one task and wait for it.

        ``submit(add, 2, 3)``: a task function and its arguments (every one
        of them goes to the function; they are checked against its signature
        here, and travel as JSON).  The Deferred fires with the decoded
        result, ``5``.  A function with no decorator is taken by its name,
        for a worker that runs it with ``--handler module:function``.

        ``submit("text", "sha256", priority=...)``: a payload (str is sent as
        UTF-8) and a task type; the Deferred fires with the result's bytes.

        Either way it fails with TaskFailed (the task failed: for a task
        function, carrying the remote exception's ``type``, ``message`` and
        ``traceback``), TaskCancelled, TaskRejected, or SchedulerGone.

        Options: ``timeout`` bounds each attempt's execution (seconds); a
        timed-out attempt is retried with exponential backoff up to
        ``max_attempts`` (0: the scheduler's default, 3).  ``retry_on_error``
        retries a handler's exception the same way instead of failing at
        once.  A second submission with the same ``key`` is not run again:
        it gets the first task's result.  Higher ``priority`` runs first.
        ``delay`` (seconds or a timedelta) or ``at`` (an aware datetime, or
        seconds since the epoch) stores the task now and runs it once due
        (``scheduled`` until then; cancellable).  A task function takes them
        from its decorator, or from ``add.options(...)`` passed in its place.
        """
        if (
            isinstance(task, (str, bytes))  # noqa: UP038  (a tuple is quicker here)
            and not kwargs
            and len(args) < 2
            and self._reconnect is None
            and self.wait_timeout is None
        ):
            # The usual case, submission() and _submit() inline: this runs once per task.
            handle: TaskHandle[bytes] = TaskHandle()
            task_type = wire.check_task_type(args[0]) if args else DEFAULT_TASK_TYPE
            payload = task.encode("utf-8") if isinstance(task, str) else task
            self._protocol.core.submit(
                handle, task_type, payload, wire.DEFAULT_OPTIONS, None, handle.accepted
            )
            return handle
        return self._submit(*submission(task, args, kwargs))

    @overload
    def enqueue(self, task: TaskFunction[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[int]: ...

    @overload
    def enqueue(
        self,
        task: Payload,
        /,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
        delay: float | timedelta | None = None,
        at: float | datetime | None = None,
    ) -> Deferred[int]: ...

    @overload
    def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[int]: ...

    def enqueue(self, task: Any, /, *args: Any, **kwargs: Any) -> Deferred[int]:
        """
        Queue one task without waiting for it, in ``submit``'s shape: the
        Deferred fires with its id once the scheduler has made it durable.
        Fetch the result later with ``result(task_id)`` (``json=True`` for a
        task function's), from this connection or any other.
        """
        task_type, payload, options, _ = submission(task, args, kwargs, enqueue=True)
        return self._enqueue(task_type, payload, options)

    def _enqueue(self, task_type: str, payload: bytes, options: wire.TaskOptions) -> Deferred[int]:
        if self._reconnect is None:
            return self._bounded(self._protocol.submit(task_type, payload, options), None)
        # Not accepted before the connection dropped: sent again on the next (see _reattach).
        return self._bounded(
            Deferred.fromCoroutine(
                self._retrying(lambda protocol: protocol.submit(task_type, payload, options))
            ),
            None,
        )

    def result(
        self, task_id: int, wait: bool = True, *, json: bool = False, wait_timeout: float | None = None
    ) -> Deferred[Any]:
        """
        A task's result by id: its bytes, or with ``json`` a task function's
        decoded result.  With ``wait`` it waits until the task is finished;
        without, an unfinished task raises TaskPending (its state is in
        ``.state``, and what it last reported with ``report_progress`` in
        ``.progress``).  TaskUnknown: no such id, or its result was pruned.
        """

        async def fetch() -> Any:
            status, value = await self._retrying(lambda protocol: protocol.query(task_id, wait))
            return result_value(task_id, status, value, json)

        return self._bounded(Deferred.fromCoroutine(fetch()), wait_timeout)

    def cancel(self, task_id: int, *, wait_timeout: float | None = None) -> Deferred[str]:
        """Cancel a task; fires with its state afterwards ('cancelled', 'succeeded' or 'failed')."""

        async def cancel() -> str:
            status, value = await self._retrying(lambda protocol: protocol.cancel(task_id))
            return cancelled_state(task_id, status, value)

        return self._bounded(Deferred.fromCoroutine(cancel()), wait_timeout)

    def map_stream(self, task: Any, /, *args: Any, **kwargs: Any) -> Deferred[MapSummary]:
        """
        Run every item as a task; ``write(index, ok, value)`` is called for
        each answer in input order, as soon as every earlier item has one.

        ``map_stream(add, items, write)``: each item is a tuple of the task
        function's positional arguments (anything else is its one argument);
        ``value`` is the decoded result, or a TaskFailed.  An item whose
        arguments do not fit the function, or are not JSON, fails alone,
        without being sent.  ``map_stream(items, write, "sha256")``: each
        item a payload; ``value`` the result's bytes, or the reason's.

        The scheduler cuts the items into chunks (``chunk_size`` 0: sized to
        the job's speed); at most ``window`` items are in flight, so memory
        stays bounded however many items there are.  A dropped connection
        ends the map with SchedulerGone, unless the client reconnects: then
        the job is opened again and the unanswered items sent again (as the
        ``taskmesh map`` command does).  Keyword options: ``priority``
        (a task function's own by default), ``chunk_size``, ``window``,
        ``size_hint``, ``progress``, and ``hold(resume)`` for a consumer
        slower than the workers: asked before more items are sent, True
        pauses the map until ``resume()`` is called in the reactor thread.
        """
        wait_timeout = kwargs.pop("wait_timeout", None)
        if _is_function(task):
            running = self._map_function(as_task(task), *args, **kwargs)
        else:
            running = self._map_payloads(task, *args, **kwargs)
        return self._bounded(Deferred.fromCoroutine(running), wait_timeout)

    async def _map_function(
        self,
        function: TaskFunction[Any, Any],
        items: Iterable[Any] | _Encoded,
        write: ValueWriter,
        *,
        priority: int | None = None,
        chunk_size: int = 0,
        window: int = DEFAULT_WINDOW,
        size_hint: int = 0,
        progress: Progress = lambda done, failed: None,
        hold: Hold | None = None,
    ) -> MapSummary:
        def decoded(index: int, ok: bool, value: bytes) -> None:
            if not ok:
                write(index, False, task_failed(value))
                return
            try:
                result = decode_result(value)
            except ValueError as e:
                write(index, False, TaskFailed(str(e)))
                return
            write(index, True, result)

        return await self._run(
            function_payloads(function, items),
            decoded,
            function.name,
            function.priority if priority is None else priority,
            chunk_size,
            window,
            size_hint,
            progress,
            hold,
        )

    async def _map_payloads(
        self,
        items: Iterable[Payload],
        write: Writer,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        chunk_size: int = 0,
        window: int = DEFAULT_WINDOW,
        size_hint: int = 0,
        progress: Progress = lambda done, failed: None,
        hold: Hold | None = None,
    ) -> MapSummary:
        payloads = (as_bytes(item) for item in items)
        return await self._run(
            payloads, write, task_type, priority, chunk_size, window, size_hint, progress, hold
        )

    async def _run(
        self,
        payloads: Iterator[bytes | ItemRefused],
        write: Writer,
        task_type: str,
        priority: int,
        chunk_size: int,
        window: int,
        size_hint: int,
        progress: Progress,
        hold: Hold | None = None,
    ) -> MapSummary:
        first = self._protocol

        async def connection() -> ClientProtocol:
            if self._reconnect is None:
                return first
            return await self.connection()

        return await run_map(
            connection,
            payloads,
            write,
            task_type,
            priority=priority,
            chunk_size=chunk_size,
            window=window,
            size_hint=size_hint,
            progress=progress,
            reconnect=self._reconnect is not None,
            hold=hold,
        )

    def map(self, task: Any, /, *args: Any, **kwargs: Any) -> Deferred[list[Any]]:
        """
        Run every item as a task and return the results in input order.

        ``map(add, [(1, 2), (3, 4)])``: a task function and one tuple of
        positional arguments per item (anything else is the function's one
        argument: ``map(square, range(10))``); the results are decoded,
        ``[3, 7]``.  ``map(lines, "sha256")``: payloads and a task type; the
        results are bytes.  An item that failed is a TaskFailed saying why,
        in its place.  Keyword options: ``priority``, ``chunk_size``.  Holds
        every result in memory; for large inputs use ``map_stream``.
        """
        wait_timeout = kwargs.pop("wait_timeout", None)
        return self._bounded(Deferred.fromCoroutine(self._map(task, *args, **kwargs)), wait_timeout)

    async def _map(self, task: Any, /, *args: Any, **kwargs: Any) -> list[Any]:
        results: list[Any] = []

        def collect(index: int, ok: bool, value: Any) -> None:
            results.append(value)

        if _is_function(task):
            function = as_task(task)
            items, *rest = args
            # Every item is checked and encoded before the job opens: a bad
            # one raises here, with nothing sent.
            payloads = [
                payload
                for payload in function_payloads(function, items, refuse=False)
                if isinstance(payload, bytes)
            ]
            await self._map_function(function, _Encoded(payloads), collect, *rest, **kwargs)
            return results

        def collect_bytes(index: int, ok: bool, value: bytes) -> None:
            results.append(value if ok else task_failed(value))

        await self._map_payloads(task, collect_bytes, *args, **kwargs)
        return results

    def add_schedule(self, name: str, task: Any, /, *args: Any, **kwargs: Any) -> Deferred[dict[str, Any]]:
        """
        Create (or replace) the periodic schedule ``name``: every tick
        submits ``task`` in ``submit``'s shape (a task function and its
        arguments, or a payload and ``task_type=``).  Keywords: ``cron``
        ("*/5 * * * *") with ``tz`` (an IANA zone, default UTC), or
        ``every`` (seconds or a timedelta); ``skip_missed=True`` skips the
        ticks missed while the scheduler was down (default: the latest runs
        once); and the task options ``priority``, ``timeout``,
        ``max_attempts``, ``retry_on_error``.  Fires with the schedule (its
        ``next_due``, ...); fails with ScheduleRefused and the reason.
        """
        command = add_command(name, task, args, dict(kwargs))
        return self._schedule(command)

    def schedules(self, *, wait_timeout: float | None = None) -> Deferred[list[dict[str, Any]]]:
        """Every schedule: name, cron or every, tz, next_due, last_due, last_task, paused."""
        return self._schedule(name_command(wire.SCHEDULE_LIST, ""), wait_timeout)

    def remove_schedule(self, name: str, *, wait_timeout: float | None = None) -> Deferred[Any]:
        """Remove a schedule (its tasks stay); ScheduleRefused if there is none of that name."""
        return self._schedule(name_command(wire.SCHEDULE_REMOVE, name), wait_timeout)

    def pause_schedule(self, name: str, *, wait_timeout: float | None = None) -> Deferred[Any]:
        """Stop a schedule's ticks until it is resumed."""
        return self._schedule(name_command(wire.SCHEDULE_PAUSE, name), wait_timeout)

    def resume_schedule(self, name: str, *, wait_timeout: float | None = None) -> Deferred[Any]:
        """Start a paused schedule's ticks again, from the first one due after now."""
        return self._schedule(name_command(wire.SCHEDULE_RESUME, name), wait_timeout)

    def _schedule(self, command: wire.ScheduleCommand, wait_timeout: float | None = None) -> Deferred[Any]:
        return self._bounded(
            Deferred.fromCoroutine(self._retrying(lambda protocol: protocol.schedule(command))), wait_timeout
        )

    def status(self, *, wait_timeout: float | None = None) -> Deferred[dict[str, Any]]:
        """The scheduler's workers and task counts, as a dict (see ``taskmesh status --json``)."""
        return self._bounded(
            Deferred.fromCoroutine(self._retrying(lambda protocol: protocol.status())), wait_timeout
        )

    def tasks(
        self,
        state: str | None = None,
        task_type: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        *,
        wait_timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        A page of the scheduler's task list, newest first: ``{"tasks": [...],
        "next_before": id or None}`` (pass ``next_before`` as ``before_id``
        for the next page).  ``state``: unfinished, succeeded, failed or
        cancelled.  See docs/protocol.md §16.2 for the rows.
        """
        request = list_request(state, task_type, limit, before_id)
        return self._operate(request, wait_timeout)

    def retry(
        self,
        *task_ids: int,
        failed: bool = False,
        task_type: str | None = None,
        wait_timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Run failed or cancelled tasks again under their ids, with fresh
        attempts (``failed=True``: every failed one, of ``task_type``):
        ``{"retried": [...], "refused": [[id, reason], ...], "more": bool}``.
        """
        return self._operate(retry_request(task_ids, failed, task_type), wait_timeout)

    def purge(self, task_type: str, *, wait_timeout: float | None = None) -> Deferred[dict[str, Any]]:
        """Cancel every queued task of this type: ``{"purged": count}``."""
        return self._operate(purge_request(task_type), wait_timeout)

    def _operate(self, request: Any, wait_timeout: float | None) -> Deferred[dict[str, Any]]:
        return self._bounded(
            Deferred.fromCoroutine(self._retrying(lambda protocol: protocol.operate(request))), wait_timeout
        )

    def connection(self) -> Deferred[ClientProtocol]:
        """
        The connection now, or while reconnecting the next one, for tools
        that drive the protocol themselves (the ``taskmesh map`` command):
        SchedulerGone once the client is closed or its reconnect gave up.
        """
        if self._closed and self._gone is None:
            return fail(SchedulerGone("the client was closed"))
        return self._current()

    @property
    def protocol(self) -> ClientProtocol:
        """This connection's protocol, for tools built on it (the map driver)."""
        return self._protocol

    @property
    def max_payload(self) -> int:
        welcome = self._protocol.welcome
        return welcome.max_payload if welcome else 0

    def close(self) -> Deferred[None]:
        """Send what is queued and disconnect; what is still pending fails with SchedulerGone."""
        self._closed = True
        self._wake(None, SchedulerGone("the client was closed"))
        protocol = self._protocol
        if not protocol.closing:
            protocol.flush()
            protocol.close()
        return protocol.lost


def _is_function(task: object) -> bool:
    """Whether a map's first argument is a task (a function), not its items."""
    return isinstance(task, TaskFunction) or (callable(task) and not isinstance(task, Iterable))


class _Encoded:
    """Items already encoded as a task function's payloads (map checks them all first)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads


def function_payloads(
    function: TaskFunction[Any, Any], items: Iterable[Any] | _Encoded, refuse: bool = True
) -> Iterator[bytes | ItemRefused]:
    """
    The payloads of a task function's map: one tuple of positional arguments
    per item (anything else is the function's one argument).  With
    ``refuse``, an item that does not fit becomes an ItemRefused (it fails
    alone, unsent); without, its TypeError is raised.
    """
    if isinstance(items, _Encoded):
        yield from items.payloads
        return
    check = function.check_call
    for item in items:
        arguments = item if type(item) is tuple else (item,)
        try:
            check(arguments, {})
            yield encode_arguments(arguments, {})
        except TypeError as e:
            if not refuse:
                raise
            yield ItemRefused(str(e))
