"""Task types: the registry, import paths, and handlers found as Twisted plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

import twisted.plugins
from taskmesh.handlers import HandlerError, HandlerRegistry, default_registry

PLUGIN = """
from twisted.plugin import IPlugin
from zope.interface import implementer
from taskmesh.handlers import ITaskHandler

@implementer(IPlugin, ITaskHandler)
class Reverse:
    name = "reverse"
    blocking = False
    def run(self, payload):
        return payload[::-1]

reverse = Reverse()
"""


def test_built_in_types() -> None:
    registry = default_registry(Clock(), use_plugins=False)
    assert registry.names() == ("pbkdf2", "sha256", "sleep")


def test_a_handler_in_a_twisted_plugins_folder_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "taskmesh_test_reverse.py").write_text(PLUGIN)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry(Clock())
    handler = registry.get("reverse")
    assert handler is not None and handler.run(b"abc") == b"cba"
    sys.modules.pop("twisted.plugins.taskmesh_test_reverse", None)


def test_a_later_handler_replaces_a_built_in_of_the_same_name() -> None:
    class Mine:
        name = "sha256"
        blocking = False

        def run(self, payload: bytes) -> bytes:
            return b"mine"

    from zope.interface import classImplements

    from taskmesh.handlers import ITaskHandler

    classImplements(Mine, ITaskHandler)
    registry = default_registry(Clock(), [Mine()], use_plugins=False)
    assert registry.get("sha256").run(b"x") == b"mine"  # type: ignore[union-attr]


def test_an_object_that_is_not_a_handler_is_refused() -> None:
    with pytest.raises(HandlerError):
        HandlerRegistry([object()])
