"""
What twistd runs: one module per role, each with ``Options`` and
``makeService``, found through ``twisted/plugins/taskmesh_plugins.py``.
"""

from __future__ import annotations

from twisted.python import usage

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
