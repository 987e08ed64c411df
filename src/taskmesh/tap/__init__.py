"""
What twistd runs: one module per role, each with ``Options`` and
``makeService``, found through ``twisted/plugins/taskmesh_plugins.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from taskmesh.net.address import parse_address
from taskmesh.net.credentials import SECRET_VARIABLE, SecretError, peer_secret
from taskmesh.net.tls import ClientTLS

#: twistd's own default pid file name.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"


def release_default_pidfile(options: usage.Options) -> None:
    """
    Let a scheduler and any number of workers run with ``twistd -n`` from one
    folder.  twistd writes ``twistd.pid`` even with ``-n`` and refuses to
    start a second process beside it; a process that stays in the foreground
    is tracked by whoever started it, so when the pid file is twistd's
    untouched default we write none.  An explicit ``--pidfile`` is kept, and
    a daemon (without ``-n``) keeps its pid file: it is how one stops it.

    This runs in the subcommand's ``postOptions``, which twistd calls before
    its own ``postOptions`` and before it checks the pid file.
    """
    parent = getattr(options, "parent", None)
    if parent is None or not parent.get("nodaemon"):
        return
    if parent.get("pidfile") == TWISTD_DEFAULT_PIDFILE:
        parent["pidfile"] = ""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"{text} is not zero or a positive number")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number")
    return value


#: The options by which a worker or a client proves itself and checks the
#: scheduler: its secret, and TLS.  Shared by ``taskmesh-worker`` and every
#: ``taskmesh`` command.
PEER_SECURITY_PARAMETERS: list[list[Any]] = [
    [
        "secret-file",
        None,
        None,
        f"File holding the scheduler's secret for this role (default: {SECRET_VARIABLE} if set, "
        "else the file a scheduler of this user on this machine created: "
        "$XDG_CONFIG_HOME/taskmesh/secret or ~/.config/taskmesh/secret).",
    ],
    ["tls-ca", None, None, "Connect over TLS, trusting this CA (PEM) for the scheduler's certificate."],
    [
        "tls-cert",
        None,
        None,
        "Connect over TLS with this certificate (PEM), for a scheduler that asks for one.",
    ],
    ["tls-key", None, None, "The private key (PEM) of --tls-cert, if it is not in the same file."],
]
PEER_SECURITY_FLAGS: list[list[Any]] = [
    ["tls", None, "Connect over TLS, trusting the platform's certificate authorities."],
]


def peer_security(options: usage.Options) -> tuple[bytes, ClientTLS | None]:
    """The secret and TLS settings these options ask for; UsageError if the secret cannot be had."""
    try:
        secret = peer_secret(options["secret-file"])
    except SecretError as e:
        raise usage.UsageError(str(e)) from None
    if options["tls-key"] and not options["tls-cert"]:
        raise usage.UsageError("--tls-key goes with --tls-cert")
    tls = None
    if options["tls"] or options["tls-ca"] or options["tls-cert"]:
        if parse_address(options["connect"]) is None:
            raise usage.UsageError("--tls options go with host:port; a tls: endpoint says so itself")
        tls = ClientTLS(ca_file=options["tls-ca"], cert_file=options["tls-cert"], key_file=options["tls-key"])
    return secret, tls
