"""
A task type for tests: ``repeat`` answers N bytes for the payload N, so a test
can make results as large as it needs without sending as much.
"""

from __future__ import annotations

from zope.interface import implementer

from taskmesh.handlers import ITaskHandler


@implementer(ITaskHandler)
class Repeat:
    name = "repeat"
    blocking = False

    def run(self, payload: bytes) -> bytes:
        return b"x" * int(payload)
