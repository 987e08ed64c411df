"""
Addresses as users type them, turned into Twisted client endpoints; lists
of them, and how a peer finds the leader among hot standbys.

Users write ``host:port`` (``localhost:9001``, ``[::1]:9001``) or just a
host; those become a ``HostnameEndpoint``, which resolves both IPv4 and IPv6
and tries them in parallel.  Anything that already is an endpoint string (it
names a known endpoint type: ``tcp:host=h:port=p``, ``tls:...``,
``unix:...``) goes to ``clientFromString`` unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from taskmesh.errors import AuthenticationFailed, NotLeader, SchedulerGone
from taskmesh.net.tls import ClientTLS

T = TypeVar("T")

DEFAULT_PORT = 9001
DEFAULT_ADDRESS = f"localhost:{DEFAULT_PORT}"

_ENDPOINT_TYPES = ("tcp:", "tls:", "ssl:", "unix:")


def parse_address(address: str) -> tuple[str, int] | None:
    """
    ``(host, port)`` for ``host:port``, ``[v6]:port`` or ``host``; None for an
    endpoint string.  Raises ValueError with a readable reason.
    """
    text = address.strip()
    if not text:
        raise ValueError("the address is empty")
    if text.startswith(_ENDPOINT_TYPES):
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"cannot read {address!r}: expected [IPv6]:port")
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"cannot read {address!r}: write an IPv6 address as [address]:port")
    else:
        host, port_text = text, str(DEFAULT_PORT)
    if not host:
        raise ValueError(f"cannot read {address!r}: the host is missing")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cannot read {address!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def client_endpoint(reactor: Any, address: str, tls: ClientTLS | None = None) -> IStreamClientEndpoint:
    """
    The endpoint to reach ``address`` (see ``parse_address``); with ``tls``, a
    ``host:port`` is reached over TLS (an endpoint string says for itself).
    """
    parsed = parse_address(address)
    if parsed is None:
        if tls is not None:
            raise ValueError("TLS options go with host:port; an endpoint string says tls: for itself")
        return clientFromString(reactor, address.strip())
    host, port = parsed
    endpoint = HostnameEndpoint(reactor, host, port)
    if tls is None:
        return endpoint
    return wrapClientTLS(tls.creator(host), endpoint)


def parse_addresses(text: str) -> list[str]:
    """
    A comma-separated list of schedulers (``a:9001,b:9001``): each one
    ``host:port``, ``[v6]:port``, ``host`` or an endpoint string (which then
    may not contain a comma).  Raises ValueError naming the bad entry.
    """
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise ValueError("the address is empty")
    for entry in entries:
        if not entry:
            raise ValueError(f"cannot read {text!r}: an empty entry in the list")
        parse_address(entry)
    if len(entries) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} schedulers in one list, not {len(entries)}")
    return entries


#: Schedulers one --connect list may name.
MAX_ADDRESSES = 64
#: Standby pointers followed in one attempt to reach the leader, beyond the list itself.
MAX_REDIRECTS = 4


class Addresses:
    """
    Which scheduler to try next: the list in turn, starting from the one
    that answered last, but first wherever a standby said the leader is.
    Sans-I/O; the Twisted and asyncio clients and the worker share it.
    """

    def __init__(self, addresses: str | list[str]) -> None:
        self.addresses = parse_addresses(addresses) if isinstance(addresses, str) else list(addresses)
        if not self.addresses:
            raise ValueError("no scheduler address")
        self._next = 0
        self._pointer: str | None = None

    def __len__(self) -> int:
        return len(self.addresses)

    def __str__(self) -> str:
        return ",".join(self.addresses)

    @property
    def pointer(self) -> str | None:
        """Where a standby said the leader is, until it is tried."""
        return self._pointer

    def next(self) -> str:
        """The address to try now."""
        if self._pointer is not None:
            pointer, self._pointer = self._pointer, None
            return pointer
        address = self.addresses[self._next % len(self.addresses)]
        self._next = (self._next + 1) % len(self.addresses)
        return address

    def follow(self, leader: str) -> None:
        """A standby named the leader: try it next (a ``host:port``; anything else is ignored)."""
        try:
            if parse_address(leader) is not None:
                self._pointer = leader
        except ValueError:
            pass

    def worked(self, address: str) -> None:
        """``address`` answered as the leader: after a failover, start from it again."""
        if address in self.addresses:
            self._next = self.addresses.index(address)


async def reach_leader(addresses: Addresses, attempt: Callable[[str], Awaitable[T]]) -> T:
    """
    ``attempt(address)`` for each scheduler in turn until one is the leader:
    a standby's pointer (``NotLeader``) is followed first, an unreachable one
    is skipped; AuthenticationFailed stops at once.  The awaitables may be
    Deferreds or asyncio futures: no event loop is named here.  With one
    address and no pointer, its own error is raised unchanged; otherwise
    SchedulerGone lists what each said.
    """
    errors: list[tuple[str, Exception]] = []
    tried: set[str] = set()
    for _ in range(len(addresses) + MAX_REDIRECTS):
        if addresses.pointer is None and tried >= set(addresses.addresses):
            break  # every one in the list said no, and nobody pointed elsewhere
        address = addresses.next()
        tried.add(address)
        try:
            result = await attempt(address)
        except AuthenticationFailed:
            raise
        except Exception as e:
            errors.append((address, e))
            if isinstance(e, NotLeader) and e.leader and e.leader != address:
                addresses.follow(e.leader)
            continue
        addresses.worked(address)
        return result
    if len(errors) == 1:
        raise errors[0][1]
    said = "; ".join(f"{address}: {error or type(error).__name__}" for address, error in errors)
    raise SchedulerGone(f"no leader among the schedulers ({said})")


@implementer(IStreamClientEndpoint)
class FollowingEndpoint:
    """
    A client endpoint over a list of schedulers, for a ``ClientService``:
    each ``connect`` tries where a standby last pointed, then the list in
    turn, until one accepts the connection.  Whether it is the leader is
    learnt at the handshake: a standby's answer goes to ``follow``, and the
    service's next attempt goes there.
    """

    def __init__(self, reactor: Any, addresses: Addresses, tls: ClientTLS | None = None) -> None:
        self.reactor = reactor
        self.addresses = addresses
        self.tls = tls
        for address in addresses.addresses:
            client_endpoint(reactor, address, tls)  # refused now, not at the first connect

    def follow(self, leader: str) -> None:
        """A standby said the leader is at ``leader`` (empty: it knows none)."""
        if leader:
            self.addresses.follow(leader)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        tries = len(self.addresses) + (1 if self.addresses.pointer is not None else 0)
        failure: Exception | None = None
        for _ in range(tries):
            address = self.addresses.next()
            try:
                protocol: IProtocol = await client_endpoint(self.reactor, address, self.tls).connect(factory)
            except CancelledError:
                raise
            except Exception as e:
                failure = e
                continue
            return protocol
        assert failure is not None
        raise failure


@dataclass(frozen=True)
class PlainEndpoint:
    """
    A client endpoint string read without Twisted, for the asyncio client:
    ``kind`` is ``tcp``, ``tls`` or ``unix``; TLS files as the ``tls:``
    endpoint names them (``trustRoots``: a folder of CA certificates,
    ``certificate``/``privateKey``: this peer's, for mutual TLS).
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    timeout: float | None = None
    trust_roots: str | None = None
    certificate: str | None = None
    private_key: str | None = None


#: What each endpoint type takes, positional arguments first (Twisted's names).
_PLAIN_PARAMETERS = {
    "tcp": ("host", "port", "timeout"),
    "tls": ("host", "port", "timeout", "trustRoots", "certificate", "privateKey"),
    "unix": ("path", "timeout"),
}


def _split_endpoint(text: str) -> list[str]:
    """Split on ``:`` as Twisted does: a backslash escapes the next character."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for character in text:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def parse_plain_endpoint(address: str) -> PlainEndpoint:
    """
    ``tcp:host=H:port=P`` (or ``tcp:H:P``), ``tls:host=H:port=P[:trustRoots=DIR]
    [:certificate=PEM:privateKey=PEM]`` or ``unix:path=P`` (or ``unix:P``),
    with an optional ``timeout``; raises ValueError naming what is wrong or
    what only the Twisted client's endpoints support.
    """
    kind, _, rest = address.strip().partition(":")
    if kind not in _PLAIN_PARAMETERS:
        raise ValueError(
            f"the asyncio client takes host:port or tcp:, tls: and unix: endpoints, not {address!r} "
            "(use the Twisted client for other endpoint types)"
        )
    names = _PLAIN_PARAMETERS[kind]
    values: dict[str, str] = {}
    named = False  # positional arguments come first, as in Twisted's endpoints
    for index, part in enumerate(_split_endpoint(rest) if rest else []):
        name, equals, value = part.partition("=")
        if equals:
            named = True
        else:
            if named or index >= len(names):
                raise ValueError(f"cannot read {address!r}: {part!r} is not name=value")
            name, value = names[index], part
        if name not in names:
            raise ValueError(
                f"cannot read {address!r}: {kind}: takes {', '.join(names)} here, not {name!r} "
                "(the Twisted client's endpoints take more)"
            )
        values[name] = value
    timeout = None
    if "timeout" in values:
        try:
            timeout = float(values["timeout"])
        except ValueError:
            raise ValueError(f"cannot read {address!r}: the timeout must be a number of seconds") from None
    if kind == "unix":
        if not values.get("path"):
            raise ValueError(f"cannot read {address!r}: the path is missing")
        return PlainEndpoint("unix", path=values["path"], timeout=timeout)
    host = values.get("host", "")
    if not host:
        raise ValueError(f"cannot read {address!r}: the host is missing")
    port_text = values.get("port", "")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cannot read {address!r}: the port must be a number from 1 to 65535")
    if values.get("privateKey") and not values.get("certificate"):
        raise ValueError(f"cannot read {address!r}: privateKey goes with certificate")
    return PlainEndpoint(
        kind,
        host=host,
        port=int(port_text),
        timeout=timeout,
        trust_roots=values.get("trustRoots"),
        certificate=values.get("certificate"),
        private_key=values.get("privateKey"),
    )
