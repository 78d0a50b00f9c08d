"""Printing bench reports: one JSON object for machines, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def print_json(report: dict[str, Any]) -> None:
    # Plain print, not rich: a console would wrap long lines and break the JSON.
    print(json.dumps(report, indent=2))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if value < 10 else f"{value:,.1f}"
    return str(value)


def print_crdt(report: dict[str, Any], console: Console) -> None:
    """One block per type: our figures, then pycrdt's and the ratios where it has the type."""
    plan = report["plan"]
    table = Table(
        title=f"CRDT merges and sizes, {plan['ops_per_type']:,} operations per type",
        caption="merges/s: deltas received as bytes (decode + merge); sizes in bytes",
    )
    table.add_column("type")
    for title in ("merges/s", "in-memory merges/s", "delta (mean)", "full state"):
        table.add_column(title, justify="right")
    for name, row in report["types"].items():
        fields = ("merges_per_s", "inmem_merges_per_s", "delta_bytes", "state_bytes")
        table.add_row(name, *(_cell(row[key]) for key in fields), end_section="peer" not in row)
        if "peer" in row:
            peer = f"  {row['peer']['name']} {row['peer']['version']}"
            table.add_row(peer, *(_cell(row.get(f"peer_{key}")) for key in fields), style="dim")
            ratios = (_cell(row.get(f"ratio_{key}")) for key in fields)
            table.add_row("  ours / pycrdt", *ratios, end_section=True, style="italic")
    console.print(table)
    for note in report["notes"]:
        console.print(f"- {note}", highlight=False)


_CONVERGENCE_ROWS = {
    "ops": "operations",
    "adds": "adds (and lww sets)",
    "removes": "removes",
    "adds_surviving_remove": "adds that survived a remove",
    "deliveries": "deltas delivered",
    "duplicates": "duplicated",
    "dropped": "dropped",
    "anti_entropy": "anti-entropy merges",
    "checkpoints": "checkpoints",
    "lines_checked": "lines checked",
    "lost_adds": "lost adds",
    "resurrections": "resurrections",
    "wrong_lines": "wrong lines",
    "converged": "converged",
    "seconds": "seconds",
}


def print_convergence(report: dict[str, Any], console: Console) -> None:
    network = report["network"]
    table = Table(
        title=f"CRDT convergence: {report['replicas']} replicas, seed {report['seed']}",
        caption=(
            f"network: drop {network['drop']:.0%}, duplicate {network['duplicate']:.0%}, "
            f"delay up to {network['max_delay']} ops, "
            f"anti-entropy every {network['anti_entropy_every']} ops"
        ),
    )
    table.add_column("")
    subjects = report["subjects"]
    for name in subjects:
        table.add_column(name, justify="right")
    for key, title in _CONVERGENCE_ROWS.items():
        table.add_row(title, *(_cell(row[key]) for row in subjects.values()))
    console.print(table)
    console.print(
        f"{report['ops']:,} operations in {report['seconds']:,.1f} s "
        f"({report['ops_per_s']:,} ops/s): {report['lost_adds']} lost adds, "
        f"{report['resurrections']} resurrections, {report['wrong_lines']} wrong lines, "
        f"{'converged' if report['converged'] else 'NOT converged'}",
        highlight=False,
    )


def print_cdc(report: dict[str, Any], console: Console) -> None:
    plan = report["plan"]
    table = Table(
        title=f"Change data capture: {plan['changes']:,} changes drained; latency at "
        f"{plan['rate']:,} changes/s for {plan['seconds']:g} s",
    )
    for title in ("event log", "changes/s", "pg_recvlogical/s", "ours / ceiling",
                  "offered/s", "p50 ms", "p99 ms"):  # fmt: skip
        table.add_column(title, justify="right")
    for row in report["backends"]:
        keys = ("changes_per_s", "recvlogical_changes_per_s", "ratio_to_recvlogical",
                "offered_changes_per_s", "latency_p50_ms", "latency_p99_ms")  # fmt: skip
        table.add_row(row["backend"], *(_cell(row[key]) for key in keys))
    console.print(table)
