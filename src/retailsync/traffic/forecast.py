"""Capacity forecasts: a seasonal model of the recorded traffic, a calendar of events, and the
worker counts that follow from them.

The model works on 15-minute buckets (fine enough to see a lunch peak inside an hour, coarse
enough that Poisson noise is small) of requests/s summed over classes, and is multiplicative:

    rate(t) = (a + b.t) x recent x S(slot of day) x F(weekday) x I(slot of week)

``a + b.t`` is a linear trend; ``S`` the daily shape, ``F`` a factor per weekday, ``I`` what
is left of the weekly pattern (a weekend morning is not a weekday morning), shrunk towards 1
by how many weeks saw that slot, since two weeks of history give only two samples of it.
Trend and profile are fitted by alternating least squares (each step is closed form; four
rounds converge). ``recent`` is actual / fitted over the last day: a shift of level that the
trend line has not caught up with yet. Pure Python: a month of buckets is 2,880 numbers, and
a fit takes milliseconds, so numpy would buy nothing but a dependency.

Events in the calendar are left out of the fit (a past sale would inflate its slot of the
week) and scale the forecast in their window: by their ``multiplier``, or, without one, by
the ratios actual / model seen bucket by bucket in an earlier event of the same name, so the
learned effect keeps the event's shape (the rush at its opening). Buckets with no recorded
minute count as zero: the recorder writes every minute that saw a request.

Times are UTC, so the daily shape of a shop in a zone with daylight saving moves by an hour
twice a year; the recent-level adjustment and the next weeks of history absorb it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from retailsync.errors import ConfigError, RetailsyncError

BUCKET = timedelta(minutes=15)
PER_HOUR = 4
PER_DAY = 96
PER_WEEK = 7 * PER_DAY
_MONDAY = datetime(2001, 1, 1, tzinfo=UTC)  # week slots count from a Monday 00:00 UTC
_SHRINK = 3.0  # weekly slot interaction: weight n / (n + _SHRINK) after n weeks
_FLOOR = 0.05  # of the mean rate: below it a ratio or a percentage error is noise
_ROUNDS = 4


class HistoryTooShort(RetailsyncError):
    """Not enough traffic recorded to fit (or to hold out ``needed`` hours and still fit)."""

    def __init__(self, recorded_hours: float, needed_hours: float, detail: str) -> None:
        self.recorded_hours = recorded_hours
        self.needed_hours = needed_hours
        super().__init__(detail)


def bucket_floor(t: datetime) -> datetime:
    return _MONDAY + (t - _MONDAY) // BUCKET * BUCKET


def hour_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def week_slot(t: datetime) -> int:
    """0 .. 671: the bucket of the week (Monday 00:00 UTC is 0)."""
    return (t - _MONDAY) // BUCKET % PER_WEEK


@dataclass(frozen=True, slots=True)
class Series:
    """Requests/s per bucket from ``start``, contiguous."""

    start: datetime
    rps: tuple[float, ...]

    @classmethod
    def from_minutes(cls, totals: Iterable[tuple[datetime, int]], until: datetime) -> Series:
        """Buckets from the first complete one after the first recorded minute to the last
        one that ends by ``until``."""
        counts = list(totals)
        if not counts:
            return cls(bucket_floor(until), ())
        first = min(minute for minute, _ in counts)
        start = bucket_floor(first)
        start = start if start == first else start + BUCKET
        n = max(0, (bucket_floor(until) - start) // BUCKET)
        sums = [0] * n
        for minute, requests in counts:
            i = (minute - start) // BUCKET
            if 0 <= i < n:
                sums[i] += requests
        return cls(start, tuple(s / BUCKET.total_seconds() for s in sums))

    @property
    def end(self) -> datetime:
        return self.start + len(self.rps) * BUCKET

    @property
    def hours(self) -> float:
        return len(self.rps) / PER_HOUR

    def index(self, t: datetime) -> int:
        return (t - self.start) // BUCKET

    def until(self, t: datetime) -> Series:
        return Series(self.start, self.rps[: max(0, self.index(t))])


@dataclass(frozen=True, slots=True)
class Event:
    """A scheduled event; ``multiplier`` None: learned from an earlier one of the same name."""

    name: str
    start: datetime
    end: datetime
    multiplier: float | None = None
    line: int | None = None  # in the calendar file, for error messages

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True, slots=True)
class SeasonalModel:
    """The fitted model (see the module's docstring); :meth:`baseline` is without events."""

    origin: datetime
    intercept: float  # rps at the origin
    slope: float  # rps per bucket
    recent: float
    profile: tuple[float, ...]  # by week slot

    def baseline(self, t: datetime) -> float:
        level = max(0.0, self.intercept + self.slope * ((t - self.origin) / BUCKET))
        return level * self.recent * self.profile[week_slot(t)]

    @property
    def trend_per_day(self) -> float:
        return self.slope * PER_DAY


def _event_mask(series: Series, events: Sequence[Event]) -> list[bool]:
    used = [True] * len(series.rps)
    for event in events:
        first = max(0, series.index(bucket_floor(event.start)))
        last = min(len(used), series.index(event.end - timedelta(microseconds=1)) + 1)
        for i in range(first, last):
            used[i] = False
    return used


def fit(series: Series, events: Sequence[Event] = ()) -> SeasonalModel:
    """Fit on ``series``, leaving the windows of ``events`` out."""
    y = series.rps
    used = _event_mask(series, events)
    idx = [i for i, ok in enumerate(used) if ok]
    if len(idx) < PER_DAY:
        raise HistoryTooShort(len(idx) / PER_HOUR, 24, "fewer than 24 hours outside events")
    base = week_slot(series.start)
    slots = [(base + i) % PER_WEEK for i in range(len(y))]
    intercept, slope = sum(y[i] for i in idx) / len(idx), 0.0
    profile = [1.0] * PER_WEEK
    for _ in range(_ROUNDS):
        trend = [max(intercept + slope * i, 1e-9) for i in range(len(y))]
        profile = _profile(y, trend, slots, idx)
        intercept, slope = _trend(y, profile, slots, idx)
    fitted = [max(0.0, intercept + slope * i) * profile[slots[i]] for i in range(len(y))]
    last_day = idx[-PER_DAY:]
    expected = sum(fitted[i] for i in last_day)
    recent = sum(y[i] for i in last_day) / expected if expected > 0 else 1.0
    return SeasonalModel(series.start, intercept, slope, recent, tuple(profile))


def _profile(
    y: Sequence[float], trend: Sequence[float], slots: Sequence[int], idx: Sequence[int]
) -> list[float]:
    """S x F x I by week slot, from the ratios y / trend (ratios of sums: robust at night)."""
    ratio = {i: y[i] / trend[i] for i in idx}
    day_sum, day_n = [0.0] * PER_DAY, [0] * PER_DAY
    for i in idx:
        day_sum[slots[i] % PER_DAY] += ratio[i]
        day_n[slots[i] % PER_DAY] += 1
    seen = [day_sum[s] / day_n[s] for s in range(PER_DAY) if day_n[s]]
    fill = sum(seen) / len(seen)
    shape = [day_sum[s] / day_n[s] if day_n[s] else fill for s in range(PER_DAY)]
    shape = _normalised(shape)
    got, want = [0.0] * 7, [0.0] * 7
    for i in idx:
        got[slots[i] // PER_DAY] += ratio[i]
        want[slots[i] // PER_DAY] += shape[slots[i] % PER_DAY]
    present = [d for d in range(7) if want[d] > 0]
    weekday = [got[d] / want[d] if want[d] > 0 else 1.0 for d in range(7)]
    mean_present = sum(weekday[d] for d in present) / len(present)
    weekday = [w / mean_present if mean_present > 0 else 1.0 for w in weekday]
    factored = [shape[w % PER_DAY] * weekday[w // PER_DAY] for w in range(PER_WEEK)]
    w_got, w_want, w_n = [0.0] * PER_WEEK, [0.0] * PER_WEEK, [0] * PER_WEEK
    for i in idx:
        w_got[slots[i]] += ratio[i]
        w_want[slots[i]] += factored[slots[i]]
        w_n[slots[i]] += 1
    profile = []
    for w in range(PER_WEEK):
        near = ((w - 1) % PER_WEEK, w, (w + 1) % PER_WEEK)  # 45 minutes: less noise
        want_near = sum(w_want[v] for v in near)
        interaction = sum(w_got[v] for v in near) / want_near if want_near > 0 else 1.0
        shrunk = 1 + (interaction - 1) * w_n[w] / (w_n[w] + _SHRINK)
        profile.append(factored[w] * shrunk)
    return profile


def _normalised(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    return [v / mean for v in values] if mean > 0 else [1.0] * len(values)


def _trend(
    y: Sequence[float], profile: Sequence[float], slots: Sequence[int], idx: Sequence[int]
) -> tuple[float, float]:
    """Least squares of y ~ (a + b.i) x profile: the normal equations of two unknowns."""
    spp = sipp = siipp = syp = siyp = 0.0
    for i in idx:
        p = profile[slots[i]]
        pp = p * p
        spp += pp
        sipp += i * pp
        siipp += i * i * pp
        syp += y[i] * p
        siyp += i * y[i] * p
    if spp <= 0:
        return 0.0, 0.0
    det = spp * siipp - sipp * sipp
    if det <= 1e-9 * spp * siipp:
        return syp / spp, 0.0
    return (syp * siipp - siyp * sipp) / det, (spp * siyp - sipp * syp) / det


@dataclass(frozen=True, slots=True)
class EventEffect:
    """How an event scales the forecast: ``ratios[k]`` for its k-th bucket (the mean past
    the ones learned); one ratio when the calendar gave the multiplier."""

    event: Event
    ratios: tuple[float, ...]
    source: Literal["calendar", "learned"]

    @property
    def multiplier(self) -> float:
        return sum(self.ratios) / len(self.ratios)

    def at(self, t: datetime) -> float:
        k = (t - bucket_floor(self.event.start)) // BUCKET
        return self.ratios[k] if k < len(self.ratios) else self.multiplier


def resolve_effects(
    model: SeasonalModel,
    history: Series,
    events: Sequence[Event],
    start: datetime,
    end: datetime,
) -> tuple[list[EventEffect], list[Event]]:
    """The effects of the events overlapping [start, end), and the events whose effect is
    unknown (no multiplier, and no earlier event of that name in ``history``)."""
    floor = _FLOOR * sum(history.rps) / max(1, len(history.rps))
    effects, unknown = [], []
    for event in events:
        if not event.overlaps(start, end):
            continue
        if event.multiplier is not None:
            effects.append(EventEffect(event, (event.multiplier,), "calendar"))
            continue
        by_k: dict[int, list[float]] = {}
        for past in events:
            if past.name != event.name or past.start >= event.start:
                continue
            t, k = bucket_floor(past.start), 0
            while t < past.end and t < history.end:
                if t >= history.start:
                    ratio = history.rps[history.index(t)] / max(model.baseline(t), floor)
                    by_k.setdefault(k, []).append(ratio)
                t, k = t + BUCKET, k + 1
        if by_k:
            means = {k: sum(r) / len(r) for k, r in by_k.items()}
            overall = sum(means.values()) / len(means)
            ratios = tuple(means.get(k, overall) for k in range(max(means) + 1))
            effects.append(EventEffect(event, ratios, "learned"))
        else:
            unknown.append(event)
    return effects, unknown


def predict(
    model: SeasonalModel, effects: Sequence[EventEffect], start: datetime, buckets: int
) -> list[float]:
    """Requests/s for ``buckets`` buckets from ``start``; overlapping events: the largest."""
    out = []
    for j in range(buckets):
        t = start + j * BUCKET
        factors = [e.at(t) for e in effects if e.event.overlaps(t, t + BUCKET)]
        out.append(model.baseline(t) * (max(factors) if factors else 1.0))
    return out


def workers_for(rps: float, *, headroom: float, per_worker_rps: float) -> int:
    """ceil(rps x headroom / per-worker capacity), at least one; a hair of tolerance so that
    an exact multiple is not rounded up by floating point."""
    return max(1, math.ceil(rps * headroom / per_worker_rps - 1e-9))


def ready_ahead(rps: Sequence[float], lead_minutes: float, buckets: int) -> list[float]:
    """For each of the first ``buckets`` buckets, the largest rate from it to ``lead_minutes``
    after its end: capacity sized on that is in place ``lead_minutes`` before any rise.
    ``rps`` must extend ``ceil(lead / 15 min)`` buckets past ``buckets``."""
    ahead = math.ceil(lead_minutes * 60 / BUCKET.total_seconds() - 1e-9)
    if len(rps) < buckets + ahead:
        raise ValueError("rps must cover the look-ahead")
    return [max(rps[b : b + ahead + 1]) for b in range(buckets)]


@dataclass(frozen=True, slots=True)
class Accuracy:
    """Error of a forecast of the last ``holdout_hours`` from the history before them, on
    hourly means. Hours whose actual rate is under 5 % of the held-out mean are skipped (their
    percentage error measures noise, not capacity), and so are hours of an event whose size
    could not be known then (no multiplier, no earlier occurrence)."""

    mape: float | None  # percent; None: no hour could be scored
    hours: int
    skipped: int
    holdout_hours: int


def holdout_accuracy(series: Series, events: Sequence[Event], holdout_hours: int) -> Accuracy:
    cut = hour_floor(series.end) - timedelta(hours=holdout_hours)
    fitted_on = series.until(cut)
    if fitted_on.hours < 48:
        raise HistoryTooShort(
            series.hours,
            holdout_hours + 48,
            f"{series.hours:.0f} hours of traffic recorded: holding out {holdout_hours} "
            f"(--holdout-hours) needs 48 more before them to fit on",
        )
    model = fit(fitted_on, events)
    end = cut + timedelta(hours=holdout_hours)
    effects, unknown = resolve_effects(model, fitted_on, events, cut, end)
    predicted = predict(model, effects, cut, holdout_hours * PER_HOUR)
    first = series.index(cut)
    actual = series.rps[first : first + holdout_hours * PER_HOUR]
    hourly = [
        (sum(actual[h : h + PER_HOUR]) / PER_HOUR, sum(predicted[h : h + PER_HOUR]) / PER_HOUR)
        for h in range(0, len(actual), PER_HOUR)
    ]
    floor = _FLOOR * sum(a for a, _ in hourly) / len(hourly)
    errors = []
    for h, (real, guess) in enumerate(hourly):
        start = cut + timedelta(hours=h)
        blind = any(e.overlaps(start, start + timedelta(hours=1)) for e in unknown)
        if real > 0 and real >= floor and not blind:
            errors.append(abs(real - guess) / real)
    mape = 100 * sum(errors) / len(errors) if errors else None
    return Accuracy(mape, len(errors), len(hourly) - len(errors), holdout_hours)


@dataclass(frozen=True, slots=True)
class HourPlan:
    start: datetime
    rps: float  # mean over the hour
    peak_rps: float  # its busiest 15 minutes
    workers: int  # for the hour and the lead time after it


@dataclass(frozen=True, slots=True)
class EventPlan:
    name: str
    start: datetime
    end: datetime
    multiplier: float
    source: str
    peak_rps: float
    workers: int
    scale_up_by: datetime


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    start: datetime
    hours: list[HourPlan]
    events: list[EventPlan]
    peak: tuple[datetime, float, int]  # the busiest bucket: start, rps, workers
    accuracy: Accuracy | None
    model: SeasonalModel


def plan_capacity(
    series: Series,
    events: Sequence[Event],
    *,
    now: datetime,
    hours: int,
    per_worker_rps: float,
    headroom: float,
    lead_minutes: float,
    holdout_hours: int,
) -> CapacityPlan:
    """Forecast ``hours`` hours from the start of the current one, and the workers for each,
    ready ``lead_minutes`` early. Events of unknown size in that window are an error."""
    if series.hours < 24:
        raise HistoryTooShort(
            series.hours, 24, f"{series.hours:.1f} hours of traffic recorded; need at least 24"
        )
    accuracy = holdout_accuracy(series, events, holdout_hours) if holdout_hours else None
    model = fit(series, events)
    start = hour_floor(now)
    ahead = math.ceil(lead_minutes * 60 / BUCKET.total_seconds() - 1e-9)
    buckets = hours * PER_HOUR
    effects, unknown = resolve_effects(
        model, series, events, start, start + (buckets + ahead) * BUCKET
    )
    if unknown:
        event = unknown[0]
        where = f"line {event.line}" if event.line else f"event {event.name!r}"
        raise ConfigError(
            "--events",
            event.name,
            f"{where}: no multiplier, and no earlier event of that name in the recorded "
            "history to learn one from",
        )
    rps = predict(model, effects, start, buckets + ahead)
    need = ready_ahead(rps, lead_minutes, buckets)

    def workers(rate: float) -> int:
        return workers_for(rate, headroom=headroom, per_worker_rps=per_worker_rps)

    end = start + buckets * BUCKET
    event_plans = []
    for effect in effects:
        event = effect.event
        inside = [
            rps[j]
            for j in range(buckets + ahead)
            if event.overlaps(start + j * BUCKET, start + (j + 1) * BUCKET)
        ]
        if not event.overlaps(start, end) or not inside:
            continue
        event_plans.append(
            EventPlan(
                event.name,
                event.start,
                event.end,
                effect.multiplier,
                effect.source,
                max(inside),
                workers(max(inside)),
                event.start - timedelta(minutes=lead_minutes),
            )
        )
    # An event's peak is ready by its scale-up time and held to its end: one step up,
    # not a staircase of the rises inside it.
    for planned in event_plans:
        for j in range(buckets):
            at = start + j * BUCKET
            if at + BUCKET > planned.scale_up_by and at < planned.end:
                need[j] = max(need[j], planned.peak_rps)
    hour_plans = []
    for h in range(hours):
        span = slice(h * PER_HOUR, (h + 1) * PER_HOUR)
        hour_plans.append(
            HourPlan(
                start + timedelta(hours=h),
                sum(rps[span]) / PER_HOUR,
                max(rps[span]),
                workers(max(need[span])),
            )
        )
    top = max(range(buckets), key=lambda j: rps[j])
    peak = (start + top * BUCKET, rps[top], workers(rps[top]))
    return CapacityPlan(start, hour_plans, event_plans, peak, accuracy, model)
