"""Printing bench reports: one JSON object for machines, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

from rich import box
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


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


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


def print_inventory(report: dict[str, Any], console: Console) -> None:
    plan = report["plan"]
    levels = [str(n) for n in plan["concurrency"]]
    for workload, by_strategy in report["results"].items():
        spread = "one hot sku" if workload == "hot" else (
            f"Zipf (s={plan['zipf_s']}) over {plan['zipf_skus']:,} skus"
        )  # fmt: skip
        table = Table(
            title=f"Durable holds/s, {spread}, {plan['seconds_per_cell']:g} s per cell",
            caption=f"clients in this process; engine pool of {plan['pool_max']} connections",
        )
        table.add_column("strategy")
        for level in levels:
            table.add_column(f"{level} clients: holds/s", justify="right")
            table.add_column("p99 ms", justify="right")
        table.add_column("wasted", justify="right")
        table.add_column("oversold", justify="right")
        for strategy, cells in by_strategy.items():
            row = [strategy]
            for level in levels:
                row += [_cell(cells[level]["holds_per_s"]), _cell(cells[level]["p99_ms"])]
            row.append(_cell(sum(cell["wasted_attempts"] for cell in cells.values())))
            row.append(_cell(sum(cell["oversold"] for cell in cells.values())))
            table.add_row(*row)
        base = report["baseline"][workload]
        row = ["raw conditional UPDATE"]
        for level in levels:
            row += [_cell(base[level]["holds_per_s"]), _cell(base[level]["p99_ms"])]
        table.add_row(*row, "", "", style="dim")
        console.print(table)
    sale = Table(title="Flash sale: 256 clients until the sku is gone")
    for title in ("strategy", "units", "acknowledged", "oversold", "left", "seconds"):
        sale.add_column(title, justify="right")
    for strategy, row in report["flash_sale"].items():
        keys = ("units", "acknowledged", "oversold", "left", "seconds_to_sell_out")
        sale.add_row(strategy, *(_cell(row[key]) for key in keys))
    console.print(sale)
    http = report["http"]
    console.print(
        f"through retailsync serve ({http['workers']} workers, {http['clients']} connections): "
        f"{http['holds_per_s']:,} holds/s, p50 {http['p50_ms']} ms, p99 {http['p99_ms']} ms; "
        f"in process {http['in_process_holds_per_s']:,}/s (ratio {http['ratio_to_in_process']})",
        highlight=False,
    )
    for name, value in report["summary"].items():
        console.print(f"- {name.replace('_', ' ')}: {_cell(value)}", highlight=False)


def print_cache(report: dict[str, Any], console: Console) -> None:
    plan = report["plan"]
    table = Table(
        title=(
            f"Product reads, Zipf (s={plan['zipf_s']}) over {plan['skus']:,} skus, "
            f"{plan['readers']} readers, {plan['writes_per_s']:g} writes/s, {plan['seconds']:g} s"
        ),
        caption=f"stale: older than a version committed more than {plan['bound_s']:g} s before",
    )
    for column in ("cache", "reads/s", "hit ratio", "stale reads", "freshness p50/p99 ms"):
        table.add_column(column, justify="left" if column == "cache" else "right")
    events, ttl = report["events"], report["ttl_only"]
    freshness = f"{events['freshness_p50_ms']:g} / {events['freshness_p99_ms']:g}"
    table.add_row("event invalidation", _cell(events["reads_per_s"]), _cell(events["hit_ratio"]),
                  _cell(events["stale_reads"]), freshness)  # fmt: skip
    table.add_row(f"TTL only ({ttl['ttl_s']:g} s)", _cell(ttl["reads_per_s"]),
                  _cell(ttl["hit_ratio"]), _cell(ttl["stale_reads"]), "TTL")  # fmt: skip
    console.print(table)
    console.print(
        f"views (category pages, facets, availability): commit to view p50 "
        f"{events['view_lag_p50_ms']} ms, p99 {events['view_lag_p99_ms']} ms "
        f"({events['view_events']} events)"
    )
    http = report["http"]
    console.print(
        f"L1 hit through the read path: p50 {events['l1_hit_us']['p50']} us, "
        f"p99 {events['l1_hit_us']['p99']} us"
    )
    console.print(
        f"HTTP ({http['workers']} workers, {http['clients']} connections): cached product GET "
        f"{http['product_get_per_s']:,}/s (p99 {http['product_p99_ms']} ms), hello-world "
        f"{http['hello_per_s']:,}/s (p99 {http['hello_p99_ms']} ms): ratio {http['ratio']}"
    )


def print_overload(report: dict[str, Any], console: Console) -> None:
    console.print(
        f"capacity (closed loop, management off): {report['capacity_rps']:,} requests/s of "
        f"the mix {report['mix']}, {report['checkout_capacity_rps']:,} checkouts/s alone; "
        f"admission decision p99 {report['admission_decision_p99_us']} us"
    )
    for level, modes in report["levels"].items():
        # No borders, single gaps, short heads, whole ms: nine columns fit 80 characters uncut.
        table = Table(
            title=f"{level} capacity offered ({modes['off']['offered_per_s']:,}/s); latency ms",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        for column in ("mode", "class", "offered/s", "goodput", "shed", "errors",
                       "p50", "p99", "p99.9"):  # fmt: skip
            table.add_column(
                column, justify="left" if column in ("mode", "class") else "right", no_wrap=True
            )
        for mode in ("on", "off"):
            for name, c in modes[mode]["classes"].items():
                table.add_row(
                    mode, name, f"{c['offered_per_s']:,.0f}", _cell(c["goodput_ratio"]),
                    _cell(c["shed_ratio"]), _cell(c["errors"]), _ms(c["p50_ms"]),
                    _ms(c["p99_ms"]), _ms(c["p999_ms"]),
                )  # fmt: skip
        console.print(table)
        inverted = {mode: modes[mode].get("checkout_shed_while_lower_admitted") for mode in modes}
        console.print(
            f"  checkouts shed while a less critical request was let in, at most: "
            f"on {inverted['on']}, off {inverted['off']}"
        )
    room = report.get("waiting_room")
    if room:
        console.print(
            f"waiting room (management on, after the levels): {room['sessions']:,} sessions, "
            f"{room['queued']:,} queued, drained at {room['drained_per_s']}/s for a rate of "
            f"{room['rate_per_s']:g}/s; FIFO inversions {room['fifo_inversions']} "
            f"({room['fifo_inversion_ratio']:.3%}); {room['refused_503']:,} answers 503, asked "
            "again"
        )
