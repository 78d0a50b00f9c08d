"""Change data capture metrics: throughput, commit-to-log latency, slot health."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "retailsync_cdc_events_total", "Change events appended to the event log", ["source"]
)
COMMIT_TO_LOG = Histogram(
    "retailsync_cdc_commit_to_log_seconds",
    "From a transaction's commit to its events being durable in the event log",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RETAINED_BYTES = Gauge(
    "retailsync_cdc_slot_retained_wal_bytes",
    "WAL the server keeps for the replication slot (current LSN - restart LSN)",
    ["slot"],
    multiprocess_mode="max",
)
SLOTS_LOST = Counter(
    "retailsync_cdc_slots_lost_total",
    "Replication slots found invalidated (wal_status lost) and recreated",
    ["slot"],
)
RESTARTS = Counter(
    "retailsync_cdc_restarts_total",
    "Times the capture lost its database or event log and started the stream again",
    ["source"],
)
CONSUMER_LAG_EVENTS = Gauge(
    "retailsync_consumer_lag_events",
    "Events appended and not yet acknowledged by the consumer group",
    ["group"],
    multiprocess_mode="max",
)
CONSUMER_LAG_SECONDS = Gauge(
    "retailsync_consumer_lag_seconds",
    "Age of the oldest event the consumer group has not yet acknowledged",
    ["group"],
    multiprocess_mode="max",
)
