"""
The asyncio client: native asyncio, no Twisted reactor in the process.

    import taskmesh.aio
    from tasks import add

    async def main():
        client = await taskmesh.aio.connect("localhost:9001")
        print(await client.submit(add, 2, 3))           # 5
        print(await client.map(add, [(1, 2), (3, 4)]))  # [3, 7]
        await client.close()

    asyncio.run(main())

It speaks through the same sans-I/O connection core as the Twisted client
(``taskmesh.net.connection``), driven by an ``asyncio.Protocol``: frames are
read by the same ``FrameReader`` (within the frame limit the scheduler
announced), records queued in one turn of the loop leave together, and it
sends the heartbeats the scheduler asks for and drops a scheduler silent for
heartbeat x tolerance.  It runs under ``asyncio.run``, in FastAPI or aiohttp,
and with uvloop.

``submit`` returns a ``TaskFuture`` at once: an asyncio future of the result
that also knows the task's id once accepted (``task_id``, ``await
fut.id()``); the other methods are coroutines.  Every wait can be bounded:
``wait_timeout=`` on ``result``, ``cancel``, ``status``, ``map``, and
``connect(..., wait_timeout=)`` as the default of every call, ``submit``
included (TimeoutError; the task itself goes on).  ``reconnect=True`` makes a
dropped connection again, re-attaches accepted tasks by id and sends again
those not yet accepted, as the Twisted client does.  Addresses are
``host:port`` or the endpoint strings that make sense without Twisted
(``tcp:``, ``unix:``, ``tls:``, read by ``net.address.parse_plain_endpoint``);
TLS also with ``tls=ClientTLS(...)``, through ``ssl.SSLContext`` on the same
files.  As on Twisted, a frame that has started must finish within
``frame_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, cast

from taskmesh import wire
from taskmesh.client.mapping import BYTES_PER_FRAME, DEFAULT_WINDOW, ITEMS_PER_FRAME, too_large
from taskmesh.client.operations import list_request, purge_request, retry_request
from taskmesh.client.schedules import add_command, name_command
from taskmesh.client.submission import Submission, as_bytes, submission
from taskmesh.client.twisted_client import (
    DEFAULT_CONNECT_TIMEOUT,
    RECONNECT_FIRST_DELAY,
    RECONNECT_MAX_DELAY,
    _is_function,
    _secret_bytes,
    function_payloads,
)
from taskmesh.codec import decode_result, task_failed
from taskmesh.errors import AuthenticationFailed, NotTaskmesh, SchedulerGone, TaskFailed
from taskmesh.functions import as_task
from taskmesh.handlers import DEFAULT_TASK_TYPE
from taskmesh.net.address import DEFAULT_ADDRESS, Addresses, parse_address, parse_plain_endpoint, reach_leader
from taskmesh.net.connection import (
    ClientConnection,
    PeerMisbehaved,
    RecordBatcher,
    cancelled_state,
    outcome_error,
    result_value,
)
from taskmesh.net.frames import FrameTooLarge, foreign_greeting, not_taskmesh_reason
from taskmesh.net.framing import CLOSE_GRACE, DEFAULT_FRAME_TIMEOUT, DEFAULT_MAX_UNSENT
from taskmesh.net.tls import ClientTLS

__all__ = ["AsyncClient", "TaskFuture", "connect"]


class AnswerFuture(asyncio.Future[Any]):
    """An asyncio future the connection core can fire (its ``Answer``): at most once."""

    @property
    def called(self) -> bool:
        return self.done()

    def callback(self, result: Any) -> None:
        if not self.done():
            self.set_result(result)

    def errback(self, fail: Any = None) -> None:
        if not self.done():
            self.set_exception(fail)


class TaskFuture(AnswerFuture):
    """What ``submit`` returns: the task's result later, its id once accepted."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)
        #: The task's id, once the scheduler has accepted it (None before).
        self.task_id: int | None = None
        self._accepted: asyncio.Future[int] | None = None

    def accepted(self, task_id: int) -> None:
        self.task_id = task_id
        if self._accepted is not None and not self._accepted.done():
            self._accepted.set_result(task_id)

    async def id(self) -> int:
        """The task's id, once accepted; raises as the submission does if it never is."""
        if self.task_id is not None:
            return self.task_id
        if self.done():
            self.result()  # its error, if it failed
            raise SchedulerGone("the task was never accepted")
        if self._accepted is None:
            accepted: asyncio.Future[int] = self.get_loop().create_future()
            self._accepted = accepted

            def unaccepted(done: asyncio.Future[Any]) -> None:
                if not accepted.done():
                    error = None if done.cancelled() else done.exception()
                    accepted.set_exception(error or SchedulerGone("the task was never accepted"))

            self.add_done_callback(unaccepted)
        return await self._accepted


class _Protocol(asyncio.Protocol):
    """Drives one ``ClientConnection`` over an asyncio transport (its ``Output``)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        secret: bytes,
        on_no_worker: Callable[[str], None],
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
    ) -> None:
        from taskmesh.net.frames import FrameReader

        self.loop = loop
        self.core = ClientConnection(self, f"{socket.gethostname()}-{os.getpid()}", secret, on_no_worker)
        self.reader = FrameReader(wire.DEFAULT_MAX_FRAME)
        self.batcher = RecordBatcher()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.closed_because: str | None = None
        self.ready: asyncio.Future[wire.Welcome] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._flush_handle: asyncio.Handle | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._last_heard = loop.time()
        #: Why the peer is not a scheduler (its first bytes were text), if it is not.
        self.foreign: str | None = None
        self._heard = False
        #: Seconds a frame that has started may take to arrive whole (None: no bound).
        self.frame_timeout = frame_timeout
        self._frame_deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(transport, asyncio.Transport): uvloop's transports
        # have its methods without deriving from it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.core.peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        self.batcher.frame(self.core.hello_body)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_heard = self.loop.time()
        if self.foreign is None and not self._heard and data:
            self._heard = True
            sample = foreign_greeting(data, self.reader.max_frame)
            if sample is not None:
                # A web server or the like, not a scheduler: say so now, not after a timeout.
                self.foreign = self.closed_because = not_taskmesh_reason(
                    self.core.peer, "taskmesh scheduler", sample
                )
                self.closing = True
                assert self.transport is not None
                self.transport.close()
                return
        frames = self.reader.feed(data)
        for frame in frames:
            try:
                self.core.message_received(wire.decode(frame))
            except wire.ProtocolError as e:
                self.fail(wire.ERROR_MALFORMED, f"malformed frame: {e}")
            except PeerMisbehaved as e:
                self.fail(e.code, str(e))
            if self.closing:
                return
        error = self.reader.error
        if error is not None:
            code = wire.ERROR_FRAME_TOO_LARGE if isinstance(error, FrameTooLarge) else wire.ERROR_BUSY
            self.fail(code, str(error))
            return
        # A frame that has started must finish in time (restarted when a frame
        # completed in this read and another began), as net/framing.py does.
        if self.reader.partial:
            if self.frame_timeout is not None and (self._frame_deadline is None or frames):
                if self._frame_deadline is not None:
                    self._frame_deadline.cancel()
                self._frame_deadline = self.loop.call_later(self.frame_timeout, self._frame_timed_out)
        elif self._frame_deadline is not None:
            self._frame_deadline.cancel()
            self._frame_deadline = None

    def _frame_timed_out(self) -> None:
        self._frame_deadline = None
        self.fail(
            wire.ERROR_TIMEOUT,
            f"a frame took longer than {self.frame_timeout:g} s to arrive "
            f"({self.reader.buffered} bytes of it came)",
        )
        if self.transport is not None:
            self.transport.abort()  # a peer that trickles a frame may not read either

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for handle in (self._flush_handle, self._beat, self._frame_deadline):
            if handle is not None:
                handle.cancel()
        self.reader.close()
        why = self.closed_because or (str(exc) if exc else "the connection was closed")
        if not self.ready.done():
            self.ready.set_exception(
                NotTaskmesh(self.foreign) if self.foreign else self.core.ready_failure(why)
            )
        self.core.connection_lost(why)
        if not self.lost.done():
            self.lost.set_result(None)

    # -- the core's Output -----------------------------------------------------

    def send(self, message: wire.Message) -> None:
        if self.closing:
            return
        self.batcher.send(message)
        self._schedule()

    def queue(self, message_class: type, record: object, size: int) -> None:
        if self.closing:
            return
        self.batcher.queue(message_class, record, size)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        data = self.batcher.data()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > DEFAULT_MAX_UNSENT:
                # The scheduler does not read what we send: drop it rather than hold it all.
                self.closed_because = f"the scheduler did not read: over {DEFAULT_MAX_UNSENT} bytes unsent"
                self.closing = True
                self.transport.abort()

    def fail(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.send(wire.Error(code, reason))
        self.closed_because = reason
        self.close()

    def close(self) -> None:
        if self.closing:
            return
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def welcomed(self, welcome: wire.Welcome) -> None:
        max_frame = min(welcome.max_frame, wire.MAX_FRAME_LIMIT)
        self.reader.max_frame = self.batcher.send_limit = max_frame
        if welcome.heartbeat_ms:
            self._keep_alive(welcome.heartbeat_ms / 1000, welcome.tolerance)
        if not self.ready.done():
            self.ready.set_result(welcome)

    def _keep_alive(self, interval: float, tolerance: int) -> None:
        limit = interval * max(1, tolerance)

        def beat() -> None:
            silent = self.loop.time() - self._last_heard
            if silent > limit:
                self.closed_because = f"the scheduler was silent for {silent:.1f} s"
                self.closing = True
                if self.transport is not None:
                    self.transport.abort()
                return
            self.send(wire.Heartbeat())
            self._beat = self.loop.call_later(interval, beat)

        self._beat = self.loop.call_later(interval, beat)


def _ssl_context(tls: ClientTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _trust_roots_context(trust_roots: str | None) -> ssl.SSLContext:
    """
    A client context trusting what a ``tls:`` endpoint's ``trustRoots`` names
    (as Twisted reads it: every PEM certificate in the folder, or one file),
    or the platform's roots.
    """
    if trust_roots is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(cafile=trust_roots if os.path.isfile(trust_roots) else None)
    if os.path.isdir(trust_roots):
        loaded = 0
        for name in sorted(os.listdir(trust_roots)):
            path = os.path.join(trust_roots, name)
            if not os.path.isfile(path):
                continue
            try:
                context.load_verify_locations(cafile=path)
                loaded += 1
            except ssl.SSLError:
                continue  # not a certificate: Twisted skips it too
        if not loaded:
            raise ValueError(f"trustRoots={trust_roots!r} holds no PEM certificate")
    return context


async def _open(
    address: str,
    timeout: float,
    key: bytes,
    tls: ClientTLS | None,
    on_no_worker: Callable[[str], None],
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
) -> _Protocol:
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop, key, on_no_worker, frame_timeout)
    parsed = parse_address(address)
    async with asyncio.timeout(timeout):
        if parsed is not None:
            host, port = parsed
            context = None if tls is None else _ssl_context(tls)
            await loop.create_connection(
                lambda: protocol, host, port, ssl=context, server_hostname=host if context else None
            )
        else:
            if tls is not None:
                raise ValueError("TLS options go with host:port; an endpoint string says tls: for itself")
            endpoint = parse_plain_endpoint(address)
            async with asyncio.timeout(endpoint.timeout):
                if endpoint.kind == "unix":
                    await loop.create_unix_connection(lambda: protocol, endpoint.path)
                else:
                    context = None
                    if endpoint.kind == "tls":
                        context = _trust_roots_context(endpoint.trust_roots)
                        if endpoint.certificate:
                            context.load_cert_chain(endpoint.certificate, endpoint.private_key)
                    await loop.create_connection(
                        lambda: protocol,
                        endpoint.host,
                        endpoint.port,
                        ssl=context,
                        server_hostname=endpoint.host if context else None,
                    )
        try:
            await asyncio.shield(protocol.ready)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
    return protocol


class AsyncClient:
    """A connection to a scheduler for asyncio code; the same methods as ``taskmesh.Client``."""

    def __init__(
        self,
        protocol: _Protocol,
        wait_timeout: float | None,
        again: Callable[[], Any] | None,
        reconnect_timeout: float | None = None,
    ) -> None:
        self._protocol = protocol
        #: Seconds to keep trying after a drop (None: until ``close``).
        self.reconnect_timeout = reconnect_timeout
        #: Why every call now fails: the reconnection's time was spent.
        self._gone: SchedulerGone | None = None
        self._loop = protocol.loop
        #: The default bound of every wait, in seconds (None: unbounded).
        self.wait_timeout = wait_timeout
        self._again = again
        self._closed = False
        self._connected = asyncio.Event()
        self._connected.set()
        #: Times the connection was made again.
        self.reconnections = 0
        #: Submissions sent again after a reconnection because they had not been accepted.
        self.resubmissions = 0
        if again is not None:
            self._watch(protocol)

    # -- reconnecting ----------------------------------------------------------

    def _watch(self, protocol: _Protocol) -> None:
        protocol.lost.add_done_callback(lambda _: self._lost(protocol))

    def _lost(self, protocol: _Protocol) -> None:
        if self._closed or protocol is not self._protocol:
            return
        self._connected.clear()
        self._reconnecting = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        assert self._again is not None
        delay = RECONNECT_FIRST_DELAY
        bound = self.reconnect_timeout
        deadline = None if bound is None else self._loop.time() + bound
        while not self._closed:
            try:
                protocol = await self._again()
            except AuthenticationFailed:
                self._closed = True
                break
            except (OSError, SchedulerGone, TimeoutError) as e:
                if deadline is not None:
                    left = deadline - self._loop.time()
                    if left <= 0:
                        self._gone = SchedulerGone(
                            f"lost the connection and could not reconnect within {bound:g} seconds "
                            f"(last: {e})"
                        )
                        self._closed = True
                        break
                    delay = min(delay, left)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if self._closed:
                protocol.close()
                break
            self._protocol = protocol
            self.reconnections += 1
            self._watch(protocol)
            break
        self._connected.set()

    async def _current(self) -> _Protocol:
        while self._again is not None and not self._closed and self._protocol.closing:
            if self._connected.is_set():
                # Dropped, but ``_lost`` (a callback of ``lost``) has not run yet: let it,
                # rather than spin on the dead connection without yielding to the loop.
                await asyncio.sleep(0)
            else:
                await self._connected.wait()
        if self._gone is not None:
            raise self._gone
        return self._protocol

    async def _retrying(self, request: Callable[[ClientConnection, AnswerFuture], None]) -> Any:
        """An idempotent request; while reconnecting, made again on the next connection."""
        while True:
            protocol = await self._current()
            answer = AnswerFuture(loop=self._loop)
            request(protocol.core, answer)
            try:
                return await answer
            except SchedulerGone:
                if self._again is None or self._closed:
                    raise

    async def _bounded(self, waiting: Any, wait_timeout: float | None) -> Any:
        seconds = self.wait_timeout if wait_timeout is None else wait_timeout
        if seconds is None:
            return await waiting
        async with asyncio.timeout(seconds):
            return await waiting

    # -- tasks -----------------------------------------------------------------

    def submit(self, task: Any, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """
        Run one task, in the Twisted client's call shape: ``submit(add, 2,
        3)`` (a task function and its arguments; the future has 5) or
        ``submit("text", "sha256", priority=...)`` (a payload and a task
        type; the future has the result's bytes).  Returns at once.
        """
        return self._submit(*submission(task, args, kwargs))

    #: ``start`` is ``submit``: a name that says it does not wait.
    start = submit

    def _submit(
        self, task_type: str, payload: bytes, options: wire.TaskOptions, decode: Any = None
    ) -> TaskFuture:
        handle = TaskFuture(loop=self._loop)
        core = self._protocol.core
        if self._again is None:
            core.submit(handle, task_type, payload, options, decode, handle.accepted)
        else:
            self._submit_on(self._protocol, handle, (task_type, payload, options, decode))
        seconds = self.wait_timeout
        if seconds is not None:
            timer = self._loop.call_later(
                seconds, handle.errback, TimeoutError(f"no result within {seconds:g} s")
            )
            handle.add_done_callback(lambda _: timer.cancel())
        return handle

    def _submit_on(self, protocol: _Protocol, handle: TaskFuture, request: Submission) -> None:
        """Submit on this connection; if it drops first, ``_settle`` takes over."""
        if handle.done():  # its caller gave up (a timeout) while we reconnected
            return
        task_type, payload, options, decode = request
        inner = AnswerFuture(loop=self._loop)
        protocol.core.submit(inner, task_type, payload, options, decode, handle.accepted)
        inner.add_done_callback(lambda done: self._settle(done, handle, request))

    def _settle(self, done: asyncio.Future[Any], handle: TaskFuture, request: Submission) -> None:
        """
        A submission's answer.  If the connection dropped first: accepted,
        its result is fetched by id on the next connection; never accepted,
        it is submitted again there (a ``key`` keeps it from running twice;
        without one it runs at least once), as the Twisted client does.
        """
        if handle.done():
            return
        error = done.exception()
        if error is None:
            handle.callback(done.result())
            return
        task_id = handle.task_id
        if not isinstance(error, SchedulerGone) or self._closed:
            handle.errback(error)
            return
        decode = request[3]
        if task_id is None:
            self.resubmissions += 1

            async def resubmit() -> None:
                try:
                    protocol = await self._current()
                except Exception as e:
                    handle.errback(e)
                    return
                if self._closed:
                    handle.errback(SchedulerGone("the client was closed"))
                    return
                self._submit_on(protocol, handle, request)

            self._loop.create_task(resubmit())
            return

        async def reattach() -> None:
            try:
                status, value = await self._retrying(lambda core, answer: core.query(answer, task_id, True))
                if status != wire.STATUS_OK:
                    raise outcome_error(task_id, status, value)
                handle.callback(value if decode is None else decode(value))
            except Exception as e:
                handle.errback(e)

        self._loop.create_task(reattach())

    async def enqueue(self, task: Any, /, *args: Any, **kwargs: Any) -> int:
        """Queue one task without waiting for it; returns its id once the scheduler made it durable."""
        task_type, payload, options, _ = submission(task, args, kwargs, enqueue=True)
        return await self._enqueue(task_type, payload, options)

    async def _enqueue(self, task_type: str, payload: bytes, options: wire.TaskOptions) -> int:
        if self._again is None:
            answer = AnswerFuture(loop=self._loop)
            self._protocol.core.submit(answer, task_type, payload, options)
            return int(await self._bounded(answer, None))
        # Not accepted before the connection dropped: sent again on the next one.
        return int(
            await self._bounded(
                self._retrying(lambda core, answer: core.submit(answer, task_type, payload, options)), None
            )
        )

    async def result(
        self, task_id: int, wait: bool = True, *, json: bool = False, wait_timeout: float | None = None
    ) -> Any:
        """A task's result by id (bytes, or with ``json`` decoded); TaskPending without ``wait``."""
        status, value = await self._bounded(
            self._retrying(lambda core, answer: core.query(answer, task_id, wait)), wait_timeout
        )
        return result_value(task_id, status, value, json)

    async def cancel(self, task_id: int, *, wait_timeout: float | None = None) -> str:
        """Cancel a task; returns its state afterwards ('cancelled', 'succeeded' or 'failed')."""
        status, value = await self._bounded(
            self._retrying(lambda core, answer: core.cancel(answer, task_id)), wait_timeout
        )
        return cancelled_state(task_id, status, value)

    async def add_schedule(self, name: str, task: Any, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Create or replace a periodic schedule: see ``taskmesh.Client.add_schedule``."""
        found: dict[str, Any] = await self._schedule(add_command(name, task, args, dict(kwargs)))
        return found

    async def schedules(self, *, wait_timeout: float | None = None) -> list[dict[str, Any]]:
        """Every schedule (next_due, last_due, last_task, ...)."""
        found: list[dict[str, Any]] = await self._schedule(name_command(wire.SCHEDULE_LIST, ""), wait_timeout)
        return found

    async def remove_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return await self._schedule(name_command(wire.SCHEDULE_REMOVE, name), wait_timeout)

    async def pause_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return await self._schedule(name_command(wire.SCHEDULE_PAUSE, name), wait_timeout)

    async def resume_schedule(self, name: str, *, wait_timeout: float | None = None) -> Any:
        return await self._schedule(name_command(wire.SCHEDULE_RESUME, name), wait_timeout)

    async def _schedule(self, command: wire.ScheduleCommand, wait_timeout: float | None = None) -> Any:
        return await self._bounded(
            self._retrying(lambda core, answer: core.schedule(answer, command)), wait_timeout
        )

    async def status(self, *, wait_timeout: float | None = None) -> dict[str, Any]:
        """The scheduler's workers and task counts, as a dict."""
        report: dict[str, Any] = await self._bounded(
            self._retrying(lambda core, answer: core.status(answer)), wait_timeout
        )
        return report

    async def tasks(
        self,
        state: str | None = None,
        task_type: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        *,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """A page of the task list, newest first (see the Twisted client's ``tasks``)."""
        return await self._operate(list_request(state, task_type, limit, before_id), wait_timeout)

    async def retry(
        self,
        *task_ids: int,
        failed: bool = False,
        task_type: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run failed or cancelled tasks again under their ids (see the Twisted client's ``retry``)."""
        return await self._operate(retry_request(task_ids, failed, task_type), wait_timeout)

    async def purge(self, task_type: str, *, wait_timeout: float | None = None) -> dict[str, Any]:
        """Cancel every queued task of this type: ``{"purged": count}``."""
        return await self._operate(purge_request(task_type), wait_timeout)

    async def _operate(self, request: Any, wait_timeout: float | None) -> dict[str, Any]:
        found: dict[str, Any] = await self._bounded(
            self._retrying(lambda core, answer: core.operate(answer, request)), wait_timeout
        )
        return found

    async def map(
        self,
        task: Any,
        /,
        *args: Any,
        priority: int | None = None,
        chunk_size: int = 0,
        window: int = DEFAULT_WINDOW,
        wait_timeout: float | None = None,
    ) -> list[Any]:
        """
        Run every item as a task, results in input order: ``map(add, [(1,
        2), (3, 4)])`` is ``[3, 7]``; ``map(lines, "sha256")`` gives bytes.
        A failed item is a TaskFailed in its place.  At most ``window`` items
        are in flight.  (A dropped connection ends the map with SchedulerGone.)
        """
        if _is_function(task):
            function = as_task(task)
            (items,) = args
            payloads: list[bytes] = [
                p for p in function_payloads(function, items, refuse=False) if isinstance(p, bytes)
            ]
            task_type, decode, default_priority = function.name, True, function.priority
        else:
            items, *rest = (task, *args)
            task_type = wire.check_task_type(rest[0] if rest else DEFAULT_TASK_TYPE)
            payloads = [as_bytes(item) for item in items]
            decode, default_priority = False, 0
        return list(
            await self._bounded(
                self._map(
                    task_type,
                    payloads,
                    decode,
                    default_priority if priority is None else priority,
                    chunk_size,
                    window,
                ),
                wait_timeout,
            )
        )

    async def _map(
        self,
        task_type: str,
        payloads: list[bytes],
        decode: bool,
        priority: int,
        chunk_size: int,
        window: int,
    ) -> Iterable[Any]:
        if window < 1:
            raise ValueError("window must be at least 1")
        protocol = self._protocol
        core = protocol.core
        results: list[Any] = [None] * len(payloads)
        answered = 0
        in_flight = 0
        wake = asyncio.Event()

        def on_results(records: list[tuple[int, int, bytes]]) -> None:
            nonlocal answered, in_flight
            for index, status, value in records:
                results[index] = _map_value(status, value, decode)
            answered += len(records)
            in_flight -= len(records)
            wake.set()

        lost = protocol.lost
        lost.add_done_callback(lambda _: wake.set())
        opened = AnswerFuture(loop=self._loop)
        core.open_job(opened, task_type, on_results, priority, chunk_size, len(payloads))
        job_id, _ = await opened
        welcome = core.welcome
        frame_bytes = BYTES_PER_FRAME if welcome is None else min(BYTES_PER_FRAME, welcome.max_frame // 2)
        max_payload = None if welcome is None else welcome.max_payload
        sent = 0
        index = 0
        try:
            while index < len(payloads) or answered < len(payloads):
                while index < len(payloads) and in_flight < window:
                    batch: list[bytes] = []
                    first = index
                    size = 0
                    while index < len(payloads) and in_flight + len(batch) < window:
                        payload = payloads[index]
                        if max_payload is not None and len(payload) > max_payload:
                            if batch:
                                break
                            results[index] = TaskFailed(too_large(len(payload), max_payload))
                            answered += 1
                            index += 1
                            first = index
                            continue
                        if batch and (len(batch) >= ITEMS_PER_FRAME or size + len(payload) + 4 > frame_bytes):
                            break
                        batch.append(payload)
                        size += len(payload) + 4
                        index += 1
                    if batch:
                        core.send_items(job_id, first, batch)
                        sent += len(batch)
                        in_flight += len(batch)
                if index >= len(payloads) and sent >= 0:
                    core.end_job(job_id, sent)
                    sent = -1  # ended
                if answered >= len(payloads):
                    break
                wake.clear()
                await wake.wait()
                if lost.done() and answered < len(payloads):
                    raise SchedulerGone("connection to the scheduler lost during the map")
        finally:
            core.forget_job(job_id)
        return results

    async def close(self) -> None:
        """Send what is queued and disconnect; what is still pending fails with SchedulerGone."""
        self._closed = True
        self._connected.set()
        protocol = self._protocol
        protocol.close()
        try:
            # A scheduler that does not take our last bytes is not waited for forever.
            await asyncio.wait_for(asyncio.shield(protocol.lost), CLOSE_GRACE)
        except TimeoutError:
            if protocol.transport is not None:
                protocol.transport.abort()
            await protocol.lost

    @property
    def max_payload(self) -> int:
        welcome = self._protocol.core.welcome
        return welcome.max_payload if welcome else 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _map_value(status: int, value: bytes, decode: bool) -> Any:
    if status != wire.STATUS_OK:
        return task_failed(value)
    if not decode:
        return value
    try:
        return decode_result(value)
    except ValueError as e:
        return TaskFailed(str(e))


async def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    wait_timeout: float | None = None,
    secret: str | bytes | None = None,
    secret_file: str | None = None,
    tls: ClientTLS | None = None,
    reconnect: bool = False,
    on_no_worker: Callable[[str], None] = lambda task_type: None,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
    reconnect_timeout: float | None = None,
) -> AsyncClient:
    """
    Connect to the scheduler at ``address`` and shake hands within
    ``timeout`` seconds each; the secret as ``taskmesh.Client.connect``
    finds it.  ``address`` is ``host:port``, several separated by commas
    (each tried in turn, a hot standby's pointer to the leader followed), or
    an endpoint string: ``tcp:host=H:port=P``, ``unix:path=P``, or
    ``tls:host=H:port=P`` with ``trustRoots``, ``certificate`` and
    ``privateKey`` as Twisted's ``tls:`` endpoint takes them.
    ``wait_timeout`` bounds every later wait; ``reconnect`` makes a dropped
    connection again, re-attaches accepted tasks by id and sends again those
    not yet accepted, for at most ``reconnect_timeout`` seconds after each
    drop (then every call fails with SchedulerGone).  A frame the scheduler has started must arrive whole
    within ``frame_timeout`` seconds, or the connection is dropped saying so.
    """
    key = _secret_bytes(secret, secret_file)
    if frame_timeout is not None and frame_timeout <= 0:
        raise ValueError("frame_timeout must be positive (or None: no bound)")
    addresses = Addresses(address)

    async def attempt(one: str) -> _Protocol:
        return await _open(one, timeout, key, tls, on_no_worker, frame_timeout)

    async def again() -> _Protocol:
        return await reach_leader(addresses, attempt)

    protocol = await again()
    return AsyncClient(protocol, wait_timeout, again if reconnect else None, reconnect_timeout)
