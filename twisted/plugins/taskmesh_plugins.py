"""
twistd plugins for taskmesh: ``twistd taskmesh-scheduler`` and
``twistd taskmesh-worker``.  Only names and modules here; the modules are
imported when a plugin is used, so ``twistd --help`` stays cheap.
"""

from twisted.application.service import ServiceMaker

taskmesh_scheduler = ServiceMaker(
    "taskmesh scheduler",
    "taskmesh.tap.scheduler",
    "A taskmesh scheduler: queues tasks and hands them to workers.",
    "taskmesh-scheduler",
)

taskmesh_worker = ServiceMaker(
    "taskmesh worker",
    "taskmesh.tap.worker",
    "A taskmesh worker: connects to a scheduler and runs tasks.",
    "taskmesh-worker",
)
