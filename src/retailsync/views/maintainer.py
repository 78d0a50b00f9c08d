"""The view consumer: the event log's group "views" applied to the view tables.

Each delivery batch is applied in one database transaction, its events in source order
(commit LSN, then position in the transaction). With the PostgreSQL log in the same database
the acknowledgement is part of that transaction: applied and acknowledged commit together.
Otherwise (JetStream) it follows the commit, and a worker that dies in between leaves its
deliveries to be delivered again once their lease (``ack_wait``) runs out; the version rule
(see ``views.apply``) makes the second application a no-op. Any number of workers, in any
processes, may run the group at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from retailsync.db.database import Database
from retailsync.errors import DatabaseUnavailable, EventLogUnavailable
from retailsync.eventlog.base import Consumer, Delivery, EventLog
from retailsync.views import metrics
from retailsync.views.apply import Outcome, apply_events
from retailsync.views.rebuild import ensure_built

log = logging.getLogger(__name__)
GROUP = "views"
_CONFLICT_RETRIES = 5  # a deadlock between two workers' batches rolls one back: run it again
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0


class ViewMaintainer:
    def __init__(
        self,
        db: Database,
        event_log: EventLog,
        *,
        batch: int = 500,
        max_wait: float = 1.0,
        ack_wait: float = 30.0,
        max_deliveries: int = 100,
        on_changed: Callable[[set[str]], Awaitable[object]] | None = None,
    ) -> None:
        self._on_changed = on_changed  # told the categories a committed batch changed
        self.observer: Callable[[float], None] | None = None  # commit to view, seconds
        self._db = db
        self._log = event_log
        self._batch = batch
        self._max_wait = max_wait
        self._ack_wait = ack_wait
        self._max_deliveries = max_deliveries

    async def run(self) -> None:
        """Build the views if they never were, then apply the group's events until
        cancelled; an unreachable database or log is waited out."""
        backoff = _BACKOFF_MIN
        while True:
            try:
                if await ensure_built(self._db):
                    metrics.REBUILDS.inc()
                    log.info("view tables built from the base tables")
                consumer = await self._log.consumer(
                    GROUP, ack_wait=self._ack_wait, max_deliveries=self._max_deliveries
                )
                try:
                    while True:
                        deliveries = await consumer.fetch(self._batch, self._max_wait)
                        if deliveries:
                            await self.handle(consumer, deliveries)
                        backoff = _BACKOFF_MIN
                finally:
                    await consumer.close()
            except Exception as exc:  # even a bug must not stop the views for good
                if isinstance(exc, (DatabaseUnavailable, EventLogUnavailable)):
                    log.warning("view consumer: %s; retrying in %.1f s", exc, backoff)
                else:
                    log.exception("view consumer failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def handle(self, consumer: Consumer, deliveries: Sequence[Delivery]) -> None:
        """Apply one batch in one transaction and acknowledge it (in that transaction where
        the log allows, else after it); a batch that fails is handed back (nack) for another
        try."""
        acked_within = consumer.acks_in(self._db)
        try:
            outcome = await self._apply(deliveries, consumer if acked_within else None)
        except (DatabaseUnavailable, EventLogUnavailable):
            raise
        except Exception as exc:
            log.exception("view consumer: a batch of %d events failed", len(deliveries))
            for delivery in deliveries:
                await consumer.nack(delivery, f"{type(exc).__name__}: {exc}")
            return
        committed = time.time()
        for delivery in deliveries:
            lag = max(committed - delivery.event.commit_ts_us / 1e6, 0.0)
            metrics.LAG.observe(lag)
            if self.observer is not None:
                self.observer(lag)
        for name in ("applied", "skipped", "ignored"):
            if count := getattr(outcome, name):
                metrics.EVENTS.labels(name).inc(count)
        if outcome.categories and self._on_changed is not None:
            await self._on_changed(outcome.categories)
        if not acked_within:
            await consumer.ack_all(deliveries)

    async def _apply(self, deliveries: Sequence[Delivery], acking: Consumer | None) -> Outcome:
        """``acking``: the consumer whose acks join the transaction (see the module's doc)."""
        events = [delivery.event for delivery in deliveries]
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self._db.transaction() as conn:
                    outcome = await apply_events(conn, events)
                    if acking is not None:
                        await acking.ack_in(conn, deliveries)
                    return outcome
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
