"""Concurrent writers: optimistic concurrency loses no update, and randomized histories of
checkouts, cancellations, shipments and receipts never oversell or corrupt stock."""

from __future__ import annotations

import asyncio
import random

import pytest

from retailsync.db.database import Database
from retailsync.services.audit import audit_stock
from tests.support import ADMIN, WAREHOUSE, WEB, Api, open_api


class TestLostUpdates:
    """50 writers each add their own attribute to one product by read-modify-write."""

    async def test_fifty_conflicting_writers_lose_nothing(
        self, db: Database, database_dsn: str
    ) -> None:
        # Traffic management off: here the writers must race each other, not the admission
        # gate (which sheds 50 clients at once; tests/traffic covers it).
        async with open_api(db, database_dsn, traffic_management=False) as api:
            await api.product("HOT-1", category="toys")
            conflicts = 0

            async def writer(index: int) -> None:
                nonlocal conflicts
                while True:
                    read = await api.call("GET", "/v1/products/HOT-1")
                    product = read.json()
                    attributes = {**product["attributes"], f"writer-{index}": index}
                    body = {"title": product["title"], "category": product["category"]}
                    response = await api.call(
                        "PUT",
                        "/v1/products/HOT-1",
                        json={**body, "attributes": attributes},
                        headers={"If-Match": read.headers["etag"]},
                    )
                    if response.status_code == 200:
                        return
                    assert response.status_code == 412
                    conflicts += 1

            await asyncio.gather(*[writer(i) for i in range(50)])
            final = await api.ok("GET", "/v1/products/HOT-1")
            assert final["attributes"] == {f"writer-{i}": i for i in range(50)}
            assert final["version"] == 51
            assert conflicts > 0  # the writers really did collide

    async def test_blind_concurrent_receipts_all_count(self, api: Api) -> None:
        await api.world()
        await asyncio.gather(*[api.receive("SKU-2", "eu-dc1", 1) for _ in range(50)])
        assert await api.available("SKU-2") == 150


class TestRandomHistories:
    """Random concurrent shoppers and warehouse staff, then a checker over the whole store."""

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_no_oversell_and_stock_reconciles(self, api: Api, seed: int) -> None:
        await api.world()
        skus = ["SKU-1", "SKU-2"]
        placed: dict[str, dict[str, int]] = {}
        cancelled: set[str] = set()
        received = {"SKU-1": 15, "SKU-2": 100}

        async def shopper(rng: random.Random) -> None:
            for _ in range(6):
                lines = {sku: rng.randint(1, 6) for sku in rng.sample(skus, rng.randint(1, 2))}
                response = await api.checkout(await api.cart(lines))
                assert response.status_code in (201, 409)
                if response.status_code != 201:
                    continue
                order = response.json()
                placed[order["id"]] = lines
                action = rng.choice(["keep", "cancel", "ship"])
                if action == "cancel":
                    assert (await api.status(order["id"], "cancelled", as_=WEB)).status_code == 200
                    cancelled.add(order["id"])
                elif action == "ship":
                    await api.status(order["id"], "paid", as_=WEB)
                    await api.status(order["id"], "shipped", as_=WAREHOUSE)

        async def warehouse(rng: random.Random) -> None:
            for _ in range(5):
                sku = rng.choice(skus)
                quantity = rng.randint(1, 4)
                await api.receive(sku, rng.choice(["eu-dc1", "eu-store1"]), quantity)
                received[sku] += quantity
                await asyncio.sleep(0)

        rng = random.Random(seed)
        await asyncio.gather(
            *[shopper(random.Random(rng.random())) for _ in range(8)],
            *[warehouse(random.Random(rng.random())) for _ in range(2)],
        )
        sold = {sku: 0 for sku in skus}
        for order_id, lines in placed.items():
            if order_id not in cancelled:
                for sku, quantity in lines.items():
                    sold[sku] += quantity
        for sku in skus:
            stock = await api.ok("GET", f"/v1/stock/{sku}", as_=ADMIN)
            assert sold[sku] <= received[sku]
            on_hand = sum(loc["on_hand"] for loc in stock["locations"])
            reserved = sum(loc["reserved"] for loc in stock["locations"])
            shipped = received[sku] - on_hand
            assert reserved + shipped == sold[sku]  # every acknowledged sale, counted once
        async with api.db.connection() as conn:
            audit = await audit_stock(conn)
        assert audit.ok, audit
