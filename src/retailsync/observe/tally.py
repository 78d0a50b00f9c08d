"""Counts and timings of the hot paths, kept in plain numbers and added to Prometheus in bulk.

Under ``retailsync serve`` each Prometheus increment takes a lock and writes a memory-mapped
file (multiprocess mode): about 1.5 us, and a cached GET counted five series (request,
latency sum and bucket, admission, cache tier), a tenth of the whole answer's time in
process. A tally adds to a Python number instead; ``flush`` hands the sums to the series, once
a second (the app's chore) and before this process writes a metrics page. So a scrape sees
another worker's counts at most a second late, and a worker killed loses at most its last
second of counts.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

FLUSH_INTERVAL_S = 1.0


class CounterTally:
    """One labelled counter series, incremented in process."""

    __slots__ = ("_series", "count")

    def __init__(self, series: Counter) -> None:
        self._series = series
        self.count = 0

    def inc(self) -> None:
        self.count += 1

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self._series.inc(count)


class HistogramTally:
    """One labelled histogram series, observed in process.

    The flush adds to the series' own bucket and sum values (prometheus-client's ``_buckets``
    and ``_sum``: ``observe`` has no bulk form); a test checks the page matches what
    ``observe`` would have written, so a library change that moves them shows at once.
    """

    __slots__ = ("_bounds", "_counts", "_series", "_sum")

    def __init__(self, series: Histogram) -> None:
        self._series = series
        self._bounds: list[float] = list(series._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        # ``observe`` counts a value in the first bucket whose bound is >= it, as bisect_left.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        if not any(counts):
            return
        total, self._sum = self._sum, 0.0
        self._series._sum.inc(total)
        for bucket, count in zip(self._series._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


_TALLIES: dict[int, CounterTally | HistogramTally] = {}
_T = TypeVar("_T", CounterTally, HistogramTally)


def counter(series: Counter) -> CounterTally:
    """The tally of a labelled counter series (one per series, however often asked)."""
    return _tally_of(series, CounterTally)


def histogram(series: Histogram) -> HistogramTally:
    """The tally of a labelled histogram series."""
    return _tally_of(series, HistogramTally)


def _tally_of(series: Any, kind: type[_T]) -> _T:
    tally = _TALLIES.get(id(series))
    if tally is None:
        tally = _TALLIES[id(series)] = kind(series)
    assert isinstance(tally, kind)
    return tally


def flush() -> None:
    """Add every tally's counts to its series."""
    for tally in list(_TALLIES.values()):
        tally.flush()
