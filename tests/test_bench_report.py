"""The overload bench's tables: every figure whole at 80 columns (rich cuts cells that do not
fit with an ellipsis, and a cut p99.9 reads as a different number)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from retailsync.bench.report import print_overload


def _class(offered: float, p99: float) -> dict[str, Any]:
    return {
        "offered_per_s": offered, "goodput_ratio": 0.0647, "shed_ratio": 0.0137,
        "errors": 77_142, "p50_ms": 4_814.27, "p99_ms": p99, "p999_ms": 10_204.4,
    }  # fmt: skip


def test_a_10x_level_prints_every_figure_uncut_at_80_columns() -> None:
    classes = {name: _class(8_239.4, 10_218.2) for name in ("browse", "cart", "checkout")}
    level = {"offered_per_s": 13_772, "classes": classes, "checkout_shed_while_lower_admitted": 7}
    report = {
        "capacity_rps": 1_377, "mix": {"browse": 60}, "checkout_capacity_rps": 433,
        "admission_decision_p99_us": 2.5, "levels": {"10x": {"on": level, "off": level}},
        "waiting_room": {
            "sessions": 400, "queued": 391, "rate_per_s": 50.0, "drained_per_s": 49.6,
            "fifo_inversions": 1, "fifo_inversion_ratio": 0.0025, "refused_503": 1_234,
        },
    }  # fmt: skip
    console = Console(width=80, record=True)
    print_overload(report, console)
    text = console.export_text()
    assert "…" not in text
    for figure in ("8,239", "0.0647", "0.0137", "77,142", "4,814", "10,218", "10,204", "checkout"):
        assert figure in text
    flat = " ".join(text.split())
    assert "391 queued, drained at 49.6/s for a rate of 50/s; FIFO inversions 1 (0.250%)" in flat
    assert "1,234 answers 503" in flat
    assert "checkouts shed while a less critical request was let in, at most: on 7, off 7" in flat
