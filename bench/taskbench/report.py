"""
The results as plain data: the JSON file, which the printed table (table.py)
is made from too, so the two always agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from taskbench.results import ClusterResults, StoreResults

#: Version of the JSON layout below; bump it when a field changes meaning.
#: 2: results per store (``results.stores.<store>``), map and backlog added.
JSON_SCHEMA = 2


def summary(values: Sequence[float]) -> dict[str, float]:
    """The median, and the min and max beside it so that the spread of the runs shows."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput_report(args: argparse.Namespace, results: ClusterResults) -> dict[str, Any]:
    """One cluster's throughput runs: the main measurement's, or one worker count's of the scaling."""
    return {
        "workers": results.workers,
        "concurrency": results.concurrency,
        "tasks": args.tasks,
        "tasks_per_s": summary([run.tasks_per_s for run in results.throughput]),
        "runs": [asdict(run) for run in results.throughput],
    }


def store_report(args: argparse.Namespace, results: StoreResults) -> dict[str, Any]:
    """One store's measurements as plain data."""
    main = results.main
    latency = None
    if main and main.latency:
        latency = {
            "rounds": args.latency_rounds,
            **{
                key: summary([getattr(run, f"{key}_ms") for run in main.latency])
                for key in ("p50", "p90", "p99", "mean")
            },
            "runs": [asdict(run) for run in main.latency],
        }
    map_report = None
    if results.map:
        runs = results.map
        map_report = {
            "lines": args.map_lines,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "tasks_per_s": summary([run.tasks_per_s for run in runs]),
            "peak_rss_kb": {
                name: summary([run.peak_rss_kb[name] for run in runs]) for name in runs[0].peak_rss_kb
            },
            "runs": [asdict(run) for run in runs],
        }
    backlog = None
    if results.backlog:
        runs_b = results.backlog
        backlog = {
            "tasks": args.backlog_tasks,
            "batch": args.backlog_batch,
            "bytes_per_task": summary([run.bytes_per_task for run in runs_b]),
            "rss_after_kb": summary([run.rss_after_kb for run in runs_b]),
            "enqueue_tasks_per_s": summary([run.tasks_per_s for run in runs_b]),
            "runs": [asdict(run) for run in runs_b],
        }
    scaling = None
    if results.scaling:
        first = results.scaling[0].median_tasks_per_s()
        scaling = [
            {**throughput_report(args, each), "speedup_vs_first": each.median_tasks_per_s() / first}
            for each in results.scaling
        ]
    return {
        "scheduler_args": results.scheduler_args,
        "ready_s": main.ready_s if main else None,
        "throughput": throughput_report(args, main) if main and main.throughput else None,
        "latency": latency,
        "map": map_report,
        "backlog": backlog,
        "scaling": scaling,
    }


def report(
    args: argparse.Namespace,
    env: dict[str, Any],
    stores: list[StoreResults],
    extra: dict[str, Any],
    started_at: str,
    duration: float,
) -> dict[str, Any]:
    """Everything as plain data: the JSON file, and the source of the table."""
    return {
        "schema": JSON_SCHEMA,
        "started_at": started_at,
        "duration_s": round(duration, 3),
        "command": [sys.executable, *sys.argv],
        "config": {
            "stores": args.stores,
            "tasks": None if args.no_throughput else args.tasks,
            "latency_rounds": args.latency_rounds,
            "warmup": args.warmup,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "scheduler_args": args.scheduler_args,
            "worker_args": args.worker_args,
            "runs": args.runs,
            "map_lines": None if args.no_map else args.map_lines,
            "map_runs": args.map_runs,
            "backlog_tasks": None if args.no_backlog else args.backlog_tasks,
            "backlog_runs": args.backlog_runs,
            "backlog_batch": args.backlog_batch,
            "scaling": None if args.no_scaling else args.scaling,
            "profiled": args.profile is not None,
        },
        **env,
        "results": {
            **extra,
            "stores": {each.store: store_report(args, each) for each in stores},
        },
    }


#: A table row: label, runs, {store: summary}, unit, digits.


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
