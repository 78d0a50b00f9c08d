"""A cold cart's checkout in one statement (``checkout_place``, migration 0014, through
``orders.checkout_at_once`` and ``orders.checkout``): it allocates as ``allocate`` does, writes
what the three calls wrote, and leaves every cart it should not take to the slower way with
nothing written."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retailsync.db.database import Connection, Database
from retailsync.errors import InsufficientStock
from retailsync.inventory.engine import InventoryEngine
from retailsync.inventory.escrow import allot, give_back
from retailsync.inventory.model import Policy, StrategyName
from retailsync.inventory.policies import set_policy
from retailsync.services import carts, orders
from retailsync.services.allocation import Supply, allocate
from tests.inventory.conftest import LOCATIONS, request, stocked
from tests.inventory.test_hold_within import assert_balanced, rolled_back

SKUS = ("A", "B", "C")


async def cart_of(conn: Connection, lines: dict[str, int], customer: str = "c-1") -> UUID:
    cart = await carts.create_cart(conn, customer_id=customer, region="eu")
    for sku, quantity in lines.items():
        await carts.set_line(conn, cart.id, sku, quantity=quantity, expected_version=None)
    return cart.id


async def place(conn: Connection, cart: UUID, engine_skus: list[str]) -> dict[str, Any]:
    answer: dict[str, Any] = await conn.fetchval(
        "SELECT checkout_place($1, 'web', $2, $3, $4, $5)",
        cart, engine_skus, orders.CHECKOUT_SCOPE, orders.CHECKOUT_HOLD_TTL_MS,
        StrategyName.BATCHED,
    )  # fmt: skip
    return answer


async def written(db: Database) -> tuple[int, int, int]:
    """(orders, holds, units reserved): what a checkout that wrote nothing leaves as it was."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM holds), "
        "(SELECT coalesce(sum(reserved), 0) FROM stock)"
    )
    assert row is not None
    return row[0], row[1], row[2]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    free=st.lists(st.integers(0, 6), min_size=len(SKUS) * 2, max_size=len(SKUS) * 2),
    wanted=st.dictionaries(st.sampled_from(SKUS), st.integers(1, 12), min_size=1),
)
async def test_it_allocates_as_allocate_does(
    db: Database, free: list[int], wanted: dict[str, int]
) -> None:
    """Each line from the fullest of the region's locations first (ties by location), the
    same reservations ``allocate`` chooses; a cart the rows cannot cover is left alone."""
    await db.execute("TRUNCATE products, prices, stock, locations, regions CASCADE")
    await stocked(db, dict.fromkeys(SKUS, 1))  # then set to `free` below
    supply = [
        Supply(sku, location, units)
        for (sku, location), units in zip(
            [(sku, location) for sku in SKUS for location in LOCATIONS], free, strict=True
        )
    ]
    for item in supply:
        await db.execute(
            "UPDATE stock SET on_hand = $3 WHERE sku = $1 AND location = $2",
            item.sku, item.location, item.available,
        )  # fmt: skip
    allocations, shortages = allocate(sorted(wanted.items()), supply)

    async def checkout(conn: Connection) -> tuple[dict[str, Any], list[Any]]:
        answer = await place(conn, await cart_of(conn, wanted), [])
        rows = await conn.fetch(
            "SELECT sku, location, quantity, state FROM reservations ORDER BY sku, location"
        )
        return answer, rows

    answer, rows = await rolled_back(db, checkout)
    if shortages:
        assert answer["locked"] is True
        assert "order" not in answer
        assert rows == []
    else:
        assert "order" in answer
        expected = sorted((a.sku, a.location, a.quantity) for a in allocations)
        assert [(r["sku"], r["location"], r["quantity"]) for r in rows] == expected
        assert {r["state"] for r in rows} == {"committed"}


async def test_a_checkout_at_once_writes_what_the_three_calls_wrote(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 3, "B": 10})
    async with db.transaction() as conn:
        one = await cart_of(conn, {"A": 4, "B": 1})
        other = await cart_of(conn, {"A": 1, "B": 2}, customer="c-2")
    async with db.connection() as conn:
        placed = await orders.checkout_at_once(conn, one, channel="web", engine=engine)
    assert placed is not None
    async with db.transaction() as conn:  # the old way, for comparison
        slower = await orders.checkout(conn, other, channel="web", engine=engine, in_one_call=False)
    for made in (placed, slower):
        order = made.order
        assert order.status == "placed"
        assert [h.to_status for h in order.history] == ["placed"]
        hold = await db.fetchrow(
            "SELECT state, order_id, key_scope, strategy FROM holds WHERE id = $1", order.hold_id
        )
        assert dict(hold) == {
            "state": "committed", "order_id": order.id, "key_scope": orders.CHECKOUT_SCOPE,
            "strategy": "batched",
        }  # fmt: skip
        assert made.transaction_id
    assert placed.order.total_minor == 5 * 1000
    assert [(line.sku, line.quantity) for line in placed.order.lines] == [("A", 4), ("B", 1)]
    # A's 4 units: 3 at one location and 1 at the other.
    assert await db.fetchval(
        "SELECT count(*) FROM reservations WHERE sku = 'A' AND order_id = $1", placed.order.id
    ) == 2  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM carts WHERE status = 'checked_out'") == 2
    assert await db.fetchval("SELECT sum(reserved) FROM stock") == 8
    await assert_balanced(db)


async def test_it_leaves_a_cart_it_should_not_take_with_nothing_written(
    engine: InventoryEngine, db: Database
) -> None:
    """A sku the engine must hold, a sku under a policy, a line the rows cannot cover: no
    order, no hold, no unit reserved, and the slower way then decides."""
    await stocked(db, {"HOT": 50, "LIMITED": 50, "SHORT": 2})
    async with db.transaction() as conn:
        await set_policy(conn, "LIMITED", Policy(StrategyName.AUTO, per_customer_limit=2))
        hot = await cart_of(conn, {"HOT": 1})
        limited = await cart_of(conn, {"LIMITED": 1}, customer="c-2")
        short = await cart_of(conn, {"SHORT": 5}, customer="c-3")
    before = await written(db)
    async with db.transaction() as conn:
        assert (await place(conn, hot, ["HOT"]))["locked"] is False
        assert (await place(conn, limited, []))["locked"] is False
        assert (await place(conn, short, []))["locked"] is True
    assert await written(db) == before
    await engine.refresh_policies()
    async with db.connection() as conn:
        assert await orders.checkout_at_once(conn, limited, channel="web", engine=engine) is None
        with pytest.raises(InsufficientStock) as refused:  # no units anywhere: refused at once
            await orders.checkout_at_once(conn, short, channel="web", engine=engine)
    assert [(s.sku, s.requested, s.available) for s in refused.value.shortages] == [("SHORT", 5, 4)]
    assert await written(db) == before
    with pytest.raises(InsufficientStock):  # the rows were locked: the retries stay with them
        async with db.transaction() as conn:
            await orders.checkout(conn, short, channel="web", engine=engine)
    async with db.transaction() as conn:  # the engine's way: the purchase limit is counted
        placed = await orders.checkout(conn, limited, channel="web", engine=engine)
    assert await db.fetchval(
        "SELECT counted FROM reservations WHERE order_id = $1", placed.order.id
    )
    await assert_balanced(db)


async def test_units_in_another_process_escrow_leave_the_cart_to_the_slower_way(
    engine: InventoryEngine, db: Database
) -> None:
    """The rows alone fall short but another process's escrow lane holds the rest: not a
    refusal by checkout_place (only the engines can give those units back), and nothing
    written; once the lane has given them back, the one statement takes the cart."""
    await stocked(db, {"A": 3})  # 3 at each of two locations
    other, place_ = "other-process/0", ("A", LOCATIONS[0])
    async with db.transaction() as conn:
        assert (await allot(conn, other, place_, need=2, wanted=2, floor=0, lease_s=60))[0] == 2
        cart = await cart_of(conn, {"A": 5})
    before = await written(db)
    async with db.connection() as conn:
        assert await orders.checkout_at_once(conn, cart, channel="web", engine=engine) is None
        assert await written(db) == before
        async with conn.transaction():
            await give_back(conn, [other], [place_])
        placed = await orders.checkout_at_once(conn, cart, channel="web", engine=engine)
    assert placed is not None
    assert [(line.sku, line.quantity) for line in placed.order.lines] == [("A", 5)]
    await assert_balanced(db)


async def test_skus_turn_to_the_engine_as_they_get_hot(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 1000, "B": 1000})
    assert engine.engine_skus() == []
    engine.count_within([("A", 1)] * int(engine.config.hot_rps))
    assert engine.engine_skus() == ["A"]


async def test_a_sku_in_this_process_escrow_is_left_to_the_engine(
    engine: InventoryEngine, db: Database
) -> None:
    """Units of B sit in this engine's lanes: its carts take the engine's way (which can sell
    from the lanes), and the one statement leaves them with nothing written."""
    await stocked(db, {"A": 100, "B": 100})
    await engine.hold(request(("B", LOCATIONS[0], 1)), strategy=StrategyName.ESCROW)
    assert engine.engine_skus() == ["B"]
    async with db.transaction() as conn:
        cart = await cart_of(conn, {"A": 1, "B": 2})
    before = await written(db)
    async with db.connection() as conn:
        assert await orders.checkout_at_once(conn, cart, channel="web", engine=engine) is None
    assert await written(db) == before
    async with db.transaction() as conn:
        placed = await orders.checkout(conn, cart, channel="web", engine=engine)
    assert [(line.sku, line.quantity) for line in placed.order.lines] == [("A", 1), ("B", 2)]
