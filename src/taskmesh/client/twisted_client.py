"""
The Python API: connect to a scheduler, submit tasks, get Deferreds back.

    client = await Client.connect("localhost:9001")
    total = await client.submit(add, 2, 3)              # 5: a task function, JSON in and out
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
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol

from taskmesh import wire
from taskmesh.client.mapping import DEFAULT_WINDOW, ItemRefused, MapSummary, Progress, Writer, run_map
from taskmesh.codec import decode_result, encode_arguments, task_failed
from taskmesh.errors import SchedulerGone, TaskCancelled, TaskFailed, TaskPending, TaskRejected, TaskUnknown
from taskmesh.functions import TaskFunction, as_task, task_options
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, client_endpoint
from taskmesh.net.client_protocol import ClientProtocol, outcome_error
from taskmesh.net.credentials import peer_secret
from taskmesh.net.tls import ClientTLS

__all__ = [
    "Client",
    "MapSummary",
    "SchedulerGone",
    "TaskCancelled",
    "TaskFailed",
    "TaskPending",
    "TaskRejected",
    "TaskUnknown",
    "task_options",
]

#: How long connect() waits for the scheduler's handshake before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0

Payload = str | bytes
P = ParamSpec("P")
R = TypeVar("R")
#: write(index, ok, value) of a task function's map: the decoded result, or a TaskFailed.
ValueWriter = Callable[[int, bool, Any], None]


class Client:
    """A connection to a scheduler, for submitting tasks and fetching results."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        reactor: Any = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_no_worker: Callable[[str], None] = lambda task_type: None,
        *,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        tls: ClientTLS | None = None,
    ) -> Client:
        """
        Connect and shake hands.  ``address`` is ``host:port`` or an endpoint
        string.  ``on_no_worker(task_type)`` is called when a task is accepted
        but no connected worker runs its type yet (it waits for one).

        The clients' secret is ``secret``, else ``TASKMESH_SECRET``, else the
        file ``secret_file``, else the one a scheduler of this user created on
        this machine; AuthenticationFailed if the scheduler refuses it or
        cannot prove it knows it.  ``tls`` connects a ``host:port`` over TLS.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if secret is None:
            key = peer_secret(secret_file)
        else:
            key = secret.encode("utf-8") if isinstance(secret, str) else secret
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
        return cls(protocol)

    @overload
    def submit(self, task: TaskFunction[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[R]: ...

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
    ) -> Deferred[bytes]: ...

    @overload
    def submit(
        self, task: Callable[P, Coroutine[Any, Any, R]] | Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[R]: ...

    def submit(self, task: Any, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
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
        it gets the first task's result.  Higher ``priority`` runs first.  A
        task function takes them from its decorator, or from
        ``add.options(...)`` passed in its place.
        """
        if isinstance(task, (str, bytes)):  # noqa: UP038  (a tuple is quicker here)
            if not kwargs and len(args) < 2:  # the common case, without a second call
                task_type = args[0] if args else DEFAULT_TASK_TYPE
                return self._protocol.submit(
                    wire.check_task_type(task_type), _as_bytes(task), wire.DEFAULT_OPTIONS
                )
            return self._submit_payload(task, *args, **kwargs)
        function = as_task(task)
        return self._protocol.submit(
            function.name, function.call_payload(args, kwargs), function.submit_options, decode_result
        )

    def _submit_payload(
        self,
        payload: Payload,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
    ) -> Deferred[bytes]:
        options = task_options(priority, timeout, max_attempts, key, retry_on_error)
        return self._protocol.submit(wire.check_task_type(task_type), _as_bytes(payload), options)

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
        if isinstance(task, str | bytes):
            return self._enqueue_payload(task, *args, **kwargs)
        function = as_task(task)
        return self._protocol.submit(
            function.name, function.call_payload(args, kwargs), function.enqueue_options
        )

    def _enqueue_payload(
        self,
        payload: Payload,
        task_type: str = DEFAULT_TASK_TYPE,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 0,
        key: str | None = None,
        retry_on_error: bool = False,
    ) -> Deferred[int]:
        options = task_options(priority, timeout, max_attempts, key, retry_on_error, True)
        return self._protocol.submit(wire.check_task_type(task_type), _as_bytes(payload), options)

    async def result(self, task_id: int, wait: bool = True, *, json: bool = False) -> Any:
        """
        A task's result by id: its bytes, or with ``json`` a task function's
        decoded result.  With ``wait`` it waits until the task is finished;
        without, an unfinished task raises TaskPending (its state is in
        ``.state``, and what it last reported with ``report_progress`` in
        ``.progress``).  TaskUnknown: no such id, or its result was pruned.
        """
        status, value = await self._protocol.query(task_id, wait)
        if status == wire.STATUS_OK:
            return decode_result(value) if json else value
        raise outcome_error(task_id, status, value)

    async def cancel(self, task_id: int) -> str:
        """Cancel a task; returns its state afterwards ('cancelled', 'succeeded' or 'failed')."""
        status, value = await self._protocol.cancel(task_id)
        if status == wire.STATUS_UNKNOWN:
            raise outcome_error(task_id, status, value)
        return {
            wire.STATUS_OK: "succeeded",
            wire.STATUS_FAILED: "failed",
            wire.STATUS_CANCELLED: "cancelled",
            wire.STATUS_PENDING: value.decode("utf-8", "replace"),
        }[status]

    async def map_stream(self, task: Any, /, *args: Any, **kwargs: Any) -> MapSummary:
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
        ends the map with SchedulerGone (the ``taskmesh map`` command
        reconnects and goes on instead).  Keyword options: ``priority``
        (a task function's own by default), ``chunk_size``, ``window``,
        ``size_hint``, ``progress``.
        """
        if _is_function(task):
            return await self._map_function(as_task(task), *args, **kwargs)
        return await self._map_payloads(task, *args, **kwargs)

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
    ) -> MapSummary:
        payloads = (_as_bytes(item) for item in items)
        return await self._run(payloads, write, task_type, priority, chunk_size, window, size_hint, progress)

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
    ) -> MapSummary:
        protocol = self._protocol

        async def same_connection() -> ClientProtocol:
            return protocol

        return await run_map(
            same_connection,
            payloads,
            write,
            task_type,
            priority=priority,
            chunk_size=chunk_size,
            window=window,
            size_hint=size_hint,
            progress=progress,
        )

    async def map(self, task: Any, /, *args: Any, **kwargs: Any) -> list[Any]:
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

    def status(self) -> Deferred[dict[str, Any]]:
        """The scheduler's workers and task counts, as a dict (see ``taskmesh status --json``)."""
        return self._protocol.status()

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
        protocol = self._protocol
        if not protocol.closing:
            protocol.flush()
            protocol.close()
        return protocol.lost


def _as_bytes(payload: Payload) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else payload


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
