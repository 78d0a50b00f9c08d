"""`retailsync bench inventory`, on a tiny plan: every cell, the flash sales and the HTTP run
report what they promise, and nothing is oversold."""

from __future__ import annotations

from retailsync.bench.inventory import STRATEGIES, InventoryPlan, run_inventory_bench
from retailsync.bench.report import print_inventory

TINY = InventoryPlan(
    seconds=0.3, warmup=0.1, skus=50, flash_units=40, http_seconds=0.5,
    concurrency=(1, 16), http_clients=16,
)  # fmt: skip


async def test_a_tiny_run_reports_every_cell() -> None:
    report = await run_inventory_bench(TINY, progress=lambda _: None)
    for workload in ("hot", "zipf"):
        assert set(report["results"][workload]) == set(STRATEGIES)
        for strategy, cells in report["results"][workload].items():
            assert set(cells) == {"1", "16"}
            for cell in cells.values():
                # Optimistic may lose every race in a 0.3 s cell; then it refused something.
                if strategy == "optimistic":
                    assert cell["holds_per_s"] > 0 or cell["refused"] > 0
                else:
                    assert cell["holds_per_s"] > 0
                assert cell["p99_ms"] >= cell["p50_ms"] >= 0
                assert cell["oversold"] == 0
                assert cell["checks_ok"]
                assert cell["baseline_holds_per_s"] > 0
        assert report["baseline"][workload]["16"]["holds_per_s"] > 0
    for sale in report["flash_sale"].values():
        assert sale["acknowledged"] == sale["units"] == 40  # every unit sold, none twice
        assert sale["left"] == 0
        assert sale["oversold"] == 0
    http = report["http"]
    assert http["holds_per_s"] > 0
    assert http["checks_ok"]
    assert set(http["statuses"]) == {"201"}
    assert http["in_process_holds_per_s"] == report["results"]["hot"]["auto"]["16"]["holds_per_s"]
    assert report["summary"]["oversold_total"] == 0
    assert report["summary"]["default_wasted_per_success"] == 0


def test_the_report_prints(capsys) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console

    cell = {"holds_per_s": 10, "p50_ms": 1.0, "p99_ms": 2.0, "wasted_attempts": 0, "oversold": 0}
    report = {
        "plan": {"concurrency": [1], "seconds_per_cell": 1, "zipf_s": 1.1, "zipf_skus": 5,
                 "pool_max": 4},
        "results": {"hot": {"batched": {"1": cell}}},
        "baseline": {"hot": {"1": cell}},
        "flash_sale": {"batched": {"units": 1, "acknowledged": 1, "oversold": 0, "left": 0,
                                   "seconds_to_sell_out": 0.1}},
        "http": {"workers": 2, "clients": 1, "holds_per_s": 5, "p50_ms": 1, "p99_ms": 2,
                 "in_process_holds_per_s": 10, "ratio_to_in_process": 0.5},
        "summary": {"oversold_total": 0},
    }  # fmt: skip
    print_inventory(report, Console(width=200))
    out = capsys.readouterr().out
    assert "raw conditional UPDATE" in out
    assert "ratio 0.5" in out
