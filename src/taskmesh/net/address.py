"""
Addresses as users type them, turned into Twisted client endpoints.

Users write ``host:port`` (``localhost:9001``, ``[::1]:9001``) or just a
host; those become a ``HostnameEndpoint``, which resolves both IPv4 and IPv6
and tries them in parallel.  Anything that already is an endpoint string (it
names a known endpoint type: ``tcp:host=h:port=p``, ``tls:...``,
``unix:...``) goes to ``clientFromString`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from taskmesh.net.tls import ClientTLS

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
