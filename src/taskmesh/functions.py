"""
Tasks as Python functions: ``@taskmesh.task``.

    @taskmesh.task
    def add(x: int, y: int) -> int:
        return x + y

A ``TaskFunction`` is both sides of a task type.  On a worker it is an
``ITaskHandler`` (``run`` takes the arguments as JSON and returns the result
as JSON, see ``taskmesh.codec``); in a client it is what ``submit``,
``enqueue`` and ``map`` take, with the function's own arguments after it
(``client.submit(add, 2, 3)``), checked against its signature before
anything is sent.  Called directly (``add(2, 3)``) it is the plain function.

Where it runs on the worker:

- an ``async def`` function runs in the reactor, as a coroutine;
- a plain function runs in the worker's thread pool by default
  (``blocking=True``): most Python functions block somewhere (a file, a
  socket, a long loop) and one that blocked the reactor would stop the
  worker's heartbeats; a quick, pure one may say ``blocking=False`` to run
  inline, without the thread hop;
- ``cpu_bound=True`` runs it in a pool of processes when the worker is
  started with ``--pool process`` (in the thread pool otherwise).

Options (priority, timeout, attempts, key, retries on error) never mix with
the function's own keyword arguments: every argument after the function
goes to the function.  Defaults go in the decorator (``@task(timeout=30)``),
and ``add.options(priority=5)`` returns a copy with other ones, to pass in
the function's place: ``client.submit(add.options(priority=5), 2, 3)``.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import math
import types
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from twisted.internet.defer import Deferred
from zope.interface import implementer

from taskmesh import wire
from taskmesh.codec import (
    decode_arguments,
    describe_error,
    encode_arguments,
    encode_result,
    format_traceback,
)
from taskmesh.handlers import HandlerError, ITaskHandler

P = ParamSpec("P")
R = TypeVar("R")

#: The options a task may carry, as ``submit`` and ``task_options`` name them.
OPTION_NAMES = frozenset({"priority", "timeout", "max_attempts", "key", "retry_on_error", "delay", "at"})


def due_seconds(at: object) -> float:
    """
    ``at=`` as seconds since the epoch: a timezone-aware ``datetime``, or a
    number of seconds.  A naive datetime is refused: its zone is a guess.
    """
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at= needs a timezone-aware datetime (e.g. datetime(..., tzinfo=timezone.utc))")
        return at.timestamp()
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError(f"at= is a datetime or seconds since the epoch, not {at!r}")
    return float(at)


def delay_seconds(delay: object) -> float:
    """``delay=`` as seconds: a number or a ``timedelta``."""
    if isinstance(delay, datetime.timedelta):
        return delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise ValueError(f"delay= is seconds or a timedelta, not {delay!r}")
    return float(delay)


def task_options(
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 0,
    key: str | None = None,
    retry_on_error: bool = False,
    no_result: bool = False,
    delay: float | datetime.timedelta | None = None,
    at: float | datetime.datetime | None = None,
) -> wire.TaskOptions:
    """
    Options for a submission, checked; the defaults share one object and cost
    one byte.  ``delay`` (seconds, or a timedelta, from when the scheduler
    accepts it) or ``at`` (an aware datetime, or seconds since the epoch)
    makes it a delayed task: stored at once, run once due.
    """
    if (priority, timeout, max_attempts, key, retry_on_error, no_result, delay, at) == (
        0,
        None,
        0,
        None,
        False,
        False,
        None,
        None,
    ):
        return wire.DEFAULT_OPTIONS
    delay_s = at_s = None
    if delay is not None and at is not None:
        raise ValueError("a task takes delay= or at=, not both")
    if delay is not None:
        delay_s = delay_seconds(delay)
        wire.delay_milliseconds(delay_s)
    if at is not None:
        at_s = due_seconds(at)
        wire.at_milliseconds(at_s)
    if timeout is not None:
        if not isinstance(timeout, int | float) or math.isnan(timeout):
            raise ValueError(f"a task timeout must be a number of seconds, not {timeout!r}")
        wire.timeout_milliseconds(timeout)
    if key is not None:
        if not isinstance(key, str):
            raise ValueError(f"a key must be text, not {type(key).__name__}")
        wire.check_key(key)
    if not isinstance(max_attempts, int) or not 0 <= max_attempts <= 0xFFFF:
        raise ValueError("max_attempts must be 1 to 65535 (0: the scheduler's default)")
    if not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        raise ValueError("priority must be a whole number that fits in 32 bits")
    return wire.TaskOptions(
        priority, timeout, max_attempts, key, bool(retry_on_error), no_result, delay_s, at_s
    )


@implementer(ITaskHandler)
class TaskFunction(Generic[P, R]):
    """A Python function as a task type: made by ``@taskmesh.task`` (or ``taskmesh.remote``)."""

    #: Failures of a task function are structured (type, message, traceback).
    structured_failures = True

    def __init__(
        self,
        function: Callable[..., Any] | None,
        name: str,
        blocking: bool,
        cpu_bound: bool,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.function = function
        self.name = wire.check_task_type(name)
        self.blocking = blocking
        self.cpu_bound = cpu_bound
        self.is_async = function is not None and inspect.iscoroutinefunction(function)
        self._options = dict(options or {})
        unknown = self._options.keys() - OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown task options: {', '.join(sorted(unknown))}")
        # Checked now, so a wrong option fails where it is written; and built
        # once, so submitting costs no option building.
        self.submit_options = task_options(**self._options)
        self.enqueue_options = task_options(**self._options, no_result=True)
        self._signature = _signature_of(function)
        self._fast = _fast_arity(self._signature)

    # -- the worker's side: ITaskHandler -----------------------------------------

    def run(self, payload: bytes) -> bytes | Deferred[bytes]:
        """Decode the arguments, call the function, encode its result (JSON in, JSON out)."""
        function = self.function
        if function is None:
            raise TypeError(f"task {self.name!r} is a reference made by taskmesh.remote(): it runs nowhere")
        args, kwargs = decode_arguments(payload)
        if self.is_async:
            return Deferred.fromCoroutine(self._run_async(function, args, kwargs))
        return encode_result(function(*args, **kwargs))

    @staticmethod
    async def _run_async(function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> bytes:
        return encode_result(await function(*args, **kwargs))

    # -- the client's side ------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """The plain function (a coroutine for an ``async def`` one): for tests and local calls."""
        if self.function is None:
            raise TypeError(f"task {self.name!r} is a reference made by taskmesh.remote(): submit it instead")
        return self.function(*args, **kwargs)

    def options(
        self,
        *,
        priority: int | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        key: str | None = None,
        retry_on_error: bool | None = None,
        delay: float | datetime.timedelta | None = None,
        at: float | datetime.datetime | None = None,
    ) -> TaskFunction[P, R]:
        """
        This task with other submission options, to pass in its place:
        ``client.submit(add.options(priority=5, timeout=10), 2, 3)``.  Options
        left out keep the decorator's; ``delay=`` or ``at=`` replaces the other.
        """
        given: dict[str, Any] = dict(
            priority=priority,
            timeout=timeout,
            max_attempts=max_attempts,
            key=key,
            retry_on_error=retry_on_error,
            delay=delay,
            at=at,
        )
        if delay is not None or at is not None:
            given.setdefault("delay", None)
            base = {name: value for name, value in self._options.items() if name not in ("delay", "at")}
            merged = {**base, **{name: value for name, value in given.items() if value is not None}}
            return TaskFunction(self.function, self.name, self.blocking, self.cpu_bound, merged)
        merged = {**self._options, **{name: value for name, value in given.items() if value is not None}}
        return TaskFunction(self.function, self.name, self.blocking, self.cpu_bound, merged)

    @property
    def priority(self) -> int:
        return self.submit_options.priority

    def check_call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """TypeError now, in the caller, for arguments the function would refuse on the worker."""
        fast = self._fast
        if fast is not None and not kwargs and fast[0] <= len(args) <= fast[1]:
            return
        signature = self._signature
        if signature is None:
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            hint = ""
            if kwargs.keys() & OPTION_NAMES:
                hint = f" (options go in {self.name}.options(...): every argument here is the function's)"
            raise TypeError(f"{self.name}(): {e}{hint}") from None

    def call_payload(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
        """The payload of a call with these arguments, checked first."""
        self.check_call(args, kwargs)
        return encode_arguments(args, kwargs)

    # -- pickling (for the process pool) ------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        function = self.function
        if function is None or "<" in function.__qualname__:
            raise TypeError(
                f"task {self.name!r} cannot be sent to a process pool: it must be a module-level function"
            )
        return (
            _load_task,
            (function.__module__, function.__qualname__, self.name, self.blocking, self.cpu_bound),
        )

    def __repr__(self) -> str:
        where = (
            "remote" if self.function is None else f"{self.function.__module__}.{self.function.__qualname__}"
        )
        return f"<taskmesh task {self.name!r} ({where})>"


def _signature_of(function: Callable[..., Any] | None) -> inspect.Signature | None:
    if function is None:
        return None
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none
        return None


def _fast_arity(signature: inspect.Signature | None) -> tuple[int, float] | None:
    """
    (least, most) positional arguments a call without keywords may pass,
    when counting them is enough to know the call binds (no keyword-only
    parameter without a default): checking then costs a comparison, not a
    ``Signature.bind``.
    """
    if signature is None:
        return None
    least = 0
    most: float = 0
    for parameter in signature.parameters.values():
        kind = parameter.kind
        if kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            most += 1
            if parameter.default is parameter.empty:
                least += 1
        elif kind is parameter.VAR_POSITIONAL:
            most = math.inf
        elif kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return None
    return least, most


def _load_task(
    module: str, qualname: str, name: str, blocking: bool, cpu_bound: bool
) -> TaskFunction[Any, Any]:
    """A task function again, in a pool process: by its import path, not by pickled code."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if isinstance(found, TaskFunction):
        return found
    return TaskFunction(found, name, blocking, cpu_bound)


@overload
def task(function: Callable[P, Coroutine[Any, Any, R]], /) -> TaskFunction[P, R]: ...


@overload
def task(function: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    blocking: bool | None = None,
    cpu_bound: bool = False,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 0,
    retry_on_error: bool = False,
) -> Callable[[Callable[P, Any]], TaskFunction[P, Any]]: ...


def task(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    blocking: bool | None = None,
    cpu_bound: bool = False,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 0,
    retry_on_error: bool = False,
) -> Any:
    """
    Make a function a task type, named after it (or ``name``).  Arguments
    and result travel as JSON.  ``blocking`` (default: True for a plain
    function, False for ``async def``) runs it in the worker's thread pool;
    ``cpu_bound`` in its process pool with ``--pool process``.  ``priority``,
    ``timeout``, ``max_attempts`` and ``retry_on_error`` are the defaults of
    every submission (``.options(...)`` overrides them).
    """
    given = dict(priority=priority, timeout=timeout, max_attempts=max_attempts, retry_on_error=retry_on_error)
    options = {option: value for option, value in given.items() if value not in (0, None, False)}

    def decorate(function: Callable[..., Any]) -> TaskFunction[Any, Any]:
        return make_task(function, name, blocking, cpu_bound, options)

    if function is not None:
        return decorate(function)
    return decorate


def make_task(
    function: Callable[..., Any],
    name: str | None = None,
    blocking: bool | None = None,
    cpu_bound: bool = False,
    options: Mapping[str, Any] | None = None,
) -> TaskFunction[Any, Any]:
    """A TaskFunction for ``function``, its settings checked (the decorator's body)."""
    if isinstance(function, TaskFunction):
        raise TypeError(f"{function!r} is already a task")
    if not callable(function) or isinstance(function, type):
        raise TypeError(f"@taskmesh.task takes a function, not {function!r}")
    is_async = inspect.iscoroutinefunction(function)
    if is_async and (blocking or cpu_bound):
        raise ValueError(
            f"{function.__qualname__} is async: it runs in the reactor, "
            "so blocking and cpu_bound do not apply"
        )
    if blocking is None:
        blocking = not is_async
    if cpu_bound and not blocking:
        raise ValueError(f"{function.__qualname__}: a cpu_bound task must be blocking")
    task_name = name if name is not None else getattr(function, "__name__", None)
    if not isinstance(task_name, str) or task_name.startswith("<"):
        raise ValueError(f"{function!r} needs a name: @taskmesh.task(name=...)")
    return TaskFunction(function, task_name, blocking, cpu_bound, options)


def remote(name: str, **options: Any) -> TaskFunction[..., Any]:
    """
    A task known only by its name, for a client that cannot import the
    function: ``client.submit(taskmesh.remote("add"), 2, 3)``.  Its arguments
    are not checked before they are sent (there is no signature to check
    them against).
    """
    return TaskFunction(None, name, blocking=False, cpu_bound=False, options=options)


#: Plain functions passed to a client, made tasks once each.
_wrapped: weakref.WeakKeyDictionary[Callable[..., Any], TaskFunction[Any, Any]] = weakref.WeakKeyDictionary()


def as_task(target: object) -> TaskFunction[Any, Any]:
    """
    What a client was given in a task's place, as a TaskFunction: itself, or
    a plain function (which a worker runs with ``--handler module:function``
    under its own name).  TypeError for anything else.
    """
    if isinstance(target, TaskFunction):
        return target
    if isinstance(target, types.FunctionType | types.BuiltinFunctionType):
        found = _wrapped.get(target)
        if found is None:
            found = _wrapped[target] = make_task(target)
        return found
    raise TypeError(
        "expected a task function (@taskmesh.task), or a payload and a task type, "
        f"not {type(target).__name__}"
    )


def tasks_in(module: types.ModuleType) -> list[TaskFunction[Any, Any]]:
    """Every task function a module holds, by name; HandlerError if two share a name."""
    found: dict[str, TaskFunction[Any, Any]] = {}
    for value in vars(module).values():
        if isinstance(value, TaskFunction) and value.function is not None:
            other = found.get(value.name)
            if other is not None and other.function is not value.function:
                raise HandlerError(f"module {module.__name__!r} has two tasks named {value.name!r}")
            found[value.name] = value
    return list(found.values())


def load_tasks(module_name: str) -> list[TaskFunction[Any, Any]]:
    """Import a module and return its task functions (for ``--tasks``); HandlerError if it has none."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise HandlerError(f"cannot import task module {module_name!r}: {e}") from None
    except Exception as e:
        raise HandlerError(
            f"importing task module {module_name!r} failed: {describe_error(e)}\n{format_traceback(e)}"
        ) from None
    found = tasks_in(module)
    if not found:
        raise HandlerError(f"module {module_name!r} has no @taskmesh.task functions")
    return found


def names(functions: Iterable[TaskFunction[Any, Any]]) -> str:
    return ", ".join(sorted(function.name for function in functions))
