"""A Redis outage degrades the cache to L1 and the database, with no error to the reader and
no wait on a dead server per request; when Redis is back, L2 is used again."""

from __future__ import annotations

import asyncio
import time

from retailsync.cache.entry import Entry
from retailsync.cache.l1 import L1Cache
from retailsync.cache.l2 import L2Cache
from retailsync.cache.tiers import Loaded, TieredCache
from tests.cache.conftest import RedisServer


async def test_reads_go_on_through_an_outage_and_l2_comes_back(
    private_redis: RedisServer,
) -> None:
    l2 = L2Cache.from_url(private_redis.url, timeout=0.1)
    l2._retry_after = 0.3
    loads = 0

    async def load() -> Loaded:
        nonlocal loads
        loads += 1
        return Loaded(Entry(b"row", loads, time.time() + 60))

    try:
        cache = TieredCache(L1Cache(), l2)
        assert (await cache.get("a", load)).entry.value == b"row"
        assert await l2.get("a") is not None

        private_redis.kill()
        started = time.perf_counter()
        for n in range(20):  # new keys: each misses L1, and L2 is away
            assert (await cache.get(f"b{n}", load)).entry.value == b"row"
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0  # one timeout at most, then no call while it is down
        assert l2.errors >= 1
        assert not l2.available
        assert cache.l1.get("a") is not None  # L1 still serves what it had

        private_redis.start()  # same port, empty (it keeps nothing on disk)
        await asyncio.sleep(0.35)
        assert (await cache.get("c", load)).entry.value == b"row"
        assert l2.available
        assert await l2.get("c") is not None
    finally:
        await l2.close()
