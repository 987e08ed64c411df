"""
Where secrets come from, so the quick start needs none typed by hand.

On first start a scheduler creates a random secret in a per-user file
(``$XDG_CONFIG_HOME/taskmesh/secret``, else ``~/.config/taskmesh/secret``;
mode 0600, like Erlang's cookie); workers and clients of the same user on the
same machine read it by default.  Elsewhere a secret is given with
``--secret-file PATH`` or the ``TASKMESH_SECRET`` environment variable (an
explicit file wins over the variable, which wins over the default file).  A
secret file that others may read is refused, as ssh refuses such a key.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

#: The environment variable that holds a secret itself.
SECRET_VARIABLE = "TASKMESH_SECRET"
#: Characters a secret needs at the least (a generated one has 64).
MIN_SECRET_LENGTH = 16


class SecretError(Exception):
    """No usable secret; the message says what to do."""


def default_secret_path(environ: Mapping[str, str] = os.environ) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "taskmesh" / "secret"


def _checked(text: str, where: str) -> bytes:
    secret = text.strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecretError(f"the secret in {where} is shorter than {MIN_SECRET_LENGTH} characters")
    return secret.encode("utf-8")


def read_secret_file(path: Path) -> bytes:
    """A secret from its file; refused if missing, empty, too short, or readable by others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"no secret file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretError(f"cannot read the secret file {path}: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"the secret file {path} may be read by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    return _checked(text, str(path))


def peer_secret(secret_file: str | None = None, environ: Mapping[str, str] = os.environ) -> bytes:
    """
    A worker's or client's secret: the file given, else ``TASKMESH_SECRET``,
    else the scheduler's default file of this user on this machine.
    """
    if secret_file:
        return read_secret_file(Path(secret_file))
    if environ.get(SECRET_VARIABLE):
        return _checked(environ[SECRET_VARIABLE], SECRET_VARIABLE)
    path = default_secret_path(environ)
    try:
        return read_secret_file(path)
    except SecretError as e:
        if path.exists():
            raise
        raise SecretError(
            f"{e}: start the scheduler once on this machine as this user (it creates one), "
            f"or give the scheduler's secret with --secret-file PATH or {SECRET_VARIABLE}"
        ) from None


def scheduler_secret(secret_file: str | None = None, environ: Mapping[str, str] = os.environ) -> bytes:
    """
    The scheduler's secret: the file given (which must exist), else
    ``TASKMESH_SECRET``, else the default file, created with a new random
    secret if it does not exist yet.
    """
    if secret_file:
        return read_secret_file(Path(secret_file))
    if environ.get(SECRET_VARIABLE):
        return _checked(environ[SECRET_VARIABLE], SECRET_VARIABLE)
    path = default_secret_path(environ)
    if not path.exists():
        create_secret_file(path)
    return read_secret_file(path)


def create_secret_file(path: Path) -> None:
    """A new random secret, in a file only its owner may read (never overwriting one)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    except OSError as e:
        raise SecretError(f"cannot create the secret file {path}: {e}") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(secrets.token_hex(32) + "\n")
