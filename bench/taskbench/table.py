"""
The report as a person reads it: one row a measurement, per store the median
with the min and max of the runs, and the notes needed to read them.  Made
from the JSON data (report.py) alone, so the table never shows a number the
file does not have.
"""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence
from typing import Any

from taskbench.results import MAP_CLIENT

#: A table row: label, runs, {store: summary}, unit, digits.
Row = tuple[str, int, dict[str, dict[str, float]], str, int]
KIB_TO_MIB = 1 / 1024


def table_rows(data: dict[str, Any]) -> list[Row]:
    """The measurements to show, one row each, with every store's summary."""
    config = data["config"]
    stores: dict[str, dict[str, Any]] = data["results"]["stores"]
    rows: list[Row] = []

    def add(
        label: str, runs: int, unit: str, digits: int, path: tuple[str | int, ...], scale: float = 1.0
    ) -> None:
        """A row of the summary at ``path`` in each store's results (missing: not measured)."""
        values = {}
        for store, results in stores.items():
            found: Any = results
            for part in path:
                found = found[part] if found is not None else None
            if found is not None:
                values[store] = {key: value * scale for key, value in found.items()}
        if values:
            rows.append((label, runs, values, unit, digits))

    runs = config["runs"]
    workers = config["workers"]
    if config["tasks"]:
        add(
            f"throughput, {config['tasks']:,} tasks, {workers} workers",
            runs,
            "tasks/s",
            0,
            ("throughput", "tasks_per_s"),
        )
    if config["latency_rounds"]:
        for key in ("p50", "p90", "p99"):
            add(f"latency {key}, {config['latency_rounds']:,} round trips", runs, "ms", 3, ("latency", key))
    if config["map_lines"]:
        map_runs = config["map_runs"]
        add(
            f"map, {config['map_lines']:,} lines, {workers} workers",
            map_runs,
            "tasks/s",
            0,
            ("map", "tasks_per_s"),
        )
        names: dict[str, Any] = next((r["map"]["peak_rss_kb"] for r in stores.values() if r["map"]), {})
        for name in names:
            shown = "taskmesh map (client)" if name == MAP_CLIENT else name
            add(f"  map peak RSS: {shown}", map_runs, "MiB", 1, ("map", "peak_rss_kb", name), KIB_TO_MIB)
    if config["backlog_tasks"]:
        backlog_runs = config["backlog_runs"]
        add(
            f"backlog, {config['backlog_tasks']:,} queued, no worker: RSS per task",
            backlog_runs,
            "bytes",
            0,
            ("backlog", "bytes_per_task"),
        )
        add(
            "  backlog: scheduler RSS with it queued",
            backlog_runs,
            "MiB",
            1,
            ("backlog", "rss_after_kb"),
            KIB_TO_MIB,
        )
        add("  backlog: enqueue rate", backlog_runs, "tasks/s", 0, ("backlog", "enqueue_tasks_per_s"))
    for index, count in enumerate(config["scaling"] or []):
        plural = "worker" if count == 1 else "workers"
        add(f"scaling: {count} {plural}", runs, "tasks/s", 0, ("scaling", index, "tasks_per_s"))
    return rows


def store_note(store: str, filesystem: str | None) -> str:
    """How a store was set up, for the table's header: its option, and for SQLite where it wrote."""
    how = {
        "memory": "--store memory",
        "postgresql": "--store postgresql://..., a throwaway local cluster, fsync on",
    }.get(store, "the default, taskmesh.sqlite")
    if store == "sqlite" and filesystem:
        how += f", on {filesystem}"
    return f"{store} ({how})"


def table(data: dict[str, Any]) -> str:
    """The report as a person reads it: per store, the median first, then the spread."""
    config, results = data["config"], data["results"]
    machine, software = data["machine"], data["software"]
    stores = list(results["stores"])
    git = software["taskmesh_git"]
    source = f"git {git['commit'][:10]}{', uncommitted changes' if git['dirty'] else ''}" if git else "no git"
    extra = [
        f"{role} {shlex.join(config[f'{role}_args'])}"
        for role in ("scheduler", "worker")
        if config[f"{role}_args"]
    ]
    runs_note = f"median of {config['runs']} run(s)"
    if config["map_lines"] and config["map_runs"] != config["runs"]:
        runs_note += f", map {config['map_runs']}"
    if config["backlog_tasks"] and config["backlog_runs"] != config["runs"]:
        runs_note += f", backlog {config['backlog_runs']}"
    lines = [
        f"taskmesh {software['taskmesh']} benchmark: {runs_note} (min and max beside it; "
        "'runs' says how many each row has)",
        f"  {software['taskmesh_path']} ({source})",
        f"  {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['platform']}, "
        f"Python {machine['python']}, Twisted {software['twisted']}",
        f"  scheduler and workers: twistd subprocesses on loopback TCP, concurrency "
        f"{config['concurrency']} per worker; the client runs in this process, the map "
        "in its own (taskmesh map)",
        "  stores: " + ", ".join(store_note(store, machine["workspace_filesystem"]) for store in stores),
        f"  options: {'; '.join(extra) if extra else 'the defaults'}",
    ]
    if config["profiled"]:
        lines.append("  PROFILED RUN: cProfile slows everything down; do not compare these numbers")
    lines.append("")

    rows = table_rows(data)
    # Each durable store's median against memory's, where both were measured.
    compare = [store for store in stores if store != "memory"] if "memory" in stores else []
    headers = ["measurement", "runs"]
    for _ in stores:
        headers += ["median", "min", "max"]
    headers.append("unit")
    headers += [f"{store}/memory" for store in compare]
    cells: list[list[str]] = []
    for label, runs, values, unit, digits in rows:
        row = [label, str(runs)]
        for store in stores:
            found = values.get(store)
            row += ["-" if found is None else f"{found[key]:,.{digits}f}" for key in ("median", "min", "max")]
        row.append(unit)
        for store in compare:
            if "memory" in values and store in values and values["memory"]["median"]:
                row.append(f"x{values[store]['median'] / values['memory']['median']:.2f}")
            else:
                row.append("")
        cells.append(row)
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    unit_column = 2 + 3 * len(stores)

    def line(row: Sequence[str]) -> str:
        parts = [
            text.ljust(widths[i]) if i in (0, unit_column) else text.rjust(widths[i])
            for i, text in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    # The store names above their three columns: "----- memory -----".
    spans = [" " * (widths[0] + 2 + widths[1])]
    for index, store in enumerate(stores):
        first = 2 + 3 * index
        span = sum(widths[first : first + 3]) + 4
        spans.append(f" {store} ".center(span, "-"))
    lines.append("  ".join(spans))
    lines.append(line(headers))
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(line(row) for row in cells)

    notes = []
    if config["map_lines"]:
        notes.append(
            f"map: tasks/s from spawning `taskmesh map` to its exit, so its start-up is in it "
            f"(`taskmesh --version` takes {results['command_startup_s']:.2f} s here); peak RSS: "
            "VmHWM of each twistd process before it stops; the command's own ru_maxrss, read by "
            "wait4 in a small wrapper process (see bench/README.md)"
        )
    if config["backlog_tasks"]:
        notes.append(
            "backlog: (scheduler VmRSS with the backlog queued - VmRSS before) / tasks, enqueued "
            f"in batches of {config['backlog_batch']:,} through Client.enqueue(); the scheduler "
            "runs with --max-queued above the backlog, so flow control does not pause the client"
        )
    for store in stores:
        scaling = results["stores"][store]["scaling"]
        if scaling:
            notes.append(
                f"scaling ({store}): x = median relative to {scaling[0]['workers']} worker(s): "
                + ", ".join(f"{each['workers']}: x{each['speedup_vs_first']:.2f}" for each in scaling)
            )
    if config["scaling"]:
        notes.append(f"{machine['cpu_count']} CPUs are shared by the client, the scheduler and every worker")
    for store in compare:
        notes.append(f"{store}/memory: the {store} median over the memory median")
    if notes:
        lines.append("")
        lines.extend(
            textwrap.fill(note, 100, initial_indent="  ", subsequent_indent="    ") for note in notes
        )
    return "\n".join(lines)
