"""Requests per minute per criticality class, counted in memory and added to PostgreSQL.

Admission calls :meth:`TrafficRecorder.count` once per request, so counting is a dictionary
update and nothing else: no lock, no I/O, no allocation once the minute's cell exists. Every
10 s the counts are added to ``traffic_minutes`` (migration 0010) by one upsert; several
workers add to the same rows, so a row is the sum over workers.

A flush that fails keeps its counts and the next one retries them, merged with what came in
meanwhile. That is bounded: past ``max_pending_minutes`` distinct minutes the oldest are
dropped (and counted in :attr:`TrafficRecorder.dropped_requests`), so an outage of the
database costs at most memory for a day of counters. A flush that fails *after* the server
committed (the connection dropped while the answer was on its way) is retried all the same
and counts that minute twice: the history is for capacity planning, where a rare over-count
errs on the safe side, and making it exact would cost a write-ahead token per flush.

The writer and reader of the table live here too: the forecast and the synthetic history of
``retailsync capacity record-synthetic`` use them, and so do the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from retailsync.chores import every
from retailsync.db.database import Database

log = logging.getLogger(__name__)

FLUSH_SECONDS = 10.0
MAX_PENDING_MINUTES = 24 * 60
_CHUNK = 20_000  # rows per statement when writing a long history

_UPSERT = """
INSERT INTO traffic_minutes AS t (minute, class, requests, shed)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::bigint[])
ON CONFLICT (minute, class) DO UPDATE
   SET requests = t.requests + EXCLUDED.requests, shed = t.shed + EXCLUDED.shed"""


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """Requests of one class in one minute (``minute`` is its start, in UTC)."""

    minute: datetime
    cls: str
    requests: int
    shed: int = 0


def minute_start(epoch_minute: int) -> datetime:
    return datetime.fromtimestamp(epoch_minute * 60, UTC)


async def write_minutes(db: Database, rows: Iterable[MinuteCount]) -> int:
    """Add ``rows`` to ``traffic_minutes``; return how many rows were written.

    Rows are sorted by their key so that two workers upserting overlapping batches lock the
    rows in the same order (no deadlock); each chunk is one statement, all or nothing."""
    ordered = sorted(rows, key=lambda r: (r.minute, r.cls))
    for first in range(0, len(ordered), _CHUNK):
        chunk = ordered[first : first + _CHUNK]
        await db.execute(
            _UPSERT,
            [r.minute for r in chunk],
            [r.cls for r in chunk],
            [r.requests for r in chunk],
            [r.shed for r in chunk],
        )
    return len(ordered)


async def load_totals(db: Database, since: datetime, until: datetime) -> list[tuple[datetime, int]]:
    """Requests per minute summed over classes, for minutes in [since, until), in order."""
    rows = await db.fetch(
        """SELECT minute, sum(requests)::bigint AS requests FROM traffic_minutes
            WHERE minute >= $1 AND minute < $2 GROUP BY minute ORDER BY minute""",
        since,
        until,
    )
    return [(row["minute"], int(row["requests"])) for row in rows]


async def minutes_recorded(db: Database, since: datetime, until: datetime) -> int:
    count: int = await db.fetchval(
        "SELECT count(DISTINCT minute) FROM traffic_minutes WHERE minute >= $1 AND minute < $2",
        since,
        until,
    )
    return count


class TrafficRecorder:
    """Counts of one worker, added to ``traffic_minutes`` every ``flush_seconds``.

    Call :meth:`count` from the event loop's thread (it is not thread-safe, by design: the
    admission middleware runs there). ``clock`` gives wall-clock seconds (tests pin it)."""

    def __init__(
        self,
        db: Database,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        max_pending_minutes: int = MAX_PENDING_MINUTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_pending_minutes < 1:
            raise ValueError("max_pending_minutes must be at least 1")
        self._db = db
        self._flush_seconds = flush_seconds
        self._max_minutes = max_pending_minutes
        self._clock = clock
        # (epoch minute, class) -> [requests, shed]
        self._pending: dict[tuple[int, str], list[int]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped_requests = 0  # counts given up after too long an outage

    def count(self, criticality: str, shed: bool = False) -> None:
        """One request of class ``criticality``; ``shed``: admission refused it."""
        key = (int(self._clock() // 60), criticality)
        cell = self._pending.get(key)
        if cell is None:
            cell = self._pending[key] = [0, 0]
        cell[0] += 1
        if shed:
            cell[1] += 1

    @property
    def pending_requests(self) -> int:
        """Requests counted but not yet in the database."""
        return sum(cell[0] for cell in self._pending.values())

    async def flush(self) -> int:
        """Add the counts so far to the table; return the rows written. On failure the counts
        are kept for the next flush and the error is raised."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return 0
            rows = [
                MinuteCount(minute_start(minute), cls, cell[0], cell[1])
                for (minute, cls), cell in batch.items()
            ]
            try:
                return await write_minutes(self._db, rows)
            except BaseException:  # cancelled too: what was not written must not be lost
                self._keep(batch)
                raise

    def _keep(self, batch: dict[tuple[int, str], list[int]]) -> None:
        for key, (requests, shed) in batch.items():
            cell = self._pending.setdefault(key, [0, 0])
            cell[0] += requests
            cell[1] += shed
        minutes = sorted({minute for minute, _ in self._pending})
        if len(minutes) <= self._max_minutes:
            return
        cutoff = minutes[-self._max_minutes]
        old = [key for key in self._pending if key[0] < cutoff]
        lost = sum(self._pending.pop(key)[0] for key in old)
        self.dropped_requests += lost
        log.warning(
            "traffic counts kept for more than %d minutes: dropped %d requests of the oldest",
            self._max_minutes,
            lost,
        )

    def start(self) -> None:
        """Flush every ``flush_seconds`` in a background task, until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(
                every(self._flush_seconds, "traffic flush", self.flush), name="traffic-flush"
            )

    async def close(self) -> None:
        """Stop the background flush and write what is left. A flush in progress finishes
        first (cancelling it mid-statement could count a minute twice)."""
        if self._task is not None:
            task, self._task = self._task, None
            async with self._lock:  # not mid-flush: the task is asleep or between runs
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:
            log.warning("traffic counts of %d requests not saved: %s", self.pending_requests, exc)


# A realistic history for the demo and the tests: one generator, shared by both.

CLASS_MIX: tuple[tuple[str, float], ...] = (
    ("browse", 0.55),
    ("product", 0.25),
    ("cart", 0.10),
    ("checkout", 0.05),
    ("analytics", 0.05),
)
WEEKDAY_FACTORS = (0.90, 0.95, 1.00, 1.00, 1.10, 1.35, 1.25)  # Monday first


def daily_shape(hour: float) -> float:
    """Relative traffic by hour of the day (UTC): a quiet night, lunch and evening peaks."""
    lunch = 0.9 * math.exp(-(((hour - 12.5) / 2.5) ** 2) / 2)
    evening = 1.3 * math.exp(-(((hour - 20.5) / 2.0) ** 2) / 2)
    return 0.25 + lunch + evening


@dataclass(frozen=True, slots=True)
class SyntheticSale:
    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class SyntheticHistory:
    """Totals per minute (``minute``, ``requests``, ``shed``) and the past sale in them."""

    totals: list[tuple[datetime, int, int]]
    sale: SyntheticSale

    def by_class(self) -> list[MinuteCount]:
        """The totals split over the classes by :data:`CLASS_MIX` (browse takes the rest)."""
        rows: list[MinuteCount] = []
        for minute, requests, shed in self.totals:
            left = requests
            for name, share in CLASS_MIX[1:]:
                part = int(requests * share)
                rows.append(MinuteCount(minute, name, part))
                left -= part
            rows.append(MinuteCount(minute, CLASS_MIX[0][0], left, min(shed, left)))
        return rows


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:  # the normal approximation is within a fraction of a percent here
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def synthetic_history(
    *,
    days: int,
    end: datetime,
    seed: int = 7,
    mean_rps: float = 20.0,
    growth_per_day: float = 0.01,
    hourly_noise: float = 0.04,
    sale_multiplier: float = 4.0,
) -> SyntheticHistory:
    """``days`` of traffic ending at minute ``end`` (excluded), UTC.

    The rate is ``mean_rps`` x daily shape x weekday factor x a linear trend, times noise
    that is correlated from hour to hour (AR(1) in log space, innovations ``hourly_noise``:
    weather, campaigns) and per minute (5 %), with Poisson counts on top. One sale, called
    ``flash-sale``, runs 2 h from 18:00 three days before the end: ``sale_multiplier`` times
    normal at its opening, decaying to half of that; a fifth of its browse traffic is shed."""
    rng = random.Random(seed)
    end = end.replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    sale_day = (end - timedelta(days=3)).replace(hour=18, minute=0)
    sale = SyntheticSale("flash-sale", sale_day, sale_day + timedelta(hours=2))
    norm = sum(daily_shape(h / 4) for h in range(96)) / 96 * sum(WEEKDAY_FACTORS) / 7
    totals: list[tuple[datetime, int, int]] = []
    log_noise = 0.0
    for i in range(days * 1440):
        minute = start + timedelta(minutes=i)
        if minute.minute == 0 or i == 0:
            log_noise = 0.6 * log_noise + rng.gauss(0.0, hourly_noise)
        trend = 1 + growth_per_day * i / 1440
        hour = minute.hour + minute.minute / 60
        rate = mean_rps / norm * daily_shape(hour) * WEEKDAY_FACTORS[minute.weekday()] * trend
        rate *= math.exp(log_noise + rng.gauss(0.0, 0.05))
        shed = 0.0
        if sale.start <= minute < sale.end:
            into = (minute - sale.start).total_seconds() / 60
            rate *= sale_multiplier * (0.5 + 0.5 * math.exp(-into / 40))
            shed = 0.2 * 0.55
        requests = _poisson(rng, rate * 60)
        totals.append((minute, requests, int(requests * shed)))
    return SyntheticHistory(totals, sale)
