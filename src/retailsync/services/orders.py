"""Checkout and the order life cycle.

An order is placed from a hold (see ``retailsync.inventory``): checkout holds the cart's lines
through the reservation engine, then, in the caller's transaction, creates the order, commits
the hold into it and closes the cart. A cold sku's hold is written in that same transaction
(one commit for hold and order; a checkout that fails or dies before it strands no stock); a
hot sku's goes through escrow on the engine's connections, so its checkouts do not queue on
its row lock. A hold taken elsewhere (``POST /v1/reservations``) can be committed into an
order the same way. Stock rows are always locked in (sku, location) order, so checkouts and
status changes cannot deadlock each other.

A cart of cold skus (none hot, in escrow or with a policy of its own) is checked out in one
call, ``checkout_place`` (migration 0014): lock, allocate, hold and order in one statement,
which is its own transaction when the request has no Idempotency-Key. Any other is three
calls: ``checkout_cart`` (lock the cart, read its lines and their supply, and the
transaction's id for the consistency token), the hold (``inventory_hold_batch``, here or on
the engine's connections), and ``order_place`` (migration 0013). The rules live in those
functions; ``allocate`` here is the reference that ``checkout_place``'s allocation is tested
against.

    placed -> paid -> shipped -> delivered        placed | paid -> cancelled (stock returns)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from retailsync.db.database import Connection
from retailsync.errors import InsufficientStock, InvalidTransition, NotFound
from retailsync.inventory.ledger import give_back, lock_stock_rows
from retailsync.inventory.model import Hold, HoldRequest, StrategyName
from retailsync.models import Order, OrderStatus
from retailsync.services.allocation import Allocation, Supply, allocate
from retailsync.services.sql_refusals import sql_refusals
from retailsync.services.versioned import check_expected

if TYPE_CHECKING:
    from retailsync.inventory.engine import InventoryEngine

CHECKOUT_SCOPE = "checkout"  # idempotency scope of the holds checkout takes for itself
CHECKOUT_HOLD_TTL_MS = 60_000  # an escrow hold of a checkout that died: freed by then
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


@dataclass(frozen=True, slots=True)
class Placed:
    order: Order
    transaction_id: str  # of the caller's transaction: the answer's consistency token


async def checkout(
    conn: Connection,
    cart_id: UUID,
    *,
    channel: str,
    engine: InventoryEngine,
    hold_id: UUID | None = None,
    owner: str | None = None,
    in_one_call: bool = True,
) -> Placed:
    """Place the cart's order from a hold: ``hold_id``, taken earlier (at "proceed to
    checkout"), or one taken now for the cart's lines, allocated in its region. The order and
    the hold's commit are one transaction (the caller's); a hold taken here and not committed
    is released, or expires. The transaction's id comes with the cart: asked for on its own,
    it was one round trip of six, on the path that has the least time to spare at a peak.
    ``in_one_call``: try ``checkout_place`` first (False: the caller just learnt that it
    would not do)."""
    tried = None
    if hold_id is None and in_one_call:
        tried = await _try_in_one_call(conn, cart_id, channel, engine)
    if isinstance(tried, Placed):
        return tried
    if tried is not None:
        answer, transaction_id = tried
    else:
        with sql_refusals():  # locks the cart; refuses an empty or unpriced one before holding
            row = await conn.fetchrow(
                "SELECT jsonb_build_object('cart', checkout_cart($1)) AS answer, "
                "pg_current_xact_id()::text AS xact",
                cart_id,
            )
        assert row is not None  # one row, always
        answer, transaction_id = row["answer"], row["xact"]
    cart = answer["cart"]
    if hold_id is not None:
        order = await place_from_hold(conn, hold_id, channel=channel, cart_id=cart_id, owner=owner)
        return Placed(order, transaction_id)
    hold, within = await _hold_cart(conn, engine, cart, locked=answer.get("locked", False))
    try:
        return Placed(
            await place_from_hold(conn, hold.id, channel=channel, cart_id=cart_id),
            transaction_id,
        )
    except BaseException:
        if not within:  # a hold in this transaction goes with its rollback
            # Released once this transaction has rolled back: it may hold the hold row's lock.
            engine.release_soon(hold.id)
        raise


async def checkout_at_once(
    conn: Connection, cart_id: UUID, *, channel: str, engine: InventoryEngine
) -> Placed | None:
    """Check the cart out in one statement, outside any transaction (it is its own): what a
    cart of cold skus takes (see ``checkout_place``, migration 0014). None: the cart needs
    ``checkout``'s way, in a transaction; nothing was written. A cart its region cannot cover,
    escrow lanes included, is refused here, without that second pass."""
    tried = await _try_in_one_call(conn, cart_id, channel, engine)
    if tried is None or isinstance(tried, Placed):
        return tried
    answer, _ = tried
    if answer["locked"]:  # the rows alone fell short: units in escrow may still cover it
        _allocate_cart(answer["cart"], answer["cart"]["supply"])
    return None


async def _try_in_one_call(
    conn: Connection, cart_id: UUID, channel: str, engine: InventoryEngine
) -> Placed | tuple[dict[str, Any], str] | None:
    """``checkout_place``'s order, or its answer and the transaction's id when it left the cart
    to the slower way; None when it cannot be asked (the default strategy is not AUTO, so no
    sku is the database's alone)."""
    engine_skus = engine.engine_skus()
    if engine_skus is None:
        return None
    with sql_refusals():  # an unknown, closed, empty or unpriced cart is refused
        row = await conn.fetchrow(
            "SELECT checkout_place($1, $2, $3, $4, $5, $6) AS answer, "
            "pg_current_xact_id()::text AS xact",
            cart_id, channel, engine_skus, CHECKOUT_SCOPE, CHECKOUT_HOLD_TTL_MS,
            StrategyName.BATCHED,
        )  # fmt: skip
    assert row is not None  # one row, always
    answer, transaction_id = row["answer"], row["xact"]
    if "order" not in answer:
        return answer, transaction_id
    order = Order.model_validate(answer["order"])
    engine.count_within([(line.sku, line.quantity) for line in order.lines])
    return Placed(order, transaction_id)


def _allocate_cart(cart: dict[str, Any], supply: list[list[Any]]) -> list[Allocation]:
    """The cart's lines at the region's fullest locations (``supply``: checkout_supply's
    rows); InsufficientStock when any line falls short."""
    wanted = list(zip(cart["skus"], cart["quantities"], strict=True))
    allocations, shortages = allocate(wanted, [Supply(*row) for row in supply])
    if shortages:
        raise InsufficientStock(shortages)
    return allocations


async def _hold_cart(
    conn: Connection, engine: InventoryEngine, cart: dict[str, Any], *, locked: bool
) -> tuple[Hold, bool]:
    """Hold the cart's lines at the region's fullest locations, in this transaction where the
    engine can (see ``InventoryEngine.hold_within``; the flag says whether it did). The
    allocation reads stock without locks; if a concurrent sale took units first, allocate
    again from fresh figures. ``locked``: the transaction holds stock rows already."""
    supply = cart["supply"]
    for attempt in range(_ALLOCATION_ATTEMPTS):
        allocations = _allocate_cart(cart, supply)
        request = HoldRequest.create(
            scope=CHECKOUT_SCOPE,
            key=str(uuid4()),
            lines=[(a.sku, a.location, a.quantity) for a in allocations],
            ttl_ms=CHECKOUT_HOLD_TTL_MS,
            customer_id=cart["customer_id"],
        )
        try:
            # After a refusal, the transaction may hold the refused attempt's stock rows.
            return await engine.hold_within(conn, request, locked=locked or attempt > 0)
        except InsufficientStock:
            if attempt == _ALLOCATION_ATTEMPTS - 1:
                raise
        supply = await conn.fetchval("SELECT checkout_supply($1, $2)", cart["region"], cart["skus"])
    raise AssertionError("unreachable")


async def place_from_hold(
    conn: Connection,
    hold_id: UUID,
    *,
    channel: str,
    cart_id: UUID | None = None,
    currency: str | None = None,
    owner: str | None = None,
) -> Order:
    """Commit a hold into an order (in the caller's transaction). With ``cart_id`` (a cart
    this transaction locked through ``checkout_cart``), the hold must cover exactly the cart's
    lines in its region, and the cart is closed. Committing a hold already committed (without
    a cart) answers its order again: a safe retry. ``owner``: the API key scope the hold must
    have been taken under (None: any). One call: ``order_place`` (migration 0013)."""
    with sql_refusals():
        document = await conn.fetchval(
            "SELECT order_place($1, $2, $3, $4, $5, $6)",
            hold_id,
            channel,
            cart_id,
            currency,
            owner,
            ANONYMOUS,
        )
    return Order.model_validate(document)


async def _record_status(
    conn: Connection,
    order_id: UUID,
    from_status: OrderStatus | None,
    to_status: OrderStatus,
    channel: str,
) -> None:
    await conn.execute(
        "SELECT order_record_status($1, $2, $3, $4)", order_id, from_status, to_status, channel
    )


async def get_order(conn: Connection, order_id: UUID) -> Order:
    document = await conn.fetchval("SELECT order_document($1)", order_id)
    if document is None:
        raise NotFound("order", str(order_id))
    return Order.model_validate(document)


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
