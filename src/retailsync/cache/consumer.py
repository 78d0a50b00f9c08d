"""The invalidation consumer: a consumer group of the event log that keeps the shared tiers
fresh, L2 (Redis) and the edge cache (Varnish), per source transaction.

Every worker runs one member of the group, so each change is handled once, by whichever
worker fetched it, and at least once: a delivery is acknowledged only after L2 took the
invalidation and the edge was purged, so a crash (or Redis or Varnish away) mid-transaction
means the transaction is delivered again, which the version rules make harmless.

The edge is purged twice. At once, which is usually enough; and again after ``edge_delay_s``
(the bound within which every worker's L1 has the change): a shared cache that refetched
between the first purge and a worker's L1 eviction would otherwise keep the old document for
its whole s-maxage. The delivery is acknowledged after the second purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from retailsync.cache import metrics
from retailsync.cache.keys import affected_keys
from retailsync.cache.l2 import L2Cache
from retailsync.eventlog.base import Delivery, EventLog

log = logging.getLogger(__name__)
GROUP = "cache-invalidation"
# A dead-lettered invalidation would leave L2 stale: retry through any outage (5 s apart).
_NEVER_GIVE_UP = 10_000_000


class Purged(Protocol):
    @property
    def ok(self) -> bool: ...


class Purger(Protocol):
    async def purge(self, keys: Iterable[str]) -> Purged:
        """Purge every object tagged with any of ``keys`` (``ok``: the edge confirmed it)."""
        ...


class InvalidationConsumer:
    def __init__(
        self,
        event_log: EventLog,
        *,
        l2: L2Cache | None,
        purger: Purger | None,
        edge_delay_s: float = 0.15,
    ) -> None:
        self._log = event_log
        self._l2 = l2
        self._purger = purger
        self._edge_delay_s = edge_delay_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache-invalidation")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                consumer = await self._log.consumer(
                    GROUP, ack_wait=30.0, max_deliveries=_NEVER_GIVE_UP
                )
                try:
                    while True:
                        deliveries = await consumer.fetch(batch=500, max_wait=1.0)
                        if not deliveries:
                            continue
                        if await self.handle(deliveries):
                            await consumer.ack_all(deliveries)
                            backoff = 0.1
                        else:  # delivered again, for as long as the outage lasts
                            for delivery in deliveries:
                                await consumer.nack(delivery, "L2 or edge unreachable")
                            await asyncio.sleep(backoff)
                            backoff = min(backoff * 2, 5.0)
                finally:
                    await consumer.close()
            except Exception as exc:  # undelivered acks are delivered again: retry
                log.warning("cache invalidation consumer: %r; retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def handle(self, deliveries: Sequence[Delivery]) -> bool:
        """Invalidate L2 and purge the edge for every change; whether all of it landed."""
        newest: dict[str, int] = {}  # per key, the last offset of the batch
        committed_at = 0.0
        for delivery in deliveries:
            for key in affected_keys(delivery.event):
                newest[key] = max(newest.get(key, 0), delivery.offset)
            committed_at = max(committed_at, delivery.event.commit_ts_us / 1e6)
        if not newest:
            return True
        if self._l2 is not None:
            for key, offset in newest.items():
                if not await self._l2.invalidate_strict(key, offset):
                    return False
            metrics.FRESHNESS.labels("l2").observe(max(time.time() - committed_at, 0.0))
        if self._purger is not None:
            await self._purger.purge(newest)  # at once; the second, below, is the one that counts
            await asyncio.sleep(max(committed_at + self._edge_delay_s - time.time(), 0.0))
            if not (await self._purger.purge(newest)).ok:
                return False
            metrics.FRESHNESS.labels("edge").observe(max(time.time() - committed_at, 0.0))
        return True
