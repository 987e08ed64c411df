"""
The task type the chaos run gives its workers: ``sha256``, journaled.

It replaces the built-in ``sha256`` (a worker's ``--handler`` overrides a
built-in of the same name) with one that first waits a moment without
blocking, so that kills land while tasks run, then appends the payload to a
journal file (one line per execution, appended with O_APPEND so that every
worker process can share the file), then answers the digest.  The journal is
how the chaos run counts duplicate executions.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import reactor
from twisted.internet.task import deferLater
from zope.interface import implementer

from taskmesh.handlers import ITaskHandler

JOURNAL = os.environ.get("TASKMESH_CHAOS_JOURNAL", "executions.journal")
SECONDS = float(os.environ.get("TASKMESH_CHAOS_TASK_SECONDS", "0.05"))


@implementer(ITaskHandler)
class JournaledSha256:
    name = "sha256"
    blocking = False

    def __init__(self) -> None:
        self._journal = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def run(self, payload: bytes) -> object:
        return deferLater(reactor, SECONDS, self._hash, payload)

    def _hash(self, payload: bytes) -> bytes:
        os.write(self._journal, payload + b"\n")
        return hashlib.sha256(payload).hexdigest().encode("ascii")
