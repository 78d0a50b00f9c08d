"""A checkout's hold in its own transaction (``InventoryEngine.hold_within``): a cold sku's
hold commits or rolls back with the order, so a checkout that fails, or whose process dies
before its commit, strands no stock; a hot sku's hold still goes through the engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from retailsync.db.database import Connection, Database
from retailsync.errors import InsufficientStock
from retailsync.inventory.check import check_inventory
from retailsync.inventory.engine import InventoryEngine
from retailsync.inventory.model import Policy, StrategyName
from retailsync.services import carts, orders
from tests.inventory.conftest import request, stocked


class RolledBack(Exception):
    pass


async def rolled_back(db: Database, work: Callable[[Connection], Awaitable[Any]]) -> Any:
    """``work``'s answer, from a transaction that then rolls back."""
    answer = None
    with contextlib.suppress(RolledBack):
        async with db.transaction() as conn:
            answer = await work(conn)
            raise RolledBack
    return answer


async def reserved(db: Database, sku: str) -> int:
    return int(
        await db.fetchval("SELECT coalesce(sum(reserved), 0) FROM stock_levels WHERE sku = $1", sku)
    )


async def assert_balanced(db: Database) -> None:
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    assert checked.ok, checked.problems()


async def test_a_cold_skus_hold_commits_with_the_callers_transaction(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 100})
    async with db.transaction() as conn:
        hold, within = await engine.hold_within(conn, request(("A", "eu-dc1", 3)))
        assert within
        assert hold.strategy == StrategyName.BATCHED
        assert await reserved(db, "A") == 0  # another connection: not committed yet
    assert await reserved(db, "A") == 3
    assert await db.fetchval("SELECT state FROM holds WHERE id = $1", hold.id) == "held"
    await assert_balanced(db)


async def test_a_cold_skus_hold_goes_with_the_callers_rollback(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 100})
    hold, within = await rolled_back(
        db, lambda conn: engine.hold_within(conn, request(("A", "eu-dc1", 3)))
    )
    assert within
    assert await reserved(db, "A") == 0
    assert await db.fetchval("SELECT count(*) FROM holds WHERE id = $1", hold.id) == 0
    await assert_balanced(db)


async def test_a_refused_hold_within_leaves_the_transaction_usable(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 2})
    async with db.transaction() as conn:
        with pytest.raises(InsufficientStock):
            await engine.hold_within(conn, request(("A", "eu-dc1", 3)))
        _, within = await engine.hold_within(conn, request(("A", "eu-dc1", 2)))
        assert within
    assert await reserved(db, "A") == 2
    await assert_balanced(db)


async def test_a_hot_skus_hold_takes_the_engines_path(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"HOT": 1000})
    await asyncio.gather(*[engine.hold(request(("HOT", "eu-dc1", 1))) for _ in range(120)])
    hold, within = await rolled_back(
        db, lambda conn: engine.hold_within(conn, request(("HOT", "eu-dc1", 1)))
    )
    assert not within
    assert hold.strategy == StrategyName.ESCROW
    # Committed on the engine's own connection: the caller's rollback did not take it.
    assert await db.fetchval("SELECT state FROM holds WHERE id = $1", hold.id) == "held"
    await engine.release(hold.id)
    # A cart with a hot line and a cold one: the hot row is not held for a transaction.
    await stocked(db, {"COLD": 10})
    hold, within = await rolled_back(
        db,
        lambda conn: engine.hold_within(conn, request(("HOT", "eu-dc1", 1), ("COLD", "eu-dc1", 1))),
    )
    assert not within
    await engine.release(hold.id)
    # After a refused attempt in the transaction, the next stays there whatever the sku.
    _, within = await rolled_back(
        db, lambda conn: engine.hold_within(conn, request(("HOT", "eu-dc1", 1)), locked=True)
    )
    assert within
    await assert_balanced(db)


async def test_a_sku_under_a_named_policy_takes_the_engines_path(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 100})
    engine.set_policy("A", Policy(StrategyName.BATCHED))
    hold, within = await rolled_back(
        db, lambda conn: engine.hold_within(conn, request(("A", "eu-dc1", 1)))
    )
    assert not within
    assert await db.fetchval("SELECT state FROM holds WHERE id = $1", hold.id) == "held"


async def test_a_checkout_that_rolls_back_holds_nothing(
    engine: InventoryEngine, db: Database
) -> None:
    """What a worker killed between the hold and the commit leaves: before, a hold of the
    cart's units until its TTL (a minute) ran out; now nothing."""
    await stocked(db, {"A": 10})
    async with db.transaction() as conn:
        cart = await carts.create_cart(conn, customer_id="c-1", region="eu")
        await carts.set_line(conn, cart.id, "A", quantity=4, expected_version=None)
    placed = await rolled_back(
        db, lambda conn: orders.checkout(conn, cart.id, channel="web", engine=engine)
    )
    assert placed.order.total_minor == 4 * 1000
    assert await reserved(db, "A") == 0
    assert await db.fetchval("SELECT count(*) FROM holds") == 0
    assert await db.fetchval("SELECT status FROM carts WHERE id = $1", cart.id) == "open"
    async with db.transaction() as conn:  # the cart checks out afterwards, all of it
        placed = await orders.checkout(conn, cart.id, channel="web", engine=engine)
    assert await reserved(db, "A") == 4
    await assert_balanced(db)
