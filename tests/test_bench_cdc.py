"""`retailsync bench cdc --quick`: runs end to end and reports every figure it promises."""

from __future__ import annotations

import json

from tests.processes import cli


def test_quick_bench_reports_ratios_and_latency() -> None:
    result = cli("bench", "cdc", "--quick", "--event-log", "postgres", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for key in ("changes_per_s", "recvlogical_changes_per_s", "latency_p50_ms", "latency_p99_ms"):
        assert report[key] > 0, key
    (backend,) = report["backends"]
    assert backend["backend"] == "postgres"
    assert backend["transactions_measured"] > 100  # about 100 a second for 3 s
    assert 0 < backend["ratio_to_recvlogical"] < 10


def test_a_bad_event_log_url_is_refused() -> None:
    result = cli("bench", "cdc", "--quick", "--event-log", "kafka://x")
    assert result.returncode == 1
    assert "RETAILSYNC_EVENT_LOG_URL" in result.stderr
    assert "Traceback" not in result.stderr
