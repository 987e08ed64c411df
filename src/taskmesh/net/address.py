"""
Addresses as users type them, turned into Twisted client endpoints.

Users write ``host:port`` (``localhost:9001``, ``[::1]:9001``) or just a
host; those become a ``HostnameEndpoint``, which resolves both IPv4 and IPv6
and tries them in parallel.  Anything that already is an endpoint string (it
names a known endpoint type: ``tcp:host=h:port=p``, ``tls:...``,
``unix:...``) goes to ``clientFromString`` unchanged.
"""

from __future__ import annotations

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
