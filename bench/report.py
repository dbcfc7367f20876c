"""Benchmark results: one JSON line per measured run, and a table on the terminal.

Each row is one system (``fieldlink`` or a baseline) on one workload, with the same keys
whatever the benchmark, so a report can show fieldlink next to the baseline as ratios.
Units are in the key names: ``points_per_s``, ``cpu_pct`` (of one core),
``cpu_per_1k_pts_pct`` (percent of one core per 1,000 points/s), ``cpu_s_per_million``,
``rss_mib``, ``*_ms`` latencies.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    bench: str  # edge, ingest, e2e, farm
    system: str  # fieldlink, naive, ...
    workload: str  # e.g. "100x100@1s"
    figures: dict[str, float | int | str | None] = field(default_factory=dict)
    notes: str = ""

    def to_json(self, run_id: str) -> str:
        doc: dict[str, Any] = {
            "run": run_id,
            "bench": self.bench,
            "system": self.system,
            "workload": self.workload,
            **self.figures,
            "notes": self.notes,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        return json.dumps(doc, sort_keys=False)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def append_results(rows: Iterable[Row], run_id: str, path: Path | None = None) -> Path:
    path = path or RESULTS_DIR / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(row.to_json(run_id) + "\n")
    return path


def ratio(ours: float | None, base: float | None) -> str:
    if ours is None or base is None or base == 0:
        return "—"
    return f"{ours / base:.2f}×"


def print_table(
    title: str, rows: Sequence[Row], columns: Sequence[str], console: Console | None = None
) -> None:
    """Rows side by side; for each fieldlink row, ratios to the naive row of the same workload."""
    console = console or Console()
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    table.add_column("workload")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("notes")
    baselines = {r.workload: r for r in rows if r.system == "naive"}
    for row in rows:
        cells = [_fmt(row.figures.get(c)) for c in columns]
        table.add_row(row.system, row.workload, *cells, row.notes)
        base = baselines.get(row.workload)
        if row.system != "naive" and base is not None:
            ratios = [ratio(_num(row.figures.get(c)), _num(base.figures.get(c))) for c in columns]
            table.add_row("  ÷ naive", row.workload, *ratios, "")
    console.print(table)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:
            return "—"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """The rows of :func:`print_table` as a Markdown table (for READMEs and issues), with the
    same ``÷ naive`` ratio row under each non-naive row that has a naive row to compare."""
    head = ["system", "workload", *columns, "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    baselines = {r.workload: r for r in rows if r.system == "naive"}
    for row in rows:
        cells = [_fmt(row.figures.get(c)) for c in columns]
        lines.append("| " + " | ".join([row.system, row.workload, *cells, row.notes]) + " |")
        base = baselines.get(row.workload)
        if row.system != "naive" and base is not None:
            ratios = [ratio(_num(row.figures.get(c)), _num(base.figures.get(c))) for c in columns]
            lines.append("| " + " | ".join(["÷ naive", row.workload, *ratios, ""]) + " |")
    return "\n".join(lines)


def load_rows(path: Path, run_id: str | None = None) -> list[Row]:
    """Rows of one run (the last one in the file if ``run_id`` is None) from a results file."""
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not docs:
        return []
    wanted = run_id or docs[-1]["run"]
    fixed = {"run", "bench", "system", "workload", "notes", "host", "cpus", "python"}
    return [
        Row(
            d["bench"],
            d["system"],
            d["workload"],
            {k: v for k, v in d.items() if k not in fixed},
            d.get("notes", ""),
        )
        for d in docs
        if d["run"] == wanted
    ]
