"""
Addresses as users type them, turned into Twisted endpoint strings.

Users write ``host:port`` (``localhost:9001``, ``[::1]:9001``) or just a
host; Twisted wants ``tcp:host=...:port=...``.  Anything that already looks
like an endpoint string (it names a known endpoint type) passes through
unchanged, so ``tls:...`` and ``unix:...`` work too.
"""

from __future__ import annotations

DEFAULT_PORT = 9001
DEFAULT_ADDRESS = f"localhost:{DEFAULT_PORT}"

_ENDPOINT_TYPES = ("tcp:", "tcp6:", "tls:", "ssl:", "unix:", "systemd:")


def _escape(value: str) -> str:
    """Endpoint strings use ':' and '=' as separators; escape them in values."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def client_endpoint_string(address: str) -> str:
    """
    ``host:port``, ``[v6]:port``, ``host`` or an endpoint string, as a
    client endpoint string.  Raises ValueError with a readable reason.
    """
    text = address.strip()
    if not text:
        raise ValueError("the address is empty")
    if text.startswith(_ENDPOINT_TYPES):
        return text
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
    return f"tcp:host={_escape(host)}:port={int(port_text)}"
