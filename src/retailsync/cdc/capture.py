"""The capture process: slot -> whole transactions -> event log -> confirmed position.

The one rule that makes it lossless: the slot's confirmed position moves only past
transactions whose every event the log has durably accepted. After a crash the server sends
again from the last confirmed position; those transactions come back with the same event ids,
and events the log already holds (ids up to its last one for this source) are skipped, so a
restart neither loses nor doubles anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from retailsync.cdc import metrics, snapshot
from retailsync.cdc import slot as slots
from retailsync.cdc.assemble import HEARTBEAT_PREFIX, Assembler, Transaction
from retailsync.cdc.events import ChangeEvent
from retailsync.cdc.replication import ReplicationStream
from retailsync.cdc.tables import SETTING as TABLES_SETTING
from retailsync.cdc.tables import CapturedTable
from retailsync.chores import stop_all
from retailsync.db.database import Database
from retailsync.errors import DatabaseUnavailable
from retailsync.eventlog.base import EventLogUnavailable, Lag

log = logging.getLogger(__name__)
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 10.0


class EventSink(Protocol):
    """What the capture needs of an event log."""

    async def append(self, events: Sequence[ChangeEvent]) -> None: ...

    async def last_event_id(self, source: str) -> str | None: ...

    async def groups(self) -> list[str]: ...

    async def lag(self, group: str) -> Lag: ...


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    source: str = "retailsync"
    slot: str = "retailsync"
    publication: str = "retailsync"
    heartbeat_seconds: float = 10.0
    status_seconds: float = 5.0


async def prepare(
    db: Database,
    config: CaptureConfig,
    tables: Sequence[CapturedTable],
    *,
    snapshot_new: bool = True,
) -> bool:
    """Check the tables, set up the publication and slot; return True when the slot is new
    (created now, or recreated because the server had removed WAL it still needed). A new
    slot starts from now: with ``snapshot_new`` every table is snapshot too, so the log holds
    the rows that were there before."""
    async with db.connection() as conn:
        for table in tables:
            await slots.check_table(conn, table.name, table.key, TABLES_SETTING)
        await slots.ensure_publication(conn, config.publication, [t.name for t in tables])
        status = await slots.slot_status(conn, config.slot)
        if status.lost:
            log.error(
                "replication slot %s was invalidated (wal_status lost): the server removed WAL "
                "it had not yet delivered; recreating it. Changes in the gap are missing from "
                "the log until the tables are snapshot again (retailsync cdc snapshot TABLE).",
                config.slot,
            )
            metrics.SLOTS_LOST.labels(config.slot).inc()
            await slots.drop_slot(conn, config.slot)
        created = await slots.ensure_slot(conn, config.slot)
    if created and snapshot_new:
        await snapshot.request(db, config.source, [table.name for table in tables])
    return created


class Capture:
    def __init__(
        self,
        db: Database,
        dsn: str,
        sink: EventSink,
        config: CaptureConfig,
        tables: Sequence[CapturedTable],
        *,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        """``on_latency``: also told each transaction's commit-to-log seconds (benchmarks)."""
        self._db = db
        self._on_latency = on_latency
        self._dsn = dsn
        self._sink = sink
        self._config = config
        self._tables = {table.name: table for table in tables}
        self._windows = snapshot.Windows()
        self.appended = 0  # events appended by this process

    async def run(self) -> None:
        """Capture until cancelled. A lost database or event log is retried with backoff:
        the stream restarts from the slot's confirmed position, and events the log already
        holds are skipped."""
        chores = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._report_slot()),
            asyncio.create_task(
                snapshot.Snapshotter(
                    self._db, self._config.source, self._tables, self._windows
                ).run()
            ),
        ]
        backoff = _BACKOFF_MIN
        try:
            while True:
                try:
                    await self._stream()
                except (DatabaseUnavailable, EventLogUnavailable) as exc:
                    log.warning("capture interrupted (%s); retrying in %.1f s", exc, backoff)
                    metrics.RESTARTS.labels(self._config.source).inc()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                else:
                    backoff = _BACKOFF_MIN
        finally:
            await stop_all(chores, "a capture chore")

    async def _stream(self) -> None:
        last = await self._sink.last_event_id(self._config.source)
        # A new assembler per stream: the server sends the Relations again.
        assembler = Assembler(self._config.source, self._tables, self._windows)
        # One append in flight while the next batch is decoded: the log's I/O overlaps the
        # decoding, and appends stay in order because each waits for the one before.
        appending: asyncio.Task[None] | None = None
        try:
            async with ReplicationStream(
                self._dsn, slot=self._config.slot, publication=self._config.publication
            ) as stream:
                async for batch in stream.batches():
                    done = [tx for m in batch if (tx := assembler.feed(m)) is not None]
                    if not done:
                        continue
                    if appending is not None:
                        await appending
                    appending = asyncio.create_task(self._deliver(stream, done, last))
        finally:
            if appending is not None:  # a failed append raises here, and is retried
                if not appending.done():
                    appending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await appending

    async def _deliver(
        self, stream: ReplicationStream, done: list[Transaction], last: str | None
    ) -> None:
        """Append the transactions' events, then confirm their position to the server."""
        events = [e for tx in done for e in tx.events if last is None or e.id > last]
        if events:
            await self._sink.append(events)
        stream.confirm(done[-1].end_lsn)
        for tx in done:
            for window in tx.snapshot_windows:
                window.delivered.set()
        if not events:
            return
        self.appended += len(events)
        now_us = time.time_ns() // 1000
        metrics.EVENTS.labels(self._config.source).inc(len(events))
        for tx in done:
            if tx.events and tx.events[0].commit_ts_us:
                lag = max(0.0, (now_us - tx.events[0].commit_ts_us) / 1e6)
                metrics.COMMIT_TO_LOG.labels(self._config.source).observe(lag)
                if self._on_latency is not None:
                    self._on_latency(lag)

    async def _heartbeats(self) -> None:
        """An idle database still gets a message now and then, so the slot's position can
        advance and the server can recycle WAL written by other databases."""
        while True:
            await asyncio.sleep(self._config.heartbeat_seconds)
            try:
                await self._db.fetchval(
                    "SELECT pg_logical_emit_message(false, $1, now()::text)", HEARTBEAT_PREFIX
                )
            except Exception:  # the stream itself reports a lost server
                log.warning("heartbeat failed", exc_info=True)

    async def _report_slot(self) -> None:
        """Keep the slot's retained WAL and every consumer group's lag in the metrics."""
        while True:
            try:
                async with self._db.connection() as conn:
                    status = await slots.slot_status(conn, self._config.slot)
                metrics.RETAINED_BYTES.labels(self._config.slot).set(status.retained_bytes)
                for group in await self._sink.groups():
                    behind = await self._sink.lag(group)
                    metrics.CONSUMER_LAG_EVENTS.labels(group).set(behind.events)
                    metrics.CONSUMER_LAG_SECONDS.labels(group).set(behind.seconds)
            except Exception:
                log.warning("slot and lag report failed", exc_info=True)
            await asyncio.sleep(self._config.status_seconds)
