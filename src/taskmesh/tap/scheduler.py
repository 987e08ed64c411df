"""``twistd taskmesh-scheduler``: options in, a scheduler service out."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from taskmesh import wire
from taskmesh.scheduler import DEFAULT_MAX_LOSSES, DEFAULT_PREFETCH, Scheduler
from taskmesh.service import SchedulerService
from taskmesh.tap import non_negative_int, positive_int, release_default_pidfile

DEFAULT_LISTEN = "tcp:9001"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a taskmesh scheduler: it accepts tasks from clients, hands them to "
        "connected workers and returns each result to whoever asked. Clients "
        "and workers connect to the same endpoint. With -n and no --pidfile, "
        "no pid file is written, so several taskmesh processes can run from "
        "one folder."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN,
         "Endpoint to listen on, e.g. tcp:9001 or tcp:9001:interface=127.0.0.1."],
        ["name", None, "taskmesh-scheduler", "Name announced to clients and workers."],
        ["prefetch", None, DEFAULT_PREFETCH,
         "Tasks a worker may hold beyond its slots.", non_negative_int],
        ["max-losses", None, DEFAULT_MAX_LOSSES,
         "Times a task may lose its worker before it fails.", positive_int],
        ["max-frame", None, wire.DEFAULT_MAX_FRAME,
         "Largest frame accepted or sent, in bytes.", positive_int],
        ["max-payload", None, wire.DEFAULT_MAX_PAYLOAD,
         "Largest task payload or result, in bytes.", positive_int],
    ]

    def postOptions(self) -> None:
        if self["max-payload"] + wire.MAX_RECORD_OVERHEAD + wire.FRAME_OVERHEAD > self["max-frame"]:
            raise usage.UsageError("--max-payload must leave room in --max-frame for a record")
        release_default_pidfile(self)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    core = Scheduler(reactor, prefetch=options["prefetch"], max_losses=options["max-losses"])
    return SchedulerService(
        reactor,
        options["listen"],
        core,
        max_frame=options["max-frame"],
        max_payload=options["max-payload"],
        name=options["name"],
    )
