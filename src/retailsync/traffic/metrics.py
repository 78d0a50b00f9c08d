"""Prometheus metrics of admission (the waiting room, rate limits and breakers keep theirs
beside their code)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTCOMES = ("admitted", "queued", "shed")
ADMISSIONS = Counter(
    "retailsync_admission_requests_total",
    "Requests by criticality class and outcome (queued ones are then admitted or shed too)",
    ["criticality", "outcome"],
)
CONCURRENCY_LIMIT = Gauge(
    "retailsync_admission_concurrency_limit",
    "Each worker's adaptive concurrency limit (summed over workers)",
    multiprocess_mode="livesum",
)
IN_FLIGHT = Gauge(
    "retailsync_admission_in_flight",
    "Requests admitted and not yet answered (summed over workers)",
    multiprocess_mode="livesum",
)
