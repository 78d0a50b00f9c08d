"""``retailsync capacity``: the traffic forecast and worker counts, and a synthetic history.

This module is the command's edge: its flags, the calendar file (TOML) and the output. The
model and the plan are :mod:`retailsync.traffic.forecast`; the table is written and read by
:mod:`retailsync.traffic.recorder`. Bad flags and bad calendars exit with code 2 and a line
that names the flag, or the calendar's line and field.
"""

from __future__ import annotations

import math
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from retailsync.errors import ConfigError, RetailsyncError
from retailsync.traffic.forecast import (
    BUCKET,
    CapacityPlan,
    Event,
    Series,
    bucket_floor,
    plan_capacity,
)

capacity_app = typer.Typer(
    help="Traffic history and capacity forecasts: how many workers, and when.",
    no_args_is_help=True,
)
HISTORY = timedelta(days=28)  # four weekly cycles; older traffic says little about next week
_EVENT_HEADER = re.compile(r"^\s*\[\[\s*event\s*\]\]")
_out = Console()
_DAY = timedelta(days=1)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables")]


def load_calendar(path: Path) -> list[Event]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--events", str(path), f"cannot read it: {exc.strerror}") from exc
    return parse_calendar(text, str(path))


def parse_calendar(text: str, source: str = "<events>") -> list[Event]:
    """Events from TOML, one ``[[event]]`` table each: ``name``, ``start`` and ``end`` (with
    a UTC offset) and an optional ``multiplier``. Errors name the line and the field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--events", source, f"not valid TOML: {exc}") from exc
    unknown = set(doc) - {"event"}
    if unknown:
        raise ConfigError(
            "--events", source, f"unknown key {sorted(unknown)[0]!r} (want [[event]])"
        )
    tables = doc.get("event", [])
    if not isinstance(tables, list):
        raise ConfigError("--events", source, "event must be an array of tables: [[event]]")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _EVENT_HEADER.match(line)]
    events = []
    for i, table in enumerate(tables):
        line = lines[i] if len(lines) == len(tables) else None
        events.append(_event(table, source, f"line {line}" if line else f"event {i + 1}", line))
    return events


def _event(table: Any, source: str, where: str, line: int | None) -> Event:
    def bad(field: str, reason: str) -> ConfigError:
        return ConfigError("--events", source, f"{where}: field {field!r}: {reason}")

    if not isinstance(table, dict):
        raise ConfigError("--events", source, f"{where}: an event must be a table")
    for field in table:
        if field not in ("name", "start", "end", "multiplier"):
            raise bad(field, "unknown (fields: name, start, end, multiplier)")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "required, a non-empty string")
    when: dict[str, datetime] = {}
    for field in ("start", "end"):
        value = table.get(field)
        if not isinstance(value, datetime):
            raise bad(field, "required, a TOML date-time such as 2025-11-28T06:00:00Z")
        if value.utcoffset() is None:
            raise bad(field, "needs a UTC offset (2025-11-28T06:00:00Z or ...+01:00)")
        when[field] = value.astimezone(UTC)
    if when["end"] <= when["start"]:
        raise bad("end", "must be after start")
    multiplier = table.get("multiplier")
    if multiplier is not None and (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not 0 < multiplier <= 1000
    ):
        raise bad("multiplier", "a number in (0, 1000]: expected traffic / normal traffic")
    factor = None if multiplier is None else float(multiplier)
    return Event(name, when["start"], when["end"], factor, line)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plan_json(plan: CapacityPlan) -> dict[str, Any]:
    """The report of ``retailsync capacity forecast --json``; ``mape`` in percent."""
    accuracy = plan.accuracy
    return {
        "start": _iso(plan.start),
        "resolution_minutes": int(BUCKET.total_seconds() // 60),
        "mape": None if accuracy is None or accuracy.mape is None else round(accuracy.mape, 2),
        "mape_hours": 0 if accuracy is None else accuracy.hours,
        "mape_skipped": 0 if accuracy is None else accuracy.skipped,
        "holdout_hours": 0 if accuracy is None else accuracy.holdout_hours,
        "peak": {
            "start": _iso(plan.peak[0]),
            "rps": round(plan.peak[1], 3),
            "workers": plan.peak[2],
        },
        "hours": [
            {
                "start": _iso(h.start),
                "rps": round(h.rps, 3),
                "peak_rps": round(h.peak_rps, 3),
                "workers": h.workers,
            }
            for h in plan.hours
        ],
        "events": [
            {
                "name": e.name,
                "start": _iso(e.start),
                "end": _iso(e.end),
                "multiplier": round(e.multiplier, 3),
                "source": e.source,
                "peak_rps": round(e.peak_rps, 3),
                "workers": e.workers,
                "scale_up_by": _iso(e.scale_up_by),
            }
            for e in plan.events
        ],
        "model": {
            "trend_rps_per_day": round(plan.model.trend_per_day, 4),
            "recent_adjustment": round(plan.model.recent, 4),
        },
    }


def _fail(message: str) -> NoReturn:
    from retailsync import cli  # here, not at the top: cli imports this module

    cli._fail(message, code=2)


def _check(flag: str, value: float, ok: bool, want: str) -> None:
    if not (math.isfinite(value) and ok):
        _fail(f"{flag} {value:g}: must be {want}")


@capacity_app.command("forecast")
def forecast(
    hours: Annotated[int, typer.Option(min=1, max=336, help="Hours to forecast")] = 24,
    events: Annotated[
        Path | None, typer.Option(help="Calendar of scheduled events (TOML, [[event]] tables)")
    ] = None,
    per_worker_rps: Annotated[
        float | None,
        typer.Option(help="Requests/s one worker serves at its limit (required; measure it)"),
    ] = None,
    headroom: Annotated[
        float, typer.Option(help="Capacity over the forecast peak, in [1, 10]")
    ] = 1.3,
    lead_minutes: Annotated[
        int, typer.Option(min=0, max=1440, help="Minutes before a rise the workers must be up")
    ] = 15,
    holdout_hours: Annotated[
        int,
        typer.Option(min=0, max=336, help="Hours held out to measure the error (0: none)"),
    ] = 24,
    as_json: JsonFlag = False,
) -> None:
    """Forecast requests/s per hour from the recorded traffic and the calendar, recommend
    worker counts ready --lead-minutes before each rise, and report the error (MAPE) on the
    last --holdout-hours of history when forecast from the history before them."""
    from retailsync import cli
    from retailsync.db.database import Database
    from retailsync.traffic.recorder import load_totals

    if per_worker_rps is None:
        _fail(
            "--per-worker-rps is required: the requests/s one worker serves before it sheds "
            "(`retailsync bench overload` measures capacity_rps)"
        )
    _check("--per-worker-rps", per_worker_rps, per_worker_rps > 0, "a number > 0")
    _check("--headroom", headroom, 1 <= headroom <= 10, "a number in [1, 10]")
    calendar = _calendar(events)
    now = datetime.now(UTC)
    settings = cli._settings()

    async def job(db: Database) -> list[tuple[datetime, int]]:
        return await load_totals(db, now - HISTORY, bucket_floor(now))

    with cli._server(settings) as target:
        totals = cli._with_database(target, job)
    if not totals:
        _fail(
            "no traffic recorded in traffic_minutes over the last 28 days: serve with traffic "
            "recording on, or seed a demo history with `retailsync capacity record-synthetic`"
        )
    try:
        plan = plan_capacity(
            Series.from_minutes(totals, now),
            calendar,
            now=now,
            hours=hours,
            per_worker_rps=per_worker_rps,
            headroom=headroom,
            lead_minutes=lead_minutes,
            holdout_hours=holdout_hours,
        )
    except RetailsyncError as exc:
        _fail(str(exc))
    if as_json:
        from retailsync.bench.report import print_json

        print_json(plan_json(plan))
    else:
        _print_plan(plan, per_worker_rps=per_worker_rps, headroom=headroom)


def _calendar(path: Path | None) -> list[Event]:
    if path is None:
        return []
    try:
        return load_calendar(path)
    except ConfigError as exc:
        _fail(str(exc))


def _print_plan(plan: CapacityPlan, *, per_worker_rps: float, headroom: float) -> None:
    table = Table(
        title=f"Forecast from {plan.start:%Y-%m-%d %H:%M} UTC",
        caption=f"workers = ceil(peak x {headroom:g} / {per_worker_rps:g} rps), ready ahead",
    )
    for title in ("hour (UTC)", "rps", "peak rps", "workers"):
        table.add_column(title, justify="right")
    for h in plan.hours:
        table.add_row(f"{h.start:%a %H:%M}", f"{h.rps:,.1f}", f"{h.peak_rps:,.1f}", str(h.workers))
    _out.print(table)
    if plan.events:
        events = Table(title="Events")
        for title in ("event", "window (UTC)", "x normal", "source", "peak rps", "workers"):
            events.add_column(title)
        events.add_column("scale up by")
        for e in plan.events:
            events.add_row(
                e.name,
                f"{e.start:%a %H:%M}-{e.end:{'%H:%M' if e.end - e.start < _DAY else '%a %H:%M'}}",
                f"{e.multiplier:.2f}",
                e.source,
                f"{e.peak_rps:,.1f}",
                str(e.workers),
                f"{e.scale_up_by:%a %H:%M}",
            )
        _out.print(events)
    at, rps, workers = plan.peak
    _out.print(f"peak: {rps:,.1f} rps at {at:%a %H:%M} UTC -> {workers} workers")
    accuracy = plan.accuracy
    if accuracy is None:
        _out.print("held-out error: not measured (--holdout-hours 0)")
    elif accuracy.mape is None:
        _out.print("held-out error: no hour with enough traffic to score")
    else:
        _out.print(
            f"held-out error (last {accuracy.holdout_hours} h): MAPE {accuracy.mape:.1f} % "
            f"over {accuracy.hours} hours ({accuracy.skipped} skipped: quiet or unknown event)"
        )


@capacity_app.command("record-synthetic")
def record_synthetic(
    days: Annotated[int, typer.Option(min=4, max=90, help="Days of history, up to now")] = 14,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same shape")] = 7,
    mean_rps: Annotated[
        float, typer.Option(min=0.01, max=100_000, help="Mean requests/s over a week")
    ] = 20.0,
    events_out: Annotated[
        Path | None,
        typer.Option(help="Write a calendar here: the past sale, and one tomorrow to learn"),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Delete recorded traffic in that range first")
    ] = False,
) -> None:
    """Record a realistic synthetic history (daily and weekly shape, a trend, noise, one
    past flash sale) into traffic_minutes, for a demo of `capacity forecast`."""
    from retailsync import cli
    from retailsync.db.database import Database
    from retailsync.traffic.recorder import minutes_recorded, synthetic_history, write_minutes

    _check("--mean-rps", mean_rps, mean_rps > 0, "a number > 0")
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    history = synthetic_history(days=days, end=end, seed=seed, mean_rps=mean_rps)
    start = end - timedelta(days=days)
    settings = cli._settings()

    async def job(db: Database) -> int | None:
        if replace:
            await db.execute(
                "DELETE FROM traffic_minutes WHERE minute >= $1 AND minute < $2", start, end
            )
        elif await minutes_recorded(db, start, end):
            return None
        return await write_minutes(db, history.by_class())

    with cli._server(settings) as target:
        written = cli._with_database(target, job)
    if written is None:
        _fail("traffic_minutes already holds traffic in that range: pass --replace to delete it")
    sale = history.sale
    if events_out is not None:
        upcoming = datetime.combine(end.date() + timedelta(days=1), sale.start.timetz())
        events_out.write_text(
            _calendar_text(
                [
                    (sale.name, sale.start, sale.end),
                    (sale.name, upcoming, upcoming + (sale.end - sale.start)),
                ]
            ),
            encoding="utf-8",
        )
    _out.print(
        f"recorded {written:,} rows: {days} days to {end:%Y-%m-%d %H:%M} UTC, with "
        f"{sale.name} on {sale.start:%a %Y-%m-%d %H:%M}"
        + (f"; calendar in {events_out}" if events_out else "")
    )


def _calendar_text(events: list[tuple[str, datetime, datetime]]) -> str:
    """A calendar of events without multipliers: each is learned from the earlier ones."""
    blocks = [
        f'[[event]]\nname = "{name}"\nstart = {_iso(start)}\nend = {_iso(end)}\n'
        for name, start, end in events
    ]
    return "\n".join(blocks)
