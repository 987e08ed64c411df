"""
A task type for the integration tests, loaded by workers started with
``--handler traced_sleep:TracedSleep`` (this folder on their PYTHONPATH).

It is the built-in ``sleep`` task, plus one log line in the worker's own log
when a task starts: "traced-sleep PAYLOAD started".  The built-in task types
leave no trace of which worker ran a task, or of when it started; this line
lets a test see both, so it can tell that two workers shared a batch, and
kill a worker while a task is really running on it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from taskmesh.handlers import ITaskHandler, SleepHandler


@implementer(ITaskHandler)
class TracedSleep:
    name = "traced-sleep"
    blocking = False
    log = Logger()

    def run(self, payload: bytes) -> Deferred[bytes]:
        from twisted.internet import reactor  # the one twistd installed, once it runs

        self.log.info("traced-sleep {payload} started", payload=payload.decode("utf-8", "replace"))
        return SleepHandler(reactor).run(payload)
