"""``retailsync bench cdc``: change data capture beside ``pg_recvlogical``, the ceiling.

Everything runs on a private embedded PostgreSQL in a temporary folder (so the figures do not
depend on, or disturb, anyone's database), for each event log backend asked for:

- throughput: N row changes are committed first (transactions of 100 rows), then the capture
  drains them from its slot into the log, timed until the log has accepted all N;
  ``pg_recvlogical`` drains the same N from a slot of its own into /dev/null (no parsing, no
  log: the fastest a client can read the stream here);
- latency: once the capture is streaming, a writer commits at a fixed offered rate (100
  transactions a second, rate / 100 rows each); each transaction's commit-to-log time is the
  moment its events were durable in the log minus its commit timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from retailsync.bench.private import private_database
from retailsync.bench.stats import percentile
from retailsync.cdc.capture import Capture, CaptureConfig, prepare
from retailsync.cdc.slot import drop_slot, lsn_text
from retailsync.cdc.tables import CapturedTable
from retailsync.db.database import Database
from retailsync.db.embedded import binaries_dir
from retailsync.eventlog.factory import open_event_log

TABLE = CapturedTable("public.bench_changes", "bench.changed")
_ROWS_PER_TX = 100
_TICKS_PER_SECOND = 100


@dataclass(frozen=True, slots=True)
class CdcPlan:
    changes: int  # drained for throughput
    rate: int  # offered changes/s for the latency run
    seconds: float  # length of the latency run


FULL = CdcPlan(changes=200_000, rate=5_000, seconds=10.0)
QUICK = CdcPlan(changes=20_000, rate=5_000, seconds=3.0)


async def _write(db: Database, rows: int, start: int) -> None:
    for first in range(start, start + rows, _ROWS_PER_TX):
        count = min(_ROWS_PER_TX, start + rows - first)
        await db.execute(
            "INSERT INTO bench_changes (id, v, n) "
            "SELECT g, 'value ' || g, g % 97 FROM generate_series($1::bigint, $2::bigint) g",
            first,
            first + count - 1,
        )


async def _recvlogical(dsn: str, slot: str, publication: str, end_lsn: int) -> float:
    """Seconds ``pg_recvlogical`` takes to read the slot up to ``end_lsn``."""
    args = [
        str(binaries_dir() / "pg_recvlogical"),
        "--dbname", dsn, "--slot", slot, "--start", "--no-loop",
        "--endpos", lsn_text(end_lsn), "--file", "/dev/null",
        "-o", "proto_version=2", "-o", f"publication_names={publication}",
    ]  # fmt: skip
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*args, stderr=subprocess.PIPE)
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed: {stderr.decode(errors='replace')}")
    return time.perf_counter() - started


async def _capture_until(capture: Capture, count: int) -> float:
    """Run ``capture`` until it has appended ``count`` events; return the seconds taken."""
    started = time.perf_counter()
    task = asyncio.create_task(capture.run())
    try:
        while capture.appended < count:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _config() -> CaptureConfig:
    name = f"bench_{secrets.token_hex(4)}"
    return CaptureConfig(source=name, slot=name, publication=name, heartbeat_seconds=1.0)


async def _backend(db: Database, dsn: str, url: str, plan: CdcPlan, next_id: int) -> dict[str, Any]:
    log = await open_event_log(url, db=db)
    try:
        # Throughput: both slots exist before the writes, so each has all N to drain.
        config = _config()
        await prepare(db, config, [TABLE], snapshot_new=False)
        ceiling = _config()
        await db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", ceiling.slot)
        await _write(db, plan.changes, next_id)
        end_lsn = await db.fetchval("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")
        capture = Capture(db, dsn, log, config, [TABLE])
        seconds = await _capture_until(capture, plan.changes)
        recv_seconds = await _recvlogical(dsn, ceiling.slot, config.publication, int(end_lsn))
        async with db.connection() as conn:
            await drop_slot(conn, ceiling.slot)
            await drop_slot(conn, config.slot)

        # Latency at the offered rate.
        config = _config()
        await prepare(db, config, [TABLE], snapshot_new=False)
        latencies: list[float] = []
        capture = Capture(db, dsn, log, config, [TABLE], on_latency=latencies.append)
        task = asyncio.create_task(capture.run())
        per_tick = max(1, plan.rate // _TICKS_PER_SECOND)
        ticks = int(plan.seconds * _TICKS_PER_SECOND)
        first = next_id + plan.changes + 1  # after the throughput rows and the warm-up row
        # Steady state only: one change first, and the clock starts once it is through (the
        # capture has connected and the slot is streaming).
        await _write(db, 1, first - 1)
        while capture.appended < 1:  # noqa: ASYNC110 - polled, as below
            await asyncio.sleep(0.01)
        latencies.clear()
        started = time.perf_counter()
        for tick in range(ticks):
            await db.execute(
                "INSERT INTO bench_changes (id, v, n) SELECT g, 'v', 1 "
                "FROM generate_series($1::bigint, $2::bigint) g",
                first + tick * per_tick,
                first + (tick + 1) * per_tick - 1,
            )
            delay = started + (tick + 1) / _TICKS_PER_SECOND - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        offered = ticks * per_tick / (time.perf_counter() - started)
        deadline = time.perf_counter() + 30
        # Polled: the capture offers no event to wait on, and 10 ms is finer than the figures.
        while capture.appended < 1 + ticks * per_tick and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with db.connection() as conn:
            await drop_slot(conn, config.slot)
    finally:
        await log.close()
        if url.startswith("nats://"):
            await _delete_streams(url)
    changes_per_s = plan.changes / seconds
    recv_per_s = plan.changes / recv_seconds
    return {
        "backend": url.partition("?")[0],
        "changes": plan.changes,
        "changes_per_s": round(changes_per_s),
        "recvlogical_changes_per_s": round(recv_per_s),
        "ratio_to_recvlogical": round(changes_per_s / recv_per_s, 3),
        "offered_changes_per_s": round(offered),
        "transactions_measured": len(latencies),
        "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }


async def _delete_streams(url: str) -> None:
    """The stream a NATS run wrote, and its dead-letter stream: a benchmark leaves nothing."""
    import nats  # the nats extra; only a nats:// run gets here

    parts = urlsplit(url)
    stream = dict(parse_qsl(parts.query)).get("stream", "retailsync-events")
    client = await nats.connect(f"nats://{parts.netloc}")
    try:
        for name in (stream, f"{stream}-dead"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(name)
    finally:
        await client.close()


async def run_cdc_bench(
    plan: CdcPlan, urls: list[str], progress: Callable[[str], None]
) -> dict[str, Any]:
    async with private_database(progress, pool_max=10) as (dsn, db):
        await db.execute("CREATE TABLE bench_changes (id bigint PRIMARY KEY, v text, n int)")
        results = []
        for index, url in enumerate(urls):
            progress(f"measuring the {url.partition('?')[0]} event log")
            start = 1 + index * 10 * (plan.changes + plan.rate * int(plan.seconds + 1))
            results.append(await _backend(db, dsn, url, plan, start))
    return {
        "plan": {"changes": plan.changes, "rate": plan.rate, "seconds": plan.seconds},
        "backends": results,
        # The first backend's figures at the top level, for a quick look.
        **{key: results[0][key] for key in ("backend", "changes_per_s", "latency_p50_ms",
                                              "latency_p99_ms", "recvlogical_changes_per_s")},
    }  # fmt: skip
