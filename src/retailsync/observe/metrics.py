"""Prometheus metrics. With several worker processes, prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by ``retailsync serve``) aggregates every worker's samples."""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retailsync.models import Order
from retailsync.observe import tally

HTTP_REQUESTS = Counter(
    "retailsync_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "retailsync_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ORDERS = Counter("retailsync_orders_total", "Orders placed, by channel", ["channel"])
UNITS_SOLD = Counter(
    "retailsync_units_sold_total", "Units in placed orders, by channel", ["channel"]
)
REJECTIONS = Counter(
    "retailsync_rejections_total",
    "Requests refused by the domain or by validation, by problem type",
    ["problem"],
)
CONFLICTS = Counter(
    "retailsync_conflicts_total",
    "Conflicts met by merge policies, by kind and resolution tier",
    ["kind", "tier"],
)
OFFLINE_UNITS = Counter(
    "retailsync_offline_units_total",
    "Store units allotted to offline replicas, sold by them, and given back",
    ["event"],
)
CONFLICT_RESOLUTIONS = Counter(
    "retailsync_conflict_resolutions_total",
    "Queued or manual conflicts closed, by who decided (rule name or admin)",
    ["by"],
)


def record_order(channel: str, order: Order) -> None:
    ORDERS.labels(channel).inc()
    UNITS_SOLD.labels(channel).inc(sum(line.quantity for line in order.lines))


def exposition() -> tuple[bytes, str]:
    """The metrics page, aggregated over worker processes when there are several."""
    tally.flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class HttpMetrics:
    """Plain ASGI middleware: counts and times every request by its route template (not its
    raw path, so label cardinality stays bounded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            observe_request(route, scope["method"], started, status)


_REQUEST_SERIES: dict[tuple[str, str, int], tuple[tally.CounterTally, tally.HistogramTally]] = {}


def observe_request(route: str, method: str, started: float, status: int = 200) -> None:
    """Count and time one answered request. The labelled series are looked up once (a
    ``labels()`` call costs more than the cached GET it would count) and tallied."""
    series = _REQUEST_SERIES.get((route, method, status))
    if series is None:
        series = (
            tally.counter(HTTP_REQUESTS.labels(route, method, str(status))),
            tally.histogram(HTTP_LATENCY.labels(route)),
        )
        if len(_REQUEST_SERIES) < 10_000:  # templates x methods x statuses: bounded anyway
            _REQUEST_SERIES[(route, method, status)] = series
    series[0].inc()
    series[1].observe(time.perf_counter() - started)
