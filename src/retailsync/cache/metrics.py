"""The caches' Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from retailsync.observe import tally

READS = Counter(
    "retailsync_cache_reads_total",
    "Cached reads by domain and where they were answered (l1, l2, load, stale, bypass)",
    ["domain", "tier"],
)
FRESHNESS = Histogram(
    "retailsync_cache_freshness_seconds",
    "Commit of a source transaction to its change applied, per stage (l1 of each worker, l2,"
    " edge purge)",
    ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INVALIDATION_LIVE = Gauge(
    "retailsync_cache_invalidation_live",
    "1 while this worker's L1 is kept fresh by the change stream; 0: reading through",
    multiprocess_mode="min",
)
REFUSED_PUTS = Counter(
    "retailsync_cache_refused_puts_total",
    "Loaded values not cached because a change they may have missed was seen, by domain",
    ["domain"],
)

_READ_SERIES: dict[tuple[str, str], tally.CounterTally] = {}


def count_read(domain: str, tier: str) -> None:
    """READS, with the labelled series looked up once (domains and tiers are few), tallied."""
    series = _READ_SERIES.get((domain, tier))
    if series is None:
        series = _READ_SERIES[(domain, tier)] = tally.counter(READS.labels(domain, tier))
    series.inc()
