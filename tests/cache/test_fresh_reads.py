"""Cached reads through the API, kept fresh by the real change stream: a real logical
PostgreSQL, a real capture into its event log, each worker's invalidator tailing it."""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from retailsync.db.database import Database
from tests.cache.conftest import CachedApi, cached_api, wait_until

PRODUCT = {"title": "Lamp", "category": "home/lighting", "attributes": {"color": "red"}}


async def _setup(api: CachedApi, sku: str = "LAMP-1") -> None:
    await api.location("eu-1", "eu", "store")
    await api.ok("PUT", f"/v1/products/{sku}", json=PRODUCT)
    price = {"currency": "EUR", "amount_minor": 1999}
    await settle(api, await api.call("PUT", f"/v1/prices/{sku}/eu", json=price))


async def settle(api: CachedApi, write: httpx.Response) -> None:
    """Until the write's change reached the cache: a value loaded before that would be evicted
    by it (correctly: the load cannot tell whether it saw the write)."""
    assert write.status_code in (200, 201), write.text
    invalidator = api.reads.invalidator
    assert invalidator is not None
    if invalidator.live:
        assert await invalidator.wait_for(int(write.headers["consistency-token"]), 5.0)


async def _title(api: CachedApi, sku: str) -> tuple[str, str]:
    response = await api.call("GET", f"/v1/products/{sku}")
    assert response.status_code == 200, response.text
    return response.json()["title"], response.headers["retailsync-cache"]


async def test_a_change_made_in_psql_evicts_the_cached_product(
    cdc_db: Database, cdc_dsn: str
) -> None:
    async with cached_api(cdc_db, cdc_dsn) as api:
        await _setup(api)
        assert (await _title(api, "LAMP-1"))[1] == "load"
        first = await api.call("GET", "/v1/products/LAMP-1")
        assert first.headers["retailsync-cache"] == "l1"
        assert first.headers["surrogate-key"] == "product:LAMP-1"
        assert first.headers["cache-control"] == "public, max-age=0, s-maxage=300"
        etag = first.headers["etag"]
        not_modified = await api.call("GET", "/v1/products/LAMP-1", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304

        await cdc_db.execute("UPDATE products SET title = 'Desk lamp' WHERE sku = 'LAMP-1'")
        changed_at = time.monotonic()
        while (await _title(api, "LAMP-1"))[0] != "Desk lamp":
            assert time.monotonic() - changed_at < 2.0, "the cached product was never evicted"
            await asyncio.sleep(0.005)
        again = await api.call("GET", "/v1/products/LAMP-1")
        assert again.headers["etag"] != etag
        assert again.headers["retailsync-cache"] == "l1"  # cached again, at the new version


async def test_without_a_capture_event_kept_classes_read_through(
    cdc_db: Database, cdc_dsn: str
) -> None:
    async with cached_api(cdc_db, cdc_dsn, capture=False) as api:
        await _setup(api)
        for _ in range(3):
            assert (await _title(api, "LAMP-1"))[1] == "bypass"
        await cdc_db.execute("UPDATE products SET title = 'Desk lamp' WHERE sku = 'LAMP-1'")
        assert (await _title(api, "LAMP-1"))[0] == "Desk lamp"  # never stale, only slower


async def test_a_write_token_gives_read_your_writes(cdc_db: Database, cdc_dsn: str) -> None:
    async with cached_api(cdc_db, cdc_dsn) as api:
        await _setup(api)
        await api.ok("GET", "/v1/prices/LAMP-1")  # cached now
        for amount in range(2000, 2030):
            written = await api.call(
                "PUT", "/v1/prices/LAMP-1/eu", json={"currency": "EUR", "amount_minor": amount}
            )
            token = written.headers["consistency-token"]
            read = await api.call("GET", "/v1/prices/LAMP-1", headers={"Consistency-Token": token})
            assert read.json()[0]["amount_minor"] == amount
        bad = await api.call("GET", "/v1/prices/LAMP-1", headers={"Consistency-Token": "x1"})
        assert bad.status_code == 400


async def test_low_stock_is_never_served_from_a_cache(cdc_db: Database, cdc_dsn: str) -> None:
    async with cached_api(cdc_db, cdc_dsn) as api:
        await _setup(api)
        receipt = {"quantity": 5}
        await api.ok("POST", "/v1/stock/LAMP-1/eu-1/receipts", json=receipt)
        tiers = [
            (await api.call("GET", "/v1/stock/LAMP-1")).headers["retailsync-cache"]
            for _ in range(3)
        ]
        assert tiers == ["load", "load", "load"]  # 5 units <= the threshold of 20
        await settle(
            api, await api.call("POST", "/v1/stock/LAMP-1/eu-1/receipts", json={"quantity": 100})
        )
        seen = [
            (await api.call("GET", "/v1/stock/LAMP-1")).headers["retailsync-cache"]
            for _ in range(30)
        ]
        assert "l1" in seen  # well stocked: cached as volatile data


async def test_stale_while_revalidate_marks_what_it_serves(cdc_db: Database, cdc_dsn: str) -> None:
    classes = '{"semi-static": {"ttl_s": 0.2, "swr_s": 30, "early_beta": 0}}'
    async with cached_api(cdc_db, cdc_dsn, cache_classes=classes) as api:
        await _setup(api)
        assert (await _title(api, "LAMP-1"))[1] == "load"
        await asyncio.sleep(0.3)
        stale = await api.call("GET", "/v1/products/LAMP-1")
        assert stale.headers["retailsync-cache"] == "stale"
        assert "Stale" in stale.headers["warning"]
        await wait_until(lambda: api.reads.tiers.l1.get("product:LAMP-1") is not None)
        assert (await _title(api, "LAMP-1"))[1] == "l1"  # refreshed in the background


async def test_no_read_is_older_than_the_bound_under_a_write_storm(
    cdc_db: Database, cdc_dsn: str
) -> None:
    """Writers change titles directly in the database while readers read through the cache.
    A read is stale if a version committed more than BOUND before it started is newer than
    what it got. The bench measures the real bound; this asserts a generous one."""
    bound = 0.5
    skus = [f"SKU-{n}" for n in range(5)]
    async with cached_api(cdc_db, cdc_dsn) as api:
        for sku in skus:
            await _setup(api, sku)
        committed: dict[str, list[tuple[float, int]]] = {sku: [(0.0, 1)] for sku in skus}
        stop = time.monotonic() + 3.0
        stale: list[str] = []

        async def writer() -> None:
            while time.monotonic() < stop:
                sku = random.choice(skus)
                version = await cdc_db.fetchval(
                    "UPDATE products SET title = 'T' || version WHERE sku = $1 RETURNING version",
                    sku,
                )
                committed[sku].append((time.monotonic(), version))
                await asyncio.sleep(0.01)

        async def reader() -> None:
            while time.monotonic() < stop:
                sku = random.choice(skus)
                started = time.monotonic()
                got = (await api.ok("GET", f"/v1/products/{sku}"))["version"]
                due = max(v for at, v in committed[sku] if at < started - bound)
                if got < due:
                    stale.append(f"{sku}: read {got}, {due} was committed {bound} s before")

        await asyncio.gather(writer(), writer(), *(reader() for _ in range(8)))
        assert stale == []
        tiers = api.reads.tiers
        assert len(tiers.l1) > 0  # the cache was used, not bypassed
