"""Change data capture during the demo: ``retailsync cdc run`` on a slot of the demo's own,
from the moment traffic starts, and what it captured. The slot and publication are dropped
afterwards, so a demo never leaves a slot behind to pin the server's WAL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from retailsync.cdc.slot import drop_slot, quote_ident
from retailsync.db.database import Database
from retailsync.demo.server import CaptureProcess

log = logging.getLogger(__name__)


def new_slot_name() -> str:
    return f"demo_{secrets.token_hex(4)}"


_READY_TIMEOUT = 30.0
_DRAIN_QUIET = 1.0  # the capture has caught up once the log stops growing for this long
_DRAIN_TIMEOUT = 15.0

_REPORT = """
SELECT count(*) AS events,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms) FILTER (WHERE first) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) FILTER (WHERE first) AS p99
FROM (
    SELECT (extract(epoch FROM appended_at) * 1e6 - (body->>'commit_ts_us')::bigint) / 1000.0
               AS lag_ms,
           (body->>'index')::int = 0 AS first
    FROM event_log WHERE source = $1
) events
"""


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """Events captured, and commit-to-log latency per transaction."""

    events: int
    p50_ms: float | None
    p99_ms: float | None


@contextlib.asynccontextmanager
async def capturing(db: Database, dsn: str, slot: str) -> AsyncIterator[str | None]:
    """Run the capture on ``slot`` for the block; yield its source name (the slot's), or None
    when the server cannot decode its WAL (``wal_level`` below ``logical``): the demo runs
    without (and its API server's caches read through)."""
    if await db.fetchval("SHOW wal_level") != "logical":
        yield None
        return
    try:
        with CaptureProcess(dsn, slot) as capture:
            await _wait_streaming(db, slot, capture)
            yield slot
            await _drain(db, slot)
    finally:
        await _forget(db, slot)


async def capture_report(db: Database, source: str | None) -> CaptureReport | None:
    if source is None:
        return None
    row = await db.fetchrow(_REPORT, source)
    assert row is not None  # an aggregate always has a row
    return CaptureReport(row["events"], row["p50"], row["p99"])


async def _wait_streaming(db: Database, slot: str, capture: CaptureProcess) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not await db.fetchval(
        "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    ):
        code = capture.exit_code()
        if code is not None:
            raise capture.failure(f"the capture exited with code {code} while starting")
        if time.monotonic() > deadline:
            raise capture.failure(f"the capture was not streaming after {_READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)


async def _drain(db: Database, source: str) -> None:
    """Wait until the log has stopped growing: the last commits of the run are in."""
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        now = await db.fetchval(
            "SELECT last_event_id FROM event_log_sources WHERE source = $1", source
        )
        if now is not None and now == last:
            return
        last = now
        await asyncio.sleep(_DRAIN_QUIET)


async def _forget(db: Database, slot: str) -> None:
    failure: Exception | None = None
    for _ in range(50):  # the stopped capture's walsender may hold the slot a moment longer
        try:
            async with db.connection() as conn:
                await drop_slot(conn, slot)
                await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(slot)}")
        except Exception as exc:  # retried; said below if it never succeeds
            failure = exc
            await asyncio.sleep(0.1)
        else:
            return
    log.warning(
        "could not drop the demo's replication slot %s (%s): drop it by hand, or it keeps "
        "the server's WAL: SELECT pg_drop_replication_slot('%s')",
        slot,
        failure,
        slot,
    )
