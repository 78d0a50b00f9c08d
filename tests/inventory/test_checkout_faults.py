"""kill -9 of `retailsync serve` in the middle of a checkout load on skus that are not hot:
every acknowledged order is in the database with its cart closed, and no hold is left
behind, and the stock balances. Twice: without an Idempotency-Key a cold cart's checkout is
one statement, hold and order, so one that died before it committed took its hold with it;
with one, the same statement runs in a transaction with the stored answer, killed while that
transaction is open."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from retailsync.db.database import Database
from retailsync.services import carts
from tests.inventory.conftest import stocked
from tests.inventory.test_faults import TunedServe, assert_stock_consistent, crash_when, new_key

pytestmark = [pytest.mark.slow, pytest.mark.processes]  # starts a server of its own

SKUS = [f"COLD-{n}" for n in range(20)]
CARTS = 1000
SHOPPERS = 8


async def open_carts(db: Database) -> list[str]:
    rng = random.Random(5)
    made = []
    async with db.transaction() as conn:
        for n in range(CARTS):
            cart = await carts.create_cart(conn, customer_id=f"shopper-{n}", region="eu")
            sku = rng.choice(SKUS)
            await carts.set_line(
                conn, cart.id, sku, quantity=rng.randint(1, 2), expected_version=None
            )
            made.append(str(cart.id))
    return made


@pytest.mark.parametrize("keyed", [False, True], ids=["one-statement", "idempotency-key"])
async def test_kill_9_mid_checkout_load_strands_no_stock(
    db: Database, database_dsn: str, keyed: bool
) -> None:
    await stocked(db, dict.fromkeys(SKUS, 200))
    _, secret = await new_key(db)
    queue = await open_carts(db)
    acked: dict[str, str] = {}  # cart -> order id, for each 201 a shopper got

    async def shopper(base_url: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=base_url, timeout=5, headers=headers) as client:
            while queue:
                cart = queue.pop()
                key = {"Idempotency-Key": f"checkout-{cart}"} if keyed else {}
                try:
                    response = await client.post("/v1/orders", json={"cart_id": cart}, headers=key)
                except httpx.HTTPError:
                    return  # the server is gone: this checkout's answer was lost
                assert response.status_code == 201, response.text
                acked[cart] = response.json()["id"]

    # No sku gets hot however fast the machine: every checkout takes the in-transaction path.
    settings = {"RETAILSYNC_LOG_LEVEL": "warning", "RETAILSYNC_HOT_SKU_RPS": "100000"}
    with TunedServe(database_dsn, settings=settings) as server:
        shoppers = [asyncio.create_task(shopper(server.base_url)) for _ in range(SHOPPERS)]

        # Without a key: a checkout's statement is running, and may commit after the worker
        # is gone. With one: a checkout's transaction is open between its statements.
        placing_now = (
            "state = 'idle in transaction'"
            if keyed
            else "query LIKE '%checkout_place(%' AND state = 'active'"
        )

        async def mid_checkout() -> bool:
            placing = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                f"AND {placing_now} AND pid <> pg_backend_pid()"
            )
            return len(acked) >= 50 and placing > 0

        await crash_when(server, shoppers, mid_checkout, "a checkout between hold and commit")

    async with db.connection() as conn, conn.transaction(isolation="repeatable_read"):
        # One snapshot: a dead client's COMMIT still in flight shows in both or neither.
        rows = await conn.fetch(
            "SELECT o.id, o.cart_id, o.status, h.strategy FROM orders o "
            "JOIN holds h ON h.id = o.hold_id"
        )
        closed = await conn.fetch("SELECT id FROM carts WHERE status = 'checked_out'")
        held = await conn.fetchval("SELECT count(*) FROM holds WHERE state = 'held'")
    orders = {str(row["cart_id"]): (str(row["id"]), row["status"]) for row in rows}
    assert {row["strategy"] for row in rows} == {"batched"}
    for cart, order_id in acked.items():
        assert orders.get(cart) == (order_id, "placed"), cart
    assert held == 0
    assert {str(row["id"]) for row in closed} == set(orders)  # acked, or committed unanswered
    await assert_stock_consistent(db, escrow_free_allowed=False)
