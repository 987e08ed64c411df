"""
Task types: what a worker does with a payload.

A task type is an object providing ``ITaskHandler``.  Workers announce the
names of the handlers they hold, and the scheduler only sends a task to a
worker that announced its type.  ``sha256`` and ``sleep`` are built in;
others come from Twisted's plugin system (a module-level object providing
``IPlugin`` and ``ITaskHandler`` in any ``twisted/plugins/*.py`` on the path), from an
import path given to the worker with ``--handler package.module:name``, or
from the ``@taskmesh.task`` functions of a module given with ``--tasks``
(``taskmesh.functions``).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Iterable
from typing import Union, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface, implementer
from zope.interface.verify import verifyObject

from taskmesh.wire import check_task_type

log = Logger()

HandlerResult = Union[bytes, str, "Deferred[bytes]", "Deferred[str]"]

#: The task type used when a submission names none.
DEFAULT_TASK_TYPE = "sha256"


class ITaskHandler(Interface):
    """Runs one type of task."""

    name = Attribute("The task type's name: at most 255 bytes of UTF-8.")
    blocking = Attribute(
        "False when run() returns at once (or returns a Deferred without "
        "blocking): it then runs inline in the reactor.  True when run() may "
        "block: it then runs in the worker's thread pool, so the reactor keeps "
        "serving heartbeats and other tasks.  A blocking handler may also set "
        "``cpu_bound = True``: a worker started with ``--pool process`` then "
        "runs it in a pool of processes, one per slot (the handler must be "
        "picklable, e.g. an instance of a module-level class)."
    )

    def run(payload: bytes) -> HandlerResult:
        """
        Do the task.  Return its result (bytes, or str sent as UTF-8) or a
        Deferred of one; raise (or fail the Deferred) to fail the task, with
        the exception's text as the reason the submitter sees.
        """


@implementer(ITaskHandler)
class Sha256Handler:
    """The default task type: UTF-8 text (any bytes, really) in, hex digest out."""

    name = "sha256"
    blocking = False

    def run(self, payload: bytes) -> bytes:
        return hashlib.sha256(payload).hexdigest().encode("ascii")


#: PBKDF2 rounds when the payload names none, and the most it may name.
DEFAULT_PBKDF2_ROUNDS = 100_000
MAX_PBKDF2_ROUNDS = 10_000_000
PBKDF2_SALT = b"taskmesh"


@implementer(ITaskHandler)
class Pbkdf2Handler:
    """
    CPU-bound work with a real payload shape: ``ROUNDS:TEXT`` (or just
    ``TEXT``, for 100,000 rounds) in, the hex PBKDF2-HMAC-SHA256 of TEXT out,
    with the fixed salt ``taskmesh``.  A demonstration of work that needs
    every core (``--pool process``), not a password store: real password
    hashing wants a random salt per password.
    """

    name = "pbkdf2"
    blocking = True
    cpu_bound = True

    def run(self, payload: bytes) -> bytes:
        rounds = DEFAULT_PBKDF2_ROUNDS
        head, colon, rest = payload.partition(b":")
        if colon and head.isdigit():
            rounds = int(head)
            payload = rest
            if not 1 <= rounds <= MAX_PBKDF2_ROUNDS:
                raise ValueError(f"pbkdf2 wants 1 to {MAX_PBKDF2_ROUNDS} rounds, not {rounds}")
        return hashlib.pbkdf2_hmac("sha256", payload, PBKDF2_SALT, rounds).hex().encode("ascii")


#: A sleep longer than this is refused: it would only hold a slot hostage.
MAX_SLEEP_SECONDS = 24 * 60 * 60.0


@implementer(ITaskHandler)
class SleepHandler:
    """
    Waits for the number of seconds in the payload without blocking the
    reactor, then answers ``slept <seconds>``: a stand-in for slow I/O-bound
    work in demos and tests.
    """

    name = "sleep"
    blocking = False

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def run(self, payload: bytes) -> Deferred[bytes]:
        text = payload.decode("utf-8", "replace").strip()
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"sleep wants a number of seconds, not {text!r}") from None
        if not (0 <= seconds <= MAX_SLEEP_SECONDS) or math.isnan(seconds):
            raise ValueError(f"sleep wants 0 to {MAX_SLEEP_SECONDS:g} seconds, not {text}")
        return deferLater(self._clock, seconds, lambda: f"slept {text}".encode())


class HandlerError(Exception):
    """A handler could not be loaded: the worker refuses to start."""


def load_import_path(path: str) -> object:
    """
    Resolve ``package.module:name`` to an ITaskHandler provider.  ``name`` may
    be the provider itself (a ``@taskmesh.task`` function is one), a class
    (instantiated without arguments), or a plain function, which becomes a
    task function named after it (as ``@taskmesh.task`` would make it).
    """
    from taskmesh.functions import make_task

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HandlerError(f"handler {path!r} is not of the form package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise HandlerError(f"cannot import handler module {module_name!r}: {e}") from None
    except Exception as e:
        raise HandlerError(
            f"importing handler module {module_name!r} failed: {type(e).__name__}: {e}"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise HandlerError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if ITaskHandler.providedBy(found):
        return found
    if isinstance(found, type):
        try:
            found = found()
        except Exception as e:
            raise HandlerError(f"{path}: {found.__name__}() failed: {type(e).__name__}: {e}") from None
    elif callable(found):
        try:
            return make_task(found)
        except (TypeError, ValueError) as e:
            raise HandlerError(f"{path}: {e}") from None
    if not ITaskHandler.providedBy(found):
        raise HandlerError(f"{path} does not provide ITaskHandler (nor is it a class or a function)")
    return found


class HandlerRegistry:
    """The task types one worker runs, by name."""

    def __init__(self, handlers: Iterable[object]) -> None:
        self._handlers: dict[str, ITaskHandler] = {}
        for handler in handlers:
            self.add(handler)

    def add(self, handler: object) -> None:
        try:
            verifyObject(ITaskHandler, handler)
        except Exception as e:
            raise HandlerError(f"{handler!r} does not provide ITaskHandler: {e}") from None
        # verifyObject has checked it: from here on it is an ITaskHandler.
        checked = cast(ITaskHandler, handler)
        try:
            name = check_task_type(checked.name)
        except ValueError as e:
            raise HandlerError(f"{handler!r}: {e}") from None
        self._handlers[name] = checked

    def get(self, name: str) -> ITaskHandler | None:
        return self._handlers.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))


def default_registry(
    clock: IReactorTime, extra: Iterable[object] = (), use_plugins: bool = True
) -> HandlerRegistry:
    """
    The built-in handlers, then every ITaskHandler plugin, then ``extra``
    (handlers loaded from import paths): a later one replaces an earlier one
    of the same name, so a user can override a built-in deliberately.
    """
    registry = HandlerRegistry([Sha256Handler(), SleepHandler(clock), Pbkdf2Handler()])
    if use_plugins:
        for plugin in getPlugins(ITaskHandler):
            registry.add(plugin)
            log.info("loaded task type {name} from a plugin", name=plugin.name)
    for handler in extra:
        registry.add(handler)
    return registry
