"""Tallies add up to exactly what direct Prometheus calls would have recorded."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from retailsync.observe import tally

_BUCKETS = (0.001, 0.01, 0.1, 1.0)
_amounts = st.lists(
    st.one_of(
        st.sampled_from(_BUCKETS),  # on a bound: counted in that bucket, not the next
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    ),
    max_size=60,
)


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("t_seconds", "t", ["route"], buckets=_BUCKETS, registry=direct_registry)
    tallied = Histogram("t_seconds", "t", ["route"], buckets=_BUCKETS, registry=tallied_registry)
    return direct_registry, direct, tallied_registry, tallied


def _samples(registry: CollectorRegistry) -> tuple[list[str], float]:
    """The page's bucket and count lines, and its sum (added in another order: equal to
    rounding), without the ``_created`` times (the two series were made moments apart)."""
    page = generate_latest(registry).decode().splitlines()
    lines = [line for line in page if "_created" not in line and "_sum" not in line]
    return lines, registry.get_sample_value("t_seconds_sum", {"route": "/x"}) or 0.0


@given(_amounts, st.integers(min_value=0, max_value=60))
def test_a_tallied_histogram_writes_the_page_observe_would(
    amounts: list[float], flush_after: int
) -> None:
    direct_registry, direct, tallied_registry, tallied = _histograms()
    series, observed = tally.HistogramTally(tallied.labels("/x")), direct.labels("/x")
    for index, amount in enumerate(amounts):
        observed.observe(amount)
        series.observe(amount)
        if index == flush_after:  # a flush part way loses and doubles nothing
            series.flush()
    series.flush()
    series.flush()  # nothing left: adds nothing
    (tallied_lines, tallied_sum), (direct_lines, direct_sum) = (
        _samples(tallied_registry),
        _samples(direct_registry),
    )
    assert tallied_lines == direct_lines
    assert math.isclose(tallied_sum, direct_sum, rel_tol=1e-9, abs_tol=1e-12)


@given(st.lists(st.integers(min_value=0, max_value=5), max_size=20))
def test_a_tallied_counter_adds_every_increment_once(batches: list[int]) -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["outcome"], registry=registry)
    series = tally.CounterTally(counter.labels("ok"))
    for batch in batches:
        for _ in range(batch):
            series.inc()
        series.flush()
    assert registry.get_sample_value("c_total", {"outcome": "ok"}) == sum(batches)


def test_one_tally_per_series_and_flush_reaches_every_one() -> None:
    registry = CollectorRegistry()
    counter = Counter("d", "d", ["outcome"], registry=registry)
    first = tally.counter(counter.labels("ok"))
    assert tally.counter(counter.labels("ok")) is first
    first.inc()
    tally.counter(counter.labels("ok")).inc()
    assert registry.get_sample_value("d_total", {"outcome": "ok"}) == 0.0  # not yet flushed
    tally.flush()
    assert registry.get_sample_value("d_total", {"outcome": "ok"}) == 2.0
