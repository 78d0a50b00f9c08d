"""Checkout and the order life cycle.

Checkout is one transaction: lock the cart, lock the region's stock rows for its skus in a
fixed (sku, location) order, reserve, create the order with committed reservations, close the
cart. Any failure rolls all of it back, which is what releases the stock. Stock rows are always
locked in (sku, location) order, so checkouts and status changes cannot deadlock each other.

    placed -> paid -> shipped -> delivered        placed | paid -> cancelled (stock returns)
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import InsufficientStock, InvalidTransition, NotFound, Refused
from retailsync.models import Order, OrderLine, OrderStatus, StatusChange
from retailsync.services.allocation import Supply, allocate
from retailsync.services.carts import lock_open_cart
from retailsync.services.versioned import check_expected

# Mirrors the order_status_transitions table, which the database enforces by trigger; a test
# keeps the two equal. Checked here first so a refusal is a clear 409, not a constraint error.
TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PLACED: frozenset({OrderStatus.PAID, OrderStatus.CANCELLED}),
    OrderStatus.PAID: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELLED}),
    OrderStatus.SHIPPED: frozenset({OrderStatus.DELIVERED}),
    OrderStatus.DELIVERED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}


def _choose_currency(
    cart_currency: str | None, skus: list[str], prices: list[asyncpg.Record]
) -> str:
    """The cart's currency, or the one currency every line is priced in."""
    priced: dict[str, set[str]] = {}
    for row in prices:
        priced.setdefault(row["currency"], set()).add(row["sku"])
    candidates = [cart_currency] if cart_currency else sorted(priced)
    complete = [c for c in candidates if priced.get(c, set()) >= set(skus)]
    if not complete:
        missing = sorted(set(skus) - set().union(*priced.values())) if priced else skus
        raise Refused("unpriced", f"no price in the cart's region and currency for: {missing}")
    if len(complete) > 1:
        raise Refused(
            "ambiguous-currency",
            f"lines are priced in several currencies {complete}; create the cart with a currency",
        )
    return complete[0]


async def checkout(conn: Connection, cart_id: UUID, *, channel: str) -> Order:
    cart = await lock_open_cart(conn, cart_id)
    lines = await conn.fetch(
        "SELECT sku, quantity FROM cart_lines WHERE cart_id = $1 ORDER BY sku", cart_id
    )
    if not lines:
        raise Refused("empty-cart", "the cart has no lines")
    skus = [line["sku"] for line in lines]
    prices = await conn.fetch(
        "SELECT sku, currency, amount_minor FROM prices WHERE region = $1 AND sku = ANY($2)",
        cart["region"],
        skus,
    )
    currency = _choose_currency(cart["currency"], skus, prices)
    unit_price = {row["sku"]: row["amount_minor"] for row in prices if row["currency"] == currency}
    supply = await conn.fetch(
        "SELECT s.sku, s.location, s.on_hand - s.reserved AS available "
        "FROM stock s JOIN locations l ON l.id = s.location "
        "WHERE l.region = $1 AND s.sku = ANY($2) ORDER BY s.sku, s.location FOR UPDATE OF s",
        cart["region"],
        skus,
    )
    allocations, shortages = allocate(
        [(line["sku"], line["quantity"]) for line in lines],
        [Supply(row["sku"], row["location"], row["available"]) for row in supply],
    )
    if shortages:
        raise InsufficientStock(shortages)
    alloc_skus = [a.sku for a in allocations]
    alloc_locations = [a.location for a in allocations]
    alloc_quantities = [a.quantity for a in allocations]
    await conn.execute(
        "UPDATE stock SET reserved = stock.reserved + a.quantity "
        "FROM unnest($1::text[], $2::text[], $3::int[]) AS a(sku, location, quantity) "
        "WHERE stock.sku = a.sku AND stock.location = a.location",
        alloc_skus,
        alloc_locations,
        alloc_quantities,
    )
    total = sum(unit_price[line["sku"]] * line["quantity"] for line in lines)
    order_id: UUID = await conn.fetchval(
        "INSERT INTO orders (cart_id, customer_id, region, channel, currency, total_minor) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        cart_id,
        cart["customer_id"],
        cart["region"],
        channel,
        currency,
        total,
    )
    await conn.execute(
        "INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor) "
        "SELECT $1, sku, quantity, price FROM unnest($2::text[], $3::int[], $4::bigint[]) "
        "AS l(sku, quantity, price)",
        order_id,
        skus,
        [line["quantity"] for line in lines],
        [unit_price[sku] for sku in skus],
    )
    await conn.execute(
        "INSERT INTO reservations (sku, location, quantity, state, order_id) "
        "SELECT sku, location, quantity, 'committed', $1 "
        "FROM unnest($2::text[], $3::text[], $4::int[]) AS a(sku, location, quantity)",
        order_id,
        alloc_skus,
        alloc_locations,
        alloc_quantities,
    )
    await _record_status(conn, order_id, None, OrderStatus.PLACED, channel)
    await conn.execute(
        "UPDATE carts SET status = 'checked_out', currency = $2 WHERE id = $1", cart_id, currency
    )
    return await get_order(conn, order_id)


async def _record_status(
    conn: Connection,
    order_id: UUID,
    from_status: OrderStatus | None,
    to_status: OrderStatus,
    channel: str,
) -> None:
    await conn.execute(
        "INSERT INTO order_status_history (order_id, seq, from_status, to_status, channel) "
        "SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4 "
        "FROM order_status_history WHERE order_id = $1",
        order_id,
        from_status,
        to_status,
        channel,
    )


async def get_order(conn: Connection, order_id: UUID) -> Order:
    row = await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)
    if row is None:
        raise NotFound("order", str(order_id))
    lines = await conn.fetch(
        "SELECT sku, quantity, unit_price_minor FROM order_lines WHERE order_id = $1 ORDER BY sku",
        order_id,
    )
    history = await conn.fetch(
        "SELECT from_status, to_status, channel, at FROM order_status_history "
        "WHERE order_id = $1 ORDER BY seq",
        order_id,
    )
    return Order(
        id=row["id"],
        cart_id=row["cart_id"],
        customer_id=row["customer_id"],
        region=row["region"],
        channel=row["channel"],
        currency=row["currency"],
        status=row["status"],
        lines=[
            OrderLine(
                sku=line["sku"],
                quantity=line["quantity"],
                unit_price_minor=line["unit_price_minor"],
                line_total_minor=line["quantity"] * line["unit_price_minor"],
            )
            for line in lines
        ],
        total_minor=row["total_minor"],
        history=[StatusChange(**dict(change)) for change in history],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _settle_reservations(conn: Connection, order_id: UUID, *, ship: bool) -> None:
    """Release (cancel) or fulfil (ship) an order's committed reservations."""
    reservations = await conn.fetch(
        "SELECT r.sku, r.location, r.quantity FROM reservations r "
        "WHERE r.order_id = $1 AND r.state = 'committed' ORDER BY r.sku, r.location",
        order_id,
    )
    skus = [r["sku"] for r in reservations]
    locations = [r["location"] for r in reservations]
    quantities = [r["quantity"] for r in reservations]
    # Lock in (sku, location) order, the same order checkout uses.
    await conn.execute(
        "SELECT 1 FROM stock s JOIN unnest($1::text[], $2::text[]) AS a(sku, location) "
        "ON s.sku = a.sku AND s.location = a.location ORDER BY s.sku, s.location FOR UPDATE OF s",
        skus,
        locations,
    )
    shipped = 1 if ship else 0
    await conn.execute(
        "UPDATE stock SET reserved = stock.reserved - a.quantity, "
        "on_hand = stock.on_hand - a.quantity * $4 "
        "FROM unnest($1::text[], $2::text[], $3::int[]) AS a(sku, location, quantity) "
        "WHERE stock.sku = a.sku AND stock.location = a.location",
        skus,
        locations,
        quantities,
        shipped,
    )
    if ship:
        await conn.execute(
            "INSERT INTO stock_movements (sku, location, delta, kind, reason) "
            "SELECT sku, location, -quantity, 'shipment', 'order ' || $1::text "
            "FROM unnest($2::text[], $3::text[], $4::int[]) AS a(sku, location, quantity)",
            str(order_id),
            skus,
            locations,
            quantities,
        )
    await conn.execute(
        "UPDATE reservations SET state = $2 WHERE order_id = $1 AND state = 'committed'",
        order_id,
        "fulfilled" if ship else "released",
    )


async def change_status(
    conn: Connection,
    order_id: UUID,
    status: OrderStatus,
    *,
    channel: str,
    expected_version: int | None = None,
) -> Order:
    row = await conn.fetchrow(
        "SELECT status, version FROM orders WHERE id = $1 FOR UPDATE", order_id
    )
    if row is None:
        raise NotFound("order", str(order_id))
    check_expected("order", {"id": order_id}, expected_version, row["version"])
    current = OrderStatus(row["status"])
    if status not in TRANSITIONS[current]:
        raise InvalidTransition(str(order_id), current.value, status.value)
    if status in (OrderStatus.CANCELLED, OrderStatus.SHIPPED):
        await _settle_reservations(conn, order_id, ship=status is OrderStatus.SHIPPED)
    await conn.execute("UPDATE orders SET status = $2 WHERE id = $1", order_id, status)
    await _record_status(conn, order_id, current, status, channel)
    return await get_order(conn, order_id)
