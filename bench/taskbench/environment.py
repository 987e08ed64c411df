"""
The machine and the software a run measured, recorded in the JSON beside the
numbers: numbers are comparable only between runs on the same machine, and
the same commit of taskmesh, which this makes checkable afterwards.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import taskmesh
import twisted


def git_info(folder: Path) -> dict[str, Any] | None:
    """The commit of the taskmesh source measured, and whether it differs from it."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", ".")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's name as the kernel reports it; the platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem_of(path: Path) -> str | None:
    """
    The file system the SQLite stores are written to (the temporary folder):
    a commit costs very different times on tmpfs, ext4 or a network disk.
    """
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(path.resolve())
    best = max(
        (m for m in mounts if target == m[0] or target.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return f"{best[1]} on {best[0]}" if best else None


def environment(workspace: Path) -> dict[str, Any]:
    """The ``machine`` and ``software`` sections of the JSON."""
    from twisted.internet import reactor

    package = Path(taskmesh.__file__).resolve().parent
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "memory_total_kb": proc_meminfo_total(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "workspace_filesystem": filesystem_of(workspace),
        },
        "software": {
            "taskmesh": taskmesh.__version__,
            "taskmesh_path": str(package),
            "taskmesh_git": git_info(package),
            "twisted": twisted.__version__,
            "reactor": f"{type(reactor).__module__}.{type(reactor).__qualname__}",
        },
    }


def proc_meminfo_total() -> int | None:
    """The machine's memory in kB (``MemTotal``), or None where there is no /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
