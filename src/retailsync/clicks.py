"""Write-back for behavioural events (``POST /v1/events/clicks``): accepted into the worker's
memory, written to ``click_events`` in batches.

A click is worth little and there are many: one insert per click would cost each of them a
transaction and an fsync. The buffer is flushed every ``flush_interval`` seconds, or sooner
once ``flush_size`` events wait, in one multi-row insert. The price is stated, not hidden:
events accepted since the last flush are lost if the worker dies (kill -9, power), at most
``flush_interval`` seconds' worth; a clean stop (SIGTERM) flushes first. While the database
is away the buffer keeps up to ``max_buffered`` events and then drops the oldest (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter

from retailsync.chores import wait_set
from retailsync.db.database import Database
from retailsync.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

CLICKS = Counter(
    "retailsync_click_events_total",
    "Behavioural events: accepted into a worker's buffer, written, dropped (buffer full)",
    ["event"],
)


@dataclass(frozen=True, slots=True)
class Click:
    session_id: str
    kind: str
    sku: str | None
    at: datetime
    received_at: datetime


class ClickBuffer:
    def __init__(
        self,
        db: Database,
        *,
        flush_interval: float = 1.0,
        flush_size: int = 5_000,
        max_buffered: int = 100_000,
    ) -> None:
        self._db = db
        self._interval = flush_interval
        self._size = flush_size
        self._buffer: deque[Click] = deque(maxlen=max_buffered)
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flusher())

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def accept(self, clicks: list[Click]) -> None:
        dropped = max(0, len(self._buffer) + len(clicks) - (self._buffer.maxlen or 0))
        if dropped:
            CLICKS.labels("dropped").inc(dropped)
        self._buffer.extend(clicks)
        CLICKS.labels("accepted").inc(len(clicks))
        if len(self._buffer) >= self._size:
            self._full.set()

    async def flush(self) -> int:
        """Write what is buffered now; return how many. On failure they go back to the front
        of the buffer (and if it overflows meanwhile, the newest are dropped, counted)."""
        batch, self._buffer = self._buffer, deque(maxlen=self._buffer.maxlen)
        if not batch:
            return 0
        try:
            await self._insert(batch)
        except BaseException:
            room = (self._buffer.maxlen or 0) - len(self._buffer)
            if len(batch) > room:
                CLICKS.labels("dropped").inc(len(batch) - room)
            self._buffer.extendleft(reversed(list(batch)[:room]))
            raise
        CLICKS.labels("written").inc(len(batch))
        return len(batch)

    async def _insert(self, batch: deque[Click]) -> None:
        await self._db.execute(
            "INSERT INTO click_events (session_id, kind, sku, at, received_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], "
            "$5::timestamptz[])",
            [c.session_id for c in batch],
            [c.kind for c in batch],
            [c.sku for c in batch],
            [c.at for c in batch],
            [c.received_at for c in batch],
        )

    async def close(self) -> None:
        """Stop flushing on a timer, then write what is left (a clean stop loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except DatabaseUnavailable as exc:
            log.warning("%d click events lost at shutdown: %s", self.buffered, exc)

    async def _flusher(self) -> None:
        while True:
            await wait_set(self._full, self._interval)
            self._full.clear()
            try:
                await self.flush()
            except DatabaseUnavailable as exc:
                log.warning("click events not written yet (%d buffered): %s", self.buffered, exc)
            except Exception:
                log.exception("click events flush failed")
