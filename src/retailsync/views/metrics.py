"""View maintenance metrics: freshness (commit to applied) and what became of each event."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LAG = Histogram(
    "retailsync_view_lag_seconds",
    "From a change's commit to the views holding it (the consumer's transaction committed)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
EVENTS = Counter(
    "retailsync_view_events_total",
    "Change events the view consumer handled: applied, skipped (an older version or a "
    "redelivery) or ignored (a table the views do not read)",
    ["outcome"],
)
REBUILDS = Counter("retailsync_view_rebuilds_total", "Full rebuilds of the view tables")
