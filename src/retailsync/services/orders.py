"""Checkout and the order life cycle.

An order is placed from a hold (see ``retailsync.inventory``): checkout holds the cart's lines
through the reservation engine (so a hot sku's checkouts share group commits and escrow
instead of queueing on its row lock), then, in the caller's transaction, creates the order,
commits the hold into it and closes the cart. A hold taken elsewhere (``POST
/v1/reservations``) can be committed into an order the same way. Stock rows are always locked
in (sku, location) order, so checkouts and status changes cannot deadlock each other.

    placed -> paid -> shipped -> delivered        placed | paid -> cancelled (stock returns)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import InsufficientStock, InvalidTransition, NotFound, Refused
from retailsync.inventory.ledger import give_back, lock_stock_rows, require_owner
from retailsync.inventory.model import Hold, HoldRequest
from retailsync.models import Order, OrderLine, OrderStatus, StatusChange
from retailsync.services.allocation import Supply, allocate
from retailsync.services.carts import lock_open_cart
from retailsync.services.versioned import check_expected

if TYPE_CHECKING:
    from retailsync.inventory.engine import InventoryEngine

CHECKOUT_SCOPE = "checkout"  # idempotency scope of the holds checkout takes for itself
CHECKOUT_HOLD_TTL_MS = 60_000  # a checkout that dies between hold and order frees it by then
ANONYMOUS = "anonymous"  # the customer of an order committed from a hold that names none
_ALLOCATION_ATTEMPTS = 3

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


async def checkout(
    conn: Connection,
    cart_id: UUID,
    *,
    channel: str,
    engine: InventoryEngine,
    hold_id: UUID | None = None,
    owner: str | None = None,
) -> Order:
    """Place the cart's order from a hold: ``hold_id``, taken earlier (at "proceed to
    checkout"), or one taken now for the cart's lines, allocated in its region. The order and
    the hold's commit are one transaction (the caller's); a hold taken here and not committed
    is released, or expires."""
    cart = await lock_open_cart(conn, cart_id)
    lines = await conn.fetch(
        "SELECT sku, quantity FROM cart_lines WHERE cart_id = $1 ORDER BY sku", cart_id
    )
    if not lines:
        raise Refused("empty-cart", "the cart has no lines")
    wanted = {line["sku"]: line["quantity"] for line in lines}
    await _priced(conn, cart["region"], cart["currency"], list(wanted))  # refuse before holding
    if hold_id is not None:
        return await place_from_hold(conn, hold_id, channel=channel, cart=cart, owner=owner)
    hold = await _hold_cart(conn, engine, cart, wanted)
    try:
        return await place_from_hold(conn, hold.id, channel=channel, cart=cart)
    except BaseException:
        # Released once this transaction has rolled back: it may hold the hold row's lock.
        engine.release_soon(hold.id)
        raise


async def _hold_cart(
    conn: Connection, engine: InventoryEngine, cart: asyncpg.Record, wanted: Mapping[str, int]
) -> Hold:
    """Hold the cart's lines at the region's fullest locations. The allocation reads stock
    without locks; if a concurrent sale took units first, allocate again from fresh figures."""
    for attempt in range(_ALLOCATION_ATTEMPTS):
        supply = await conn.fetch(
            "SELECT s.sku, s.location, s.available "
            "FROM stock_levels s JOIN locations l ON l.id = s.location "
            "WHERE l.region = $1 AND s.sku = ANY($2) ORDER BY s.sku, s.location",
            cart["region"],
            list(wanted),
        )
        allocations, shortages = allocate(
            list(wanted.items()),
            [Supply(row["sku"], row["location"], row["available"]) for row in supply],
        )
        if shortages:
            raise InsufficientStock(shortages)
        request = HoldRequest.create(
            scope=CHECKOUT_SCOPE,
            key=str(uuid4()),
            lines=[(a.sku, a.location, a.quantity) for a in allocations],
            ttl_ms=CHECKOUT_HOLD_TTL_MS,
            customer_id=cart["customer_id"],
        )
        try:
            return await engine.hold(request)
        except InsufficientStock:
            if attempt == _ALLOCATION_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _priced(
    conn: Connection, region: str, currency: str | None, skus: list[str]
) -> tuple[str, dict[str, int]]:
    """The order's currency and each sku's unit price in the region; Refused if unpriced."""
    prices = await conn.fetch(
        "SELECT sku, currency, amount_minor FROM prices WHERE region = $1 AND sku = ANY($2)",
        region,
        skus,
    )
    chosen = _choose_currency(currency, skus, prices)
    return chosen, {row["sku"]: row["amount_minor"] for row in prices if row["currency"] == chosen}


async def place_from_hold(
    conn: Connection,
    hold_id: UUID,
    *,
    channel: str,
    cart: asyncpg.Record | None = None,
    currency: str | None = None,
    owner: str | None = None,
) -> Order:
    """Commit a hold into an order (in the caller's transaction). With ``cart``, the hold must
    cover exactly the cart's lines in its region, and the cart is closed. Committing a hold
    already committed (without a cart) answers its order again: a safe retry. ``owner``: the
    API key scope the hold must have been taken under (None: any)."""
    if owner is not None:
        await require_owner(conn, hold_id, owner)
    hold = await conn.fetchrow(
        "SELECT state, customer_id, order_id FROM holds WHERE id = $1 FOR UPDATE", hold_id
    )
    if hold is None:
        raise NotFound("reservation", str(hold_id))
    if hold["state"] == "committed" and cart is None:
        return await get_order(conn, hold["order_id"])
    if hold["state"] != "held":
        raise Refused(f"hold-{hold['state']}", f"the hold is {hold['state']}")
    # Read the clock once the row is ours: expiry, which takes the same lock, cannot pass now.
    clock = await conn.fetchrow(
        "SELECT t.now, h.expires_at <= t.now AS due "
        "FROM holds h, (SELECT clock_timestamp() AS now) AS t WHERE h.id = $1",
        hold_id,
    )
    assert clock is not None  # the row is locked by this transaction
    now = clock["now"]
    if clock["due"]:
        raise Refused("hold-expired", "the hold's time ran out; its stock is being given back")
    lines = await conn.fetch(
        "SELECT r.sku, r.quantity, l.region FROM reservations r "
        "JOIN locations l ON l.id = r.location WHERE r.hold_id = $1 AND r.state = 'held'",
        hold_id,
    )
    regions = {line["region"] for line in lines}
    if len(regions) != 1:
        raise Refused(
            "mixed-regions", f"an order is placed in one region; the hold spans {sorted(regions)}"
        )
    region = regions.pop()
    quantities: dict[str, int] = {}
    for line in lines:
        quantities[line["sku"]] = quantities.get(line["sku"], 0) + line["quantity"]
    if cart is not None:
        if hold["customer_id"] not in (None, cart["customer_id"]):
            # Else a customer could check out another's hold past their own purchase limit.
            raise Refused("hold-mismatch", "the hold was taken for another customer")
        rows = await conn.fetch(
            "SELECT sku, quantity FROM cart_lines WHERE cart_id = $1", cart["id"]
        )
        in_cart = {row["sku"]: row["quantity"] for row in rows}
        if cart["region"] != region or in_cart != quantities:
            raise Refused("hold-mismatch", "the hold does not cover exactly the cart's lines")
        currency = cart["currency"]
    skus = sorted(quantities)
    chosen, unit_price = await _priced(conn, region, currency, skus)
    customer = cart["customer_id"] if cart is not None else hold["customer_id"] or ANONYMOUS
    await conn.execute("INSERT INTO customers (id) VALUES ($1) ON CONFLICT DO NOTHING", customer)
    order_id: UUID = await conn.fetchval(
        "INSERT INTO orders (cart_id, hold_id, customer_id, region, channel, currency, "
        "total_minor) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        cart["id"] if cart is not None else None,
        hold_id,
        customer,
        region,
        channel,
        chosen,
        sum(unit_price[sku] * quantities[sku] for sku in skus),
    )
    await conn.execute(
        "INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor) "
        "SELECT $1, sku, quantity, price FROM unnest($2::text[], $3::int[], $4::bigint[]) "
        "AS l(sku, quantity, price)",
        order_id,
        skus,
        [quantities[sku] for sku in skus],
        [unit_price[sku] for sku in skus],
    )
    await conn.execute(
        "UPDATE reservations SET state = 'committed', order_id = $2 "
        "WHERE hold_id = $1 AND state = 'held'",
        hold_id,
        order_id,
    )
    await conn.execute(  # ended when it was found unexpired, so the two can never disagree
        "UPDATE holds SET state = 'committed', order_id = $2, ended_at = $3 WHERE id = $1",
        hold_id,
        order_id,
        now,
    )
    await _record_status(conn, order_id, None, OrderStatus.PLACED, channel)
    if cart is not None:
        await conn.execute(
            "UPDATE carts SET status = 'checked_out', currency = $2 WHERE id = $1",
            cart["id"],
            chosen,
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
        hold_id=row["hold_id"],
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
    if not ship:
        released = await conn.fetch(
            "UPDATE reservations r SET state = 'released' "
            "WHERE r.order_id = $1 AND r.state = 'committed' RETURNING r.sku, r.location, "
            "r.quantity, r.counted, (SELECT customer_id FROM holds WHERE id = r.hold_id)",
            order_id,
        )
        await give_back(conn, released)
        return
    reservations = await conn.fetch(
        "SELECT r.sku, r.location, r.quantity FROM reservations r "
        "WHERE r.order_id = $1 AND r.state = 'committed' ORDER BY r.sku, r.location",
        order_id,
    )
    skus = [r["sku"] for r in reservations]
    locations = [r["location"] for r in reservations]
    quantities = [r["quantity"] for r in reservations]
    await lock_stock_rows(conn, skus, locations)
    await conn.execute(
        "UPDATE stock SET reserved = stock.reserved - a.quantity, "
        "on_hand = stock.on_hand - a.quantity "
        "FROM unnest($1::text[], $2::text[], $3::int[]) AS a(sku, location, quantity) "
        "WHERE stock.sku = a.sku AND stock.location = a.location",
        skus,
        locations,
        quantities,
    )
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
        "UPDATE reservations SET state = 'fulfilled' WHERE order_id = $1 AND state = 'committed'",
        order_id,
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
