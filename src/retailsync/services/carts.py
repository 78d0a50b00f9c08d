"""Carts: one per shopping session, lines keyed by sku. Every line change bumps the cart's
version, so a client that names the version it read (If-Match) cannot overwrite a change it
did not see."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import CartNotOpen, NotFound, Refused
from retailsync.models import Cart, CartLine
from retailsync.services.locations import require_region
from retailsync.services.versioned import check_expected, require_row

MAX_LINES = 100


async def create_cart(
    conn: Connection, *, customer_id: str, region: str, currency: str | None = None
) -> Cart:
    await require_region(conn, region)
    await conn.execute("INSERT INTO customers (id) VALUES ($1) ON CONFLICT DO NOTHING", customer_id)
    cart_id: UUID = await conn.fetchval(
        "INSERT INTO carts (customer_id, region, currency) VALUES ($1, $2, $3) RETURNING id",
        customer_id,
        region,
        currency,
    )
    return await get_cart(conn, cart_id)


async def get_cart(conn: Connection, cart_id: UUID) -> Cart:
    row = await conn.fetchrow("SELECT * FROM carts WHERE id = $1", cart_id)
    if row is None:
        raise NotFound("cart", str(cart_id))
    lines = await conn.fetch(
        "SELECT sku, quantity FROM cart_lines WHERE cart_id = $1 ORDER BY added_at, sku", cart_id
    )
    return _cart(row, lines)


def _cart(row: asyncpg.Record, lines: list[asyncpg.Record]) -> Cart:
    return Cart(
        id=row["id"],
        customer_id=row["customer_id"],
        region=row["region"],
        currency=row["currency"],
        status=row["status"],
        lines=[CartLine(sku=line["sku"], quantity=line["quantity"]) for line in lines],
        version=row["version"],
        updated_at=row["updated_at"],
    )


async def lock_open_cart(
    conn: Connection, cart_id: UUID, expected_version: int | None = None
) -> asyncpg.Record:
    """Lock the cart row for this transaction; refuse a closed cart or a stale version."""
    row = await conn.fetchrow("SELECT * FROM carts WHERE id = $1 FOR UPDATE", cart_id)
    if row is None:
        raise NotFound("cart", str(cart_id))
    check_expected("cart", {"id": cart_id}, expected_version, row["version"])
    if row["status"] != "open":
        raise CartNotOpen(str(cart_id), row["status"])
    return row


async def _bump(conn: Connection, cart_id: UUID) -> Cart:
    await conn.execute("UPDATE carts SET status = status WHERE id = $1", cart_id)  # touch_row
    return await get_cart(conn, cart_id)


async def set_line(
    conn: Connection,
    cart_id: UUID,
    sku: str,
    *,
    quantity: int,
    expected_version: int | None = None,
) -> Cart:
    await lock_open_cart(conn, cart_id, expected_version)
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    existing = await conn.fetchval(
        "SELECT count(*) FROM cart_lines WHERE cart_id = $1 AND sku <> $2", cart_id, sku
    )
    if existing >= MAX_LINES:
        raise Refused("too-many-lines", f"a cart holds at most {MAX_LINES} lines")
    await conn.execute(
        "INSERT INTO cart_lines (cart_id, sku, quantity) VALUES ($1, $2, $3) "
        "ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = EXCLUDED.quantity",
        cart_id,
        sku,
        quantity,
    )
    return await _bump(conn, cart_id)


async def remove_line(
    conn: Connection, cart_id: UUID, sku: str, *, expected_version: int | None = None
) -> Cart:
    """Remove a line. Removing a line that is not there changes nothing (a safe retry)."""
    await lock_open_cart(conn, cart_id, expected_version)
    removed = await conn.fetchval(
        "DELETE FROM cart_lines WHERE cart_id = $1 AND sku = $2 RETURNING sku", cart_id, sku
    )
    if removed is None:
        return await get_cart(conn, cart_id)
    return await _bump(conn, cart_id)
