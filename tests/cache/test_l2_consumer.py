"""L2 (a real Redis of the test's own) kept fresh by the cache-invalidation consumer group,
through an outage: shoppers get answers throughout, and the invalidations Redis missed are
delivered again and applied once it is back."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as redis

from retailsync.cache.entry import Entry
from retailsync.cache.keys import product_key
from retailsync.cache.l2 import L2Cache
from retailsync.db.database import Database
from tests.cache.conftest import RedisServer, cached_api

PRODUCT = {"title": "Lamp", "category": "home", "attributes": {}}


async def test_l2_is_invalidated_and_an_outage_is_made_good(
    cdc_db: Database, cdc_dsn: str, private_redis: RedisServer
) -> None:
    async with (
        asyncio.timeout(90),  # a hang is a failure with a traceback, not a stuck suite
        cached_api(cdc_db, cdc_dsn, cache_url=private_redis.url) as api,
    ):
        client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
        reader = L2Cache(client)  # the workers' key prefix
        try:
            write = await api.call("PUT", "/v1/products/LAMP-1", json=PRODUCT)
            invalidator = api.reads.invalidator
            assert invalidator is not None
            assert await invalidator.wait_for(int(write.headers["consistency-token"]), 5.0)
            await api.ok("GET", "/v1/products/LAMP-1")
            key = product_key("LAMP-1")
            cached = await reader.get(key)
            assert cached is not None  # the load reached L2 for the other workers

            await cdc_db.execute("UPDATE products SET title = 'Desk lamp' WHERE sku = 'LAMP-1'")
            started = time.monotonic()
            while await reader.get(key) == cached:
                assert time.monotonic() - started < 2.0, "L2 kept the old product"
                await asyncio.sleep(0.01)

            private_redis.kill()
            await cdc_db.execute("UPDATE products SET title = 'Floor lamp' WHERE sku = 'LAMP-1'")
            for _ in range(20):  # no errors to shoppers while Redis is away
                product = await api.ok("GET", "/v1/products/LAMP-1")
            assert product["title"] == "Floor lamp"  # from L1 or the database, never stale

            private_redis.start()  # empty: a worker that put the old title before the outage
            stale = Entry(b'{"title":"Desk lamp"}', cached.version, time.time() + 300)
            await reader.put(key, stale, 300)  # ... is what the redelivered invalidation undoes

            async def l2_refuses_the_old() -> bool:
                held = await reader.get(key)
                return held is None or held.version > cached.version

            deadline = time.monotonic() + 10
            while not await l2_refuses_the_old():
                assert time.monotonic() < deadline, "the missed invalidation never came"
                await asyncio.sleep(0.05)
            assert not await reader.put(key, stale, 300)  # and never again
            assert (await api.ok("GET", "/v1/products/LAMP-1"))["title"] == "Floor lamp"
        finally:
            await reader.close()
