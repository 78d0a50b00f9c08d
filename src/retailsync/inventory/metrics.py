"""Prometheus metrics of the reservation engine."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

HOLDS = Counter(
    "retailsync_holds_total",
    "Hold requests answered, by strategy and outcome (held, replayed, refused, failed)",
    ["strategy", "outcome"],
)
HOLD_LATENCY = Histogram(
    "retailsync_hold_seconds",
    "Time from a hold request to its durable answer, by strategy",
    ["strategy"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
WASTED = Counter(
    "retailsync_hold_wasted_attempts_total",
    "Attempts rolled back and retried (a version changed, a deadlock, a racing key)",
    ["strategy"],
)
BATCH_SIZE = Histogram(
    "retailsync_hold_batch_size",
    "Holds written per group-commit transaction, by strategy",
    ["strategy"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
EXPIRED = Counter("retailsync_holds_expired_total", "Holds released because their TTL ran out")
EXPIRY_DELAY = Histogram(
    "retailsync_hold_expiry_delay_seconds",
    "From a hold's expiry time to the moment its stock was given back",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
HOT_SKUS = Gauge(
    "retailsync_hot_skus", "Skus whose request rate makes them hot", multiprocess_mode="livesum"
)
STRATEGY_SWITCHES = Counter(
    "retailsync_strategy_switches_total",
    "Times the auto policy moved a sku from one path to another",
    ["to"],
)
ESCROW_UNITS = Counter(
    "retailsync_escrow_units_total",
    "Units moved into escrow allotments (allotted) and back (returned, reclaimed)",
    ["event"],
)


# Labelled children looked up once: the engine counts thousands of holds a second.
@cache
def holds_counted(strategy: str, outcome: str) -> Counter:
    return HOLDS.labels(strategy, outcome)


@cache
def hold_latency(strategy: str) -> Histogram:
    return HOLD_LATENCY.labels(strategy)


@cache
def batch_size(strategy: str) -> Histogram:
    return BATCH_SIZE.labels(strategy)
