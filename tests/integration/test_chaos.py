"""
Nothing lost: 500 tasks across 3 workers while workers are SIGKILLed and
restarted at random moments, the scheduler is SIGKILLed and restarted
twice, and the store fails the scheduler's commits four times (another
connection holding its write lock: once from the start until the client has
been refused, then at random moments).  Runs bench/chaos.py, the same
program as the larger benchmark run, and checks its counts: every task has
exactly one stored, right result.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskmesh.testing import child_env

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_kills_and_store_faults_lose_nothing_and_record_each_result_once() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(CHAOS),
            "--tasks",
            "500",
            "--workers",
            "3",
            "--worker-kills",
            "6",
            "--scheduler-kills",
            "2",
            "--store-faults",
            "4",
            "--task-seconds",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env=child_env(),
    )
    print(run.stdout)
    print(run.stderr)
    counts = dict(re.findall(r"^([a-z ]+?)\s{2,}(\d+(?:\.\d+)?)$", run.stdout, re.MULTILINE))
    assert run.returncode == 0, run.stderr
    assert counts["tasks"] == "500"
    assert int(counts["worker kills"]) >= 5 and counts["scheduler kills"] == "2"
    assert int(counts["store faults"]) >= 1 and int(counts["submissions refused"]) >= 1
    for name in ("lost", "duplicated", "wrong", "failed", "never executed"):
        assert counts[name] == "0", name
    # at-least-once: each task ran at least once; reruns are counted, not forbidden
    assert int(counts["executions"]) >= 500
