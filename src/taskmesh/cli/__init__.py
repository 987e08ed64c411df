"""The ``taskmesh`` command: a thin layer over the Twisted client."""

from taskmesh.cli.commands import main

__all__ = ["main"]
