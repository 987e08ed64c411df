"""
The web layer: a dashboard, ``/metrics`` for Prometheus, ``/health`` and a
JSON API under ``/api/``.  It reads a read-only view of the scheduler core
(``MeshView``) and makes no decision; every number is computed when someone
asks (or once a second for the live pages), never per task.
"""

from taskmesh.web.service import WebService
from taskmesh.web.view import MeshView

__all__ = ["MeshView", "WebService"]
