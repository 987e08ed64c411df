"""
Settings from a TOML file and ``TASKMESH_*`` environment variables, for
every process, on top of ``usage.Options``: one mechanism, not one per option.

Every option of the scheduler (``twistd taskmesh-scheduler``), the worker
(``twistd taskmesh-worker``) and the ``taskmesh`` commands can be set three
more ways than its flag.  From strongest to weakest:

1. the flag on the command line;
2. ``TASKMESH_<SECTION>_<OPTION>`` then ``TASKMESH_<OPTION>`` in the
   environment: the option's long name in capitals, ``-`` as ``_``
   (``--max-queued`` is ``TASKMESH_MAX_QUEUED``; ``TASKMESH_WORKER_NAME``
   names workers only, while ``TASKMESH_CONNECT`` serves workers and clients
   alike);
3. the ``[scheduler]``, ``[worker]`` or ``[client]`` section of the config
   file, keys being the long names (``max-queued = 500000``; ``max_queued``
   too);
4. the option's default.

The config file is ``--config PATH`` if given, else ``$TASKMESH_CONFIG``,
else the first that exists of ``./taskmesh.toml`` and
``$XDG_CONFIG_HOME/taskmesh/config.toml`` (``~/.config/taskmesh/config.toml``);
only that one file is read.  A file named explicitly must exist; a key no
process knows, a value of the wrong kind, or a file that is not TOML is an
error naming the file and the key, never ignored.  Flags are ``true`` or
``false`` (``1``/``0``, ``yes``/``no`` in the environment); a repeatable
option (``--tasks``, ``--handler``) takes a list (commas in the
environment).  Values go through the option's own checks, exactly as if
they had been typed as flags.

``TASKMESH_SECRET`` (the secret itself) keeps its meaning: it is used when no
secret file is set by any of the ways above.  ``taskmesh config`` prints the
effective settings of each section and where each came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.python import reflect, usage

#: The environment variable naming the config file; and the prefix of all.
CONFIG_VARIABLE = "TASKMESH_CONFIG"
PREFIX = "TASKMESH_"
SECTIONS = ("scheduler", "worker", "client")
#: Where a config file is looked for, in order, when none is named.
LOCAL_FILE = "taskmesh.toml"

#: Names that are not settings: they act (help, version) or choose the file.
_NOT_SETTINGS = frozenset({"help", "version", "config"})

#: What --help of every process says about it.
CONFIG_HELP = (
    "Every option may also be set as TASKMESH_<OPTION> in the environment "
    "(TASKMESH_MAX_QUEUED=500000), or in the [{section}] section of a TOML config "
    "file (--config PATH; default ./taskmesh.toml, else "
    "$XDG_CONFIG_HOME/taskmesh/config.toml); flags win over the environment, which "
    "wins over the file. 'taskmesh config' shows the effective settings."
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def config_help(section: str) -> str:
    return CONFIG_HELP.format(section=section)


def default_config_path(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file used when none is named: the first that exists, or None."""
    environ = os.environ if environ is None else environ
    local = (cwd or Path.cwd()) / LOCAL_FILE
    if local.is_file():
        return local
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(base) / "taskmesh" / "config.toml"
    return user if user.is_file() else None


def load_file(path: Path) -> dict[str, Any]:
    """A config file's sections; UsageError naming the file for anything wrong."""
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise usage.UsageError(f"config file {path} does not exist") from None
    except OSError as e:
        raise usage.UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"config file {path} is not valid TOML: {e}") from None
    for name, value in data.items():
        if name not in SECTIONS:
            raise usage.UsageError(
                f"config file {path}: unknown section [{name}] (sections: {', '.join(SECTIONS)})"
            )
        if not isinstance(value, dict):
            raise usage.UsageError(f"config file {path}: {name} must be a [{name}] section")
    return data


def _truth(value: Any, from_env: bool) -> bool:
    """A flag's value: a TOML boolean, or true/false, 1/0, yes/no, on/off in the environment."""
    if not from_env:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not true or false")
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(f"{value!r} is not true or false")
    return text in _TRUE


def variable(name: str, section: str | None = None) -> str:
    """The environment variable of an option: TASKMESH_[SECTION_]NAME."""
    middle = f"{section.upper()}_" if section else ""
    return f"{PREFIX}{middle}{name.upper().replace('-', '_')}"


class Configurable(usage.Options):
    """
    ``usage.Options`` that also take their settings from the environment and
    a config file (see the module).  Call ``apply_config`` first thing in
    ``postOptions``; ``sources`` then says where each setting came from.
    """

    #: Which section of the file, and which TASKMESH_<SECTION>_ variables, apply.
    config_section = "client"

    def __init__(self) -> None:
        super().__init__()
        #: Options given on the command line (by long name).
        self.given: set[str] = set()
        #: Long name -> where its value came from (after ``apply_config``).
        self.sources: dict[str, str] = {}
        for name, handler in list(self._dispatch.items()):
            self._dispatch[name] = self._tracked(name, handler)

    def _tracked(self, name: str, handler: Any) -> Any:
        def given(option: str, value: Any = None) -> None:
            self.given.add(name)
            if isinstance(handler, usage.CoerceParameter):
                handler.dispatch(option, value)
            else:
                handler(option, value)

        return given

    def opt_config(self, path: str) -> None:
        """
        Read settings from this TOML file (default: ./taskmesh.toml, else
        $XDG_CONFIG_HOME/taskmesh/config.toml, if one exists).
        """
        self["config"] = path

    def settings(self) -> list[str]:
        """The long names of every option that is a setting (all but help, version and config)."""
        names = []
        for name in self._dispatch:
            if name in _NOT_SETTINGS or self.synonyms.get(name, name) != name:
                continue
            method = getattr(self, "opt_" + name.replace("-", "_"), None)
            if method is not None and usage.flagFunction(method, name) and name not in self.defaults:
                continue  # an action without a value, not a setting
            names.append(name)
        return names

    def config_path(self, environ: Mapping[str, str]) -> tuple[Path | None, str]:
        """The config file and why it is the one: (path or None, how it was chosen)."""
        explicit = self.get("config")
        if explicit:
            return Path(explicit), "--config"
        named = environ.get(CONFIG_VARIABLE)
        if named:
            return Path(named), CONFIG_VARIABLE
        found = default_config_path(environ)
        return found, "found" if found is not None else "none"

    def apply_config(self, environ: Mapping[str, str] | None = None) -> None:
        """
        Fill every option not given as a flag from the environment, else the
        config file; record each one's source.  UsageError for a bad value,
        naming where it came from.
        """
        environ = os.environ if environ is None else environ
        section = self.config_section
        path, _ = self.config_path(environ)
        table: dict[str, Any] = {}
        if path is not None:
            table = {key.replace("_", "-"): value for key, value in load_file(path).get(section, {}).items()}
        names = self.settings()
        for key in table:
            if key not in names:
                raise usage.UsageError(f"config file {path}: unknown setting {key!r} in [{section}]")
        for name in names:
            if name in self.given:
                self.sources[name] = "command line"
                continue
            for candidate in (variable(name, section), variable(name)):
                if candidate in environ:
                    self._set(name, environ[candidate], candidate, from_env=True)
                    self.sources[name] = f"environment {candidate}"
                    break
            else:
                if name in table:
                    self._set(name, table[name], f"{path} [{section}] {name}", from_env=False)
                    self.sources[name] = f"{path} [{section}]"
                else:
                    self.sources[name] = "default"

    def _flags(self) -> set[str]:
        flags: list[Any] = []
        reflect.accumulateClassList(self.__class__, "optFlags", flags)
        return {flag[0] for flag in flags}

    def _set(self, name: str, value: Any, where: str, from_env: bool) -> None:
        """Set one option from the environment or the file, through its own checks."""
        try:
            if name in self._flags():
                self[name] = 1 if _truth(value, from_env) else 0
                return
            values: list[Any]
            if name not in self.defaults:  # a repeatable option (an opt_ method)
                if from_env:
                    values = [part.strip() for part in str(value).split(",") if part.strip()]
                else:
                    values = value if isinstance(value, list) else [value]
            else:
                values = [value]
            for one in values:
                if isinstance(one, (list, dict, bool)):
                    raise ValueError(f"{one!r} is not a single value")
                self._dispatch[name](name, str(one))
                self.given.discard(name)  # set here, not on the command line
        except (ValueError, usage.UsageError) as e:
            raise usage.UsageError(f"{where}: {e}") from None

    def effective(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) of every setting, after ``apply_config``."""
        shown = []
        for name in sorted(self.settings()):
            value = self.get(name)
            if name not in self.defaults:  # a repeatable option keeps its list under another key
                value = self.get(_REPEATED.get(name, name))
            shown.append((name, value, self.sources.get(name, "default")))
        return shown


#: Repeatable options whose values live under another key (the worker's).
_REPEATED = {"handler": "handlers", "tasks": "tasks"}
