"""
The benchmark behind ``bench/bench.py``, one module a measurement, with the
handling of the processes under test in one place:

- processes: starting and stopping the twistd schedulers and workers (a
  ``Cluster``), the wrapper that measures a command, the profiled twistd,
  and the ``/proc`` readings of a process's memory;
- client: what every measurement does with ``taskmesh.Client`` (bounded
  waits, the warm-up, the tasks and the digests they must get);
- throughput, latency, mapping, backlog, scaling: one measurement each, and
  session: the cluster that the throughput and latency runs (and each
  worker count of the scaling) share;
- results: the numbers each measurement produces, which are the JSON's
  fields; report: the JSON; table: the printed table; environment: the
  machine and software recorded with them;
- cli: the options, the order of the measurements, and the exit status.

Importing the package checks first that taskmesh (and Twisted) can be
imported, so that the usual mistake, running the benchmark with a Python that
does not have taskmesh, ends with a plain message instead of a traceback from
deep inside a module.
"""

from __future__ import annotations

import sys

try:
    from twisted.internet import task  # noqa: F401
    from twisted.internet.defer import Deferred  # noqa: F401
    from twisted.logger import globalLogBeginner  # noqa: F401

    import taskmesh  # noqa: F401
    import twisted  # noqa: F401
    from taskmesh import Client  # noqa: F401
except ImportError as e:  # the usual mistake: a Python without taskmesh installed
    sys.exit(
        f"bench: {e} ({sys.executable}); run this with the Python that has taskmesh "
        "installed, e.g. .venv/bin/python bench/bench.py"
    )
