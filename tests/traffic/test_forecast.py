"""The capacity forecast: the model's error on synthetic seasonal traffic, events in the
calendar (given and learned), worker counts ready before a rise, the calendar's errors, and
`retailsync capacity` against the session's database."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from retailsync.cli import app
from retailsync.db.database import Database
from retailsync.errors import ConfigError
from retailsync.traffic.capacity_cli import parse_calendar
from retailsync.traffic.forecast import (
    BUCKET,
    PER_DAY,
    Event,
    HistoryTooShort,
    Series,
    fit,
    holdout_accuracy,
    hour_floor,
    plan_capacity,
    predict,
    ready_ahead,
    resolve_effects,
    workers_for,
)
from retailsync.traffic.recorder import (
    WEEKDAY_FACTORS,
    SyntheticHistory,
    daily_shape,
    synthetic_history,
    write_minutes,
)
from tests.processes import cli

runner = CliRunner()

# Holdout days that fall on different weekdays (a Saturday, a Sunday, a Tuesday).
ENDS = [
    (1, datetime(2025, 3, 9, 0, 0, tzinfo=UTC)),
    (2, datetime(2025, 3, 10, 0, 0, tzinfo=UTC)),
    (3, datetime(2025, 3, 12, 6, 0, tzinfo=UTC)),
]
# The generator's hour-to-hour noise has a stationary deviation of 5 % (AR(1), phi 0.6,
# innovations 4 %), so even the true rate misses an hour by E|e| = 0.8 x 5 % = 4 % on
# average. 10 % leaves room for fitting 672 weekly slots from 13 days; dropping the weekly
# factor (a Saturday is 1.35 x a Monday) or the trend (1 %/day) costs more than that.
MAPE_BOUND = 10.0


def _history(seed: int, end: datetime, days: int = 14) -> tuple[SyntheticHistory, Series]:
    history = synthetic_history(days=days, end=end, seed=seed)
    return history, Series.from_minutes([(m, r) for m, r, _ in history.totals], end)


def _sale(history: SyntheticHistory) -> Event:
    return Event(history.sale.name, history.sale.start, history.sale.end)


@dataclass(frozen=True, repr=False)  # short in Hypothesis' reports of a failing example
class Fortnight:
    history: SyntheticHistory
    series: Series

    def __iter__(self) -> Iterator[Any]:
        return iter((self.history, self.series))


@pytest.fixture(scope="module")
def fortnight() -> Fortnight:
    return Fortnight(*_history(*ENDS[0]))


def _bucket_series(seed: int, days: int, start: datetime) -> Series:
    """A cheap seasonal series straight at bucket resolution, for property tests."""
    rng = random.Random(seed)
    rps = []
    for i in range(days * PER_DAY):
        t = start + i * BUCKET
        level = 10 * (1 + 0.02 * i / PER_DAY)
        shape = daily_shape(t.hour + t.minute / 60) * WEEKDAY_FACTORS[t.weekday()]
        rps.append(level * shape * math.exp(rng.gauss(0, 0.05)))
    return Series(start, tuple(rps))


class TestModel:
    """The model's error on held-out synthetic traffic is small, and can be large."""

    @pytest.mark.parametrize(("seed", "end"), ENDS)
    def test_held_out_day_is_within_the_bound(self, seed: int, end: datetime) -> None:
        history, series = _history(seed, end)
        accuracy = holdout_accuracy(series, [_sale(history)], 24)
        assert accuracy.hours + accuracy.skipped == 24
        assert accuracy.hours >= 20  # the quiet night hours are not all skipped
        assert accuracy.mape is not None
        assert accuracy.mape < MAPE_BOUND

    def test_beats_the_same_hour_last_week(self) -> None:
        ours, naive = [], []
        for seed, end in ENDS:
            history, series = _history(seed, end)
            accuracy = holdout_accuracy(series, [_sale(history)], 24)
            assert accuracy.mape is not None
            ours.append(accuracy.mape)
            first = series.index(hour_floor(series.end) - timedelta(hours=24))
            errors = []
            for h in range(24):
                now = sum(series.rps[first + 4 * h : first + 4 * h + 4])
                week_ago = sum(series.rps[first + 4 * h - 672 : first + 4 * h - 668])
                errors.append(abs(now - week_ago) / now)
            naive.append(100 * sum(errors) / 24)
        assert sum(ours) < sum(naive)

    @pytest.mark.parametrize(("seed", "end"), ENDS[1:])
    def test_a_recent_shift_of_level_is_followed(self, seed: int, end: datetime) -> None:
        """Traffic 1.5x from two days before the end (a campaign): the last day of the fit
        sees it, and the recent-level adjustment carries it into the forecast."""
        _, series = _history(seed, end)
        shift_from = len(series.rps) - 2 * PER_DAY
        shifted = Series(
            series.start,
            tuple(v * (1.5 if i >= shift_from else 1) for i, v in enumerate(series.rps)),
        )
        accuracy = holdout_accuracy(shifted, [], 24)
        assert accuracy.mape is not None
        assert accuracy.mape < 14  # trend and profile alone leave it above 20 %

    def test_a_wrong_forecast_shows_in_the_error(self) -> None:
        history, series = _history(*ENDS[0])
        cut = series.index(hour_floor(series.end) - timedelta(hours=24))
        doubled = Series(
            series.start, tuple(v * (2 if i >= cut else 1) for i, v in enumerate(series.rps))
        )
        accuracy = holdout_accuracy(doubled, [_sale(history)], 24)
        assert accuracy.mape is not None
        assert 40 < accuracy.mape < 60  # forecast about half the actual

    @settings(max_examples=15, deadline=None)
    @given(
        seed=st.integers(0, 10_000),
        scale=st.floats(0.01, 1000),
        days=st.integers(2, 15),
    )
    def test_scaling_the_traffic_scales_the_forecast(
        self, seed: int, scale: float, days: int
    ) -> None:
        start = datetime(2025, 1, 6, tzinfo=UTC) + timedelta(minutes=15 * (seed % 672))
        series = _bucket_series(seed, days, start)
        scaled = Series(series.start, tuple(v * scale for v in series.rps))
        then = series.end + timedelta(hours=seed % 48)
        one = predict(fit(series), [], then, 8)
        other = predict(fit(scaled), [], then, 8)
        assert other == pytest.approx([v * scale for v in one], rel=1e-6)

    def test_less_than_a_day_is_refused(self) -> None:
        series = _bucket_series(1, 2, datetime(2025, 1, 6, tzinfo=UTC))
        short = series.until(series.start + timedelta(hours=20))
        with pytest.raises(HistoryTooShort, match="24"):
            plan_capacity(
                short,
                [],
                now=short.end,
                hours=4,
                per_worker_rps=5,
                headroom=1.3,
                lead_minutes=15,
                holdout_hours=0,
            )
        with pytest.raises(HistoryTooShort, match="--holdout-hours"):
            holdout_accuracy(series, [], 24)


class TestEvents:
    """A scheduled event raises the forecast in its window, by its multiplier or learned."""

    def test_multiplier_scales_only_the_window(self, fortnight: Fortnight):
        history, series = fortnight
        model = fit(series, [_sale(history)])
        start = series.end
        sale = Event("drop", start + timedelta(hours=5), start + timedelta(hours=7), 3.0)
        effects, unknown = resolve_effects(model, series, [sale], start, start + timedelta(1))
        assert unknown == []
        plain = predict(model, [], start, 48)
        boosted = predict(model, effects, start, 48)
        for j in range(48):
            inside = 20 <= j < 28
            assert boosted[j] == pytest.approx(plain[j] * (3.0 if inside else 1.0))

    def test_learned_from_an_earlier_event_of_the_same_name(self, fortnight: Fortnight) -> None:
        history, series = fortnight
        past = _sale(history)
        model = fit(series, [past])
        start = series.end
        upcoming = Event(past.name, start + timedelta(hours=10), start + timedelta(hours=12))
        effects, unknown = resolve_effects(
            model, series, [past, upcoming], start, start + 2 * 24 * BUCKET
        )
        assert unknown == []
        (effect,) = effects
        assert effect.source == "learned"
        assert len(effect.ratios) == 8
        # The generator's sale: 4x at the opening decaying towards 2x; the shape is kept.
        assert 3.0 < effect.ratios[0] < 4.5
        assert 1.8 < effect.ratios[-1] < 2.8
        assert 2.3 < effect.multiplier < 3.4
        with_event = predict(model, effects, upcoming.start, 8)
        without = predict(model, [], upcoming.start, 8)
        assert all(a > 1.7 * b for a, b in zip(with_event, without, strict=True))

    def test_a_past_event_is_left_out_of_the_fit(self, fortnight: Fortnight) -> None:
        history, series = fortnight
        next_week = history.sale.start + timedelta(days=7)
        masked = fit(series, [_sale(history)]).baseline(next_week)
        unmasked = fit(series).baseline(next_week)
        assert unmasked > 1.3 * masked  # the sale leaks into its slot of the week

    def test_an_event_of_unknown_size_is_an_error(self, fortnight: Fortnight) -> None:
        _, series = fortnight
        start = series.end
        event = Event("launch", start + timedelta(hours=2), start + timedelta(hours=3), line=7)
        with pytest.raises(ConfigError, match="line 7: no multiplier") as caught:
            plan_capacity(
                series,
                [event],
                now=start,
                hours=6,
                per_worker_rps=5,
                headroom=1.3,
                lead_minutes=15,
                holdout_hours=0,
            )
        assert caught.value.setting == "--events"


class TestWorkers:
    """Worker counts cover the peak with headroom, and are up lead-minutes before a rise."""

    @given(
        rps=st.floats(0, 1e6),
        headroom=st.floats(1, 10),
        per_worker=st.floats(0.1, 1e4),
    )
    def test_workers_are_the_fewest_that_cover_the_peak(
        self, rps: float, headroom: float, per_worker: float
    ) -> None:
        workers = workers_for(rps, headroom=headroom, per_worker_rps=per_worker)
        need = rps * headroom
        assert workers >= 1
        assert workers * per_worker >= need * (1 - 1e-9)
        assert workers == 1 or (workers - 1) * per_worker < need

    @given(
        rps=st.lists(st.floats(0, 1e4), min_size=1, max_size=60),
        lead=st.integers(0, 180),
    )
    def test_ready_ahead_is_the_max_over_the_lead(self, rps: list[float], lead: int) -> None:
        ahead = math.ceil(lead / 15)
        buckets = max(1, len(rps) - ahead)
        padded = rps + [0.0] * max(0, buckets + ahead - len(rps))
        need = ready_ahead(padded, lead, buckets)
        for b in range(buckets):
            # every bucket that starts before this one's end + lead minutes
            window = [padded[j] for j in range(b, len(padded)) if 15 * (j - b) < 15 + lead]
            assert need[b] == max(window)

    @settings(max_examples=20, deadline=None)
    @given(offset=st.integers(30, 20 * 60), lead=st.integers(0, 180))
    def test_workers_are_ready_before_the_event(
        self, fortnight: Fortnight, offset: int, lead: int
    ) -> None:
        history, series = fortnight
        now = series.end + timedelta(minutes=7)
        start = hour_floor(now) + timedelta(minutes=offset)
        event = Event("drop", start, start + timedelta(hours=1), 50.0)
        plan = plan_capacity(
            series,
            [_sale(history), event],
            now=now,
            hours=24,
            per_worker_rps=4,
            headroom=1.3,
            lead_minutes=lead,
            holdout_hours=0,
        )
        (planned,) = plan.events
        assert planned.scale_up_by == start - timedelta(minutes=lead)
        assert planned.workers == workers_for(planned.peak_rps, headroom=1.3, per_worker_rps=4)
        ready = [h for h in plan.hours if h.start + timedelta(hours=1) > planned.scale_up_by]
        ready = [h for h in ready if h.start < planned.end]
        assert ready
        assert all(h.workers >= planned.workers for h in ready)
        # Not vacuous: hours that end a bucket or more before it still run fewer workers.
        margin = timedelta(hours=1, minutes=15)
        before = [h for h in plan.hours if h.start + margin <= planned.scale_up_by]
        assert all(h.workers < planned.workers for h in before)


class TestCalendar:
    """The calendar file: TOML events; every mistake names its line and field."""

    def test_events_are_read(self) -> None:
        text = """
# Black Friday, planned
[[event]]
name = "black-friday"
start = 2025-11-28T06:00:00+01:00
end = 2025-11-28T23:00:00Z
multiplier = 4

[[event]]
name = "flash-sale"
start = 2025-11-30T18:00:00Z
end = 2025-11-30T20:00:00Z
"""
        first, second = parse_calendar(text)
        assert first.start == datetime(2025, 11, 28, 5, 0, tzinfo=UTC)
        assert (first.multiplier, first.line) == (4.0, 3)
        assert (second.name, second.multiplier, second.line) == ("flash-sale", None, 9)

    @pytest.mark.parametrize(
        ("text", "named"),
        [
            ('[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00Z\nend = nope\n', "line 4"),
            ('[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00Z', "field 'end'"),
            (
                '\n[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00\nend = 2025-01-02T00:00:00Z',
                "line 2: field 'start': needs a UTC offset",
            ),
            (
                '[[event]]\nname = "x"\nstart = 2025-01-02T00:00:00Z\nend = 2025-01-01T00:00:00Z',
                "field 'end': must be after start",
            ),
            (
                '[[event]]\nname = ""\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z',
                "field 'name'",
            ),
            (
                '[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z\n'
                "multiplier = 0",
                "field 'multiplier'",
            ),
            (
                '[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z\n'
                'multiplier = "2"',
                "field 'multiplier'",
            ),
            (
                '[[event]]\nname = "x"\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z\n'
                "factor = 2",
                "field 'factor': unknown",
            ),
            ('[[events]]\nname = "x"', "unknown key 'events'"),
            ('event = "x"', "array of tables"),
        ],
    )
    def test_mistakes_name_the_line_and_field(self, text: str, named: str) -> None:
        with pytest.raises(ConfigError, match=named) as caught:
            parse_calendar(text, "sales.toml")
        assert caught.value.setting == "--events"
        assert "sales.toml" in str(caught.value)


@pytest.mark.processes
class TestCommand:
    """`retailsync capacity` refuses bad flags with exit code 2 and forecasts from the table."""

    @pytest.mark.parametrize(
        ("flags", "named"),
        [
            ([], "--per-worker-rps is required"),
            (["--per-worker-rps", "0"], "--per-worker-rps 0: must be a number > 0"),
            (["--per-worker-rps", "nan"], "--per-worker-rps nan"),
            (["--per-worker-rps", "5", "--headroom", "0.8"], "--headroom 0.8"),
            (["--per-worker-rps", "5", "--hours", "0"], "--hours"),
            (["--per-worker-rps", "5", "--lead-minutes", "-5"], "--lead-minutes"),
            (["--per-worker-rps", "5", "--events", "/nonexistent/sales.toml"], "cannot read"),
        ],
    )
    def test_bad_flags(self, database_dsn: str, flags: list[str], named: str) -> None:
        args = ["--db-url", database_dsn, "capacity", "forecast", *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert named in " ".join(result.output.split())

    def test_bad_calendar_names_the_line(self, database_dsn: str, tmp_path: Path) -> None:
        calendar = tmp_path / "sales.toml"
        calendar.write_text(
            '[[event]]\nname = "a"\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z\n\n'
            '[[event]]\nname = "b"\nstart = 2025-01-01T00:00:00Z\nend = 2025-01-02T00:00:00Z\n'
            "multiplier = -1\n"
        )
        args = ["--db-url", database_dsn, "capacity", "forecast", "--per-worker-rps", "5"]
        result = runner.invoke(app, [*args, "--events", str(calendar)])
        assert result.exit_code == 2
        assert "line 6: field 'multiplier'" in " ".join(result.output.split())

    async def test_no_history_says_so(self, db: Database, database_dsn: str) -> None:
        result = await asyncio.to_thread(
            cli, "--db-url", database_dsn, "capacity", "forecast", "--per-worker-rps", "5"
        )
        assert result.returncode == 2, result.stderr
        assert "no traffic recorded" in " ".join(result.stderr.split())

    async def test_forecast_json_on_a_recorded_history(
        self, db: Database, database_dsn: str, tmp_path: Path
    ) -> None:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        history = synthetic_history(days=14, end=end, seed=11)
        await write_minutes(db, history.by_class())
        sale = history.sale
        # At the hour of day of the sale before it, at least 3 h ahead, so the hour before it
        # is quieter whatever the wall clock says (a night sale after a busy evening is not:
        # the hour before can need more workers than the sale).
        upcoming = end.replace(hour=18, minute=0)
        while upcoming < end + timedelta(hours=3):
            upcoming += timedelta(days=1)
        calendar = tmp_path / "sales.toml"
        calendar.write_text(
            f'[[event]]\nname = "{sale.name}"\nstart = {sale.start.isoformat()}\n'
            f"end = {sale.end.isoformat()}\n\n"
            f'[[event]]\nname = "{sale.name}"\nstart = {upcoming.isoformat()}\n'
            f"end = {(upcoming + timedelta(hours=2)).isoformat()}\n"
        )
        result = await asyncio.to_thread(
            cli,
            *("--db-url", database_dsn, "capacity", "forecast", "--json"),
            *("--per-worker-rps", "8", "--lead-minutes", "45", "--events", str(calendar)),
            *("--hours", "30"),
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        # The history ends at the wall clock, so its noise differs from run to run: the worst
        # of 40 random ends was 8.9 %. TestModel pins the model's bound on fixed histories.
        assert report["mape"] < 15
        assert report["mape_hours"] >= 20
        assert len(report["hours"]) == 30
        (event,) = report["events"]
        assert event["source"] == "learned"
        assert 2.0 < event["multiplier"] < 3.5
        scale_up_by = datetime.fromisoformat(event["scale_up_by"])
        assert scale_up_by == upcoming - timedelta(minutes=45)
        hours = {datetime.fromisoformat(h["start"]): h for h in report["hours"]}
        ready = hours[hour_floor(scale_up_by)]
        assert ready["workers"] >= event["workers"]
        assert hours[hour_floor(scale_up_by) - timedelta(hours=1)]["workers"] < event["workers"]
        assert report["peak"]["rps"] == max(h["peak_rps"] for h in report["hours"])
        assert report["peak"]["workers"] <= max(h["workers"] for h in report["hours"])

    async def test_record_synthetic(self, db: Database, database_dsn: str, tmp_path: Path) -> None:
        calendar = tmp_path / "sales.toml"
        args = ["--db-url", database_dsn, "capacity", "record-synthetic", "--days", "4"]
        result = await asyncio.to_thread(cli, *args, "--events-out", str(calendar))
        assert result.returncode == 0, result.stderr
        total = await db.fetchval("SELECT sum(requests) FROM traffic_minutes")
        classes = await db.fetchval("SELECT count(DISTINCT class) FROM traffic_minutes")
        minutes = await db.fetchval("SELECT count(DISTINCT minute) FROM traffic_minutes")
        assert (classes, minutes) == (5, 4 * 1440)
        assert total > 4 * 86_400 * 10  # about 20 requests/s on average
        past, upcoming = parse_calendar(calendar.read_text())
        assert past.name == upcoming.name == "flash-sale"
        again = await asyncio.to_thread(cli, *args)
        assert again.returncode == 2
        assert "--replace" in again.stderr
        assert await db.fetchval("SELECT sum(requests) FROM traffic_minutes") == total
        replaced = await asyncio.to_thread(cli, *args, "--seed", "8", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        # The range ends at the current minute: if the clock passed a minute boundary since the
        # first run, the first run's oldest minutes lie before it and stay.
        newest = await db.fetchval("SELECT max(minute) FROM traffic_minutes")
        first = newest - timedelta(days=4, minutes=-1)
        in_range = "SELECT count(*) FROM traffic_minutes WHERE minute >= $1"
        assert await db.fetchval(in_range, first) == 5 * 4 * 1440
        left = "SELECT count(DISTINCT minute) FROM traffic_minutes WHERE minute < $1"
        assert await db.fetchval(left, first) <= 2
        assert await db.fetchval("SELECT sum(requests) FROM traffic_minutes") != total
        too_long = await asyncio.to_thread(
            cli,
            *("--db-url", database_dsn, "capacity", "forecast", "--per-worker-rps", "5"),
            *("--holdout-hours", "72"),
        )
        assert too_long.returncode == 2
        assert "--holdout-hours" in too_long.stderr
