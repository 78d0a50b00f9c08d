"""Opening a worker's caches from the settings: L1 always (unless sized 0), L2 when
``RETAILSYNC_CACHE_URL`` names a Redis, the invalidator on the event log, and the
invalidation consumer when there is a shared tier (L2 or an edge cache) to keep fresh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from retailsync.cache.consumer import InvalidationConsumer, Purger
from retailsync.cache.invalidation import Invalidator
from retailsync.cache.l1 import L1Cache
from retailsync.cache.l2 import L2Cache
from retailsync.cache.reads import CachedReads
from retailsync.cache.tiers import TieredCache
from retailsync.config import Settings
from retailsync.db.database import Database
from retailsync.eventlog.base import EventLog


@contextlib.asynccontextmanager
async def open_caches(
    settings: Settings, db: Database, event_log: EventLog, purger: Purger | None = None
) -> AsyncIterator[CachedReads]:
    l1 = L1Cache(max(settings.cache_l1_entries, 1))
    l2 = L2Cache.from_url(settings.cache_url) if settings.cache_url else None
    invalidator = None
    if settings.cache_l1_entries > 0:
        invalidator = Invalidator(event_log, l1, db, slot=settings.cdc_slot)
        await invalidator.start()
    consumer = None
    if invalidator is not None and (l2 is not None or purger is not None):
        consumer = InvalidationConsumer(event_log, l2=l2, purger=purger)
        consumer.start()
    policies = settings.cache_policies
    if settings.cache_l1_entries == 0:  # caching off: every domain reads through
        policies.domains = {name: type(d)(None) for name, d in policies.domains.items()}
    origin = (lambda: 0) if invalidator is None else (lambda: invalidator.origin)
    reads = CachedReads(db, policies, TieredCache(l1, l2, origin=origin), invalidator)
    try:
        yield reads
    finally:
        await reads.close()
        if consumer is not None:
            await consumer.close()
        if invalidator is not None:
            await invalidator.close()
        if l2 is not None:
            await l2.close()
