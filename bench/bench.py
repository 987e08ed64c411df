"""
Benchmark taskmesh end to end: a real scheduler and real workers (``twistd``
subprocesses on loopback TCP) driven through the public Python API and the
``taskmesh map`` command.

    python bench/bench.py                      # the full run (about 2 minutes)
    python bench/bench.py --tasks 2000 --latency-rounds 100 --runs 1 --no-scaling \\
        --map-lines 20000 --backlog-tasks 20000

It measures what a user of taskmesh sees, not what a microbenchmark of one
module would, each with the in-memory store and with the SQLite store side by
side (``--stores``):

1. submit throughput: ``--tasks`` sha256 tasks (payload ``task-<i>``), one
   ``submit()`` call each, all submitted at once; tasks/s from the first
   submit to the last result, every digest checked against hashlib;
2. round-trip latency: ``--latency-rounds`` sequential submit-and-await
   round trips; p50, p90 and p99 in milliseconds;
3. map: the real ``taskmesh map`` command over a file of ``--map-lines``
   lines; tasks/s, and the peak RSS of the scheduler, of each worker and of
   the command; every output line checked against hashlib;
4. backlog: ``--backlog-tasks`` tasks enqueued with no worker connected; the
   scheduler's RSS growth per queued task;
5. scaling: the throughput of (1) with 1, 2 and 4 workers.

Each measurement is repeated (``--runs``, ``--map-runs``, ``--backlog-runs``)
and the median is reported (with the min and max, so the spread is visible).
A readable table goes to stdout, progress to stderr, and everything (every
run, the machine, the software) to a JSON file, by default
``bench/results/latest.json``.

Every process it starts (twistd, ``taskmesh map``) always stops, by pid
(SIGTERM, a bounded wait, then SIGKILL), whether the benchmark ends, fails or
is interrupted with Ctrl-C; every wait has a deadline.

This file is only the entry point: the benchmark is the ``taskbench`` package
beside it (its ``__init__`` lists the modules; see also bench/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package beside this file: its folder is on sys.path when this file is
# run as a script, not when it is imported or run with runpy.run_path.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from taskbench.cli import main  # noqa: E402  (needs the path above)

if __name__ == "__main__":
    main()
