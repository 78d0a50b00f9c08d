"""Stock per sku x location: warehouse receipts and adjustments, and the stock view.

``available = on_hand - reserved``; the database's CHECKs keep ``0 <= reserved <= on_hand``.
Channels see stock through the ``stock_levels`` view, where units in escrow allotments count
as available (an engine lane sells them) rather than reserved.
Receipts and adjustments are deltas, so concurrent ones commute and none is lost; a write may
still name the version it read (If-Match) when the client wants to act on what it saw.
Every change to on_hand is recorded in stock_movements, the trail the oversell check reads.
"""

from __future__ import annotations

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import InsufficientStock, NotFound, Shortage
from retailsync.models import StockAtLocation, StockLevel
from retailsync.services.versioned import check_expected, current_version, require_row


def _at_location(row: asyncpg.Record, region: str) -> StockAtLocation:
    return StockAtLocation(
        location=row["location"],
        region=region,
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        available=row["available"],
        version=row["version"],
    )


async def _region_of(conn: Connection, location: str) -> str:
    region: str | None = await conn.fetchval("SELECT region FROM locations WHERE id = $1", location)
    if region is None:
        raise NotFound("location", location)
    return region


async def require_stock_place(conn: Connection, sku: str, location: str) -> str:
    """The region of ``location``, once the product and the location are known to exist."""
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    return await _region_of(conn, location)


async def _move(
    conn: Connection,
    sku: str,
    location: str,
    *,
    delta: int,
    kind: str,
    reason: str,
    expected_version: int | None,
) -> StockAtLocation:
    """Add ``delta`` to on_hand, refusing to go below what is reserved."""
    region = await require_stock_place(conn, sku, location)
    key = {"sku": sku, "location": location}
    if expected_version is not None:
        current = await current_version(conn, table="stock", key=key, lock=True)
        if current is None:
            raise NotFound("stock", f"{sku}/{location}")
        check_expected("stock", key, expected_version, current)
    if delta > 0:
        row = await conn.fetchrow(
            "INSERT INTO stock (sku, location, on_hand) VALUES ($1, $2, $3) "
            "ON CONFLICT (sku, location) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand "
            "RETURNING 1",
            sku,
            location,
            delta,
        )
    else:
        row = await conn.fetchrow(
            "UPDATE stock SET on_hand = on_hand + $3 "
            "WHERE sku = $1 AND location = $2 AND on_hand + $3 >= reserved RETURNING 1",
            sku,
            location,
            delta,
        )
        if row is None:
            level = await conn.fetchrow(
                "SELECT available FROM stock_levels WHERE sku = $1 AND location = $2",
                sku,
                location,
            )
            available = level["available"] if level else 0
            raise InsufficientStock([Shortage(sku, -delta, available)])
    await conn.execute(
        "INSERT INTO stock_movements (sku, location, delta, kind, reason) "
        "VALUES ($1, $2, $3, $4, $5)",
        sku,
        location,
        delta,
        kind,
        reason,
    )
    level = await conn.fetchrow(
        "SELECT * FROM stock_levels WHERE sku = $1 AND location = $2", sku, location
    )
    assert level is not None
    return _at_location(level, region)


async def receive(
    conn: Connection,
    sku: str,
    location: str,
    *,
    quantity: int,
    expected_version: int | None = None,
    reason: str = "receipt",
) -> StockAtLocation:
    """Goods arrived at a location (warehouse receipt)."""
    return await _move(
        conn,
        sku,
        location,
        delta=quantity,
        kind="receipt",
        reason=reason,
        expected_version=expected_version,
    )


async def adjust(
    conn: Connection,
    sku: str,
    location: str,
    *,
    delta: int,
    reason: str,
    expected_version: int | None = None,
) -> StockAtLocation:
    """A stock-take correction, damage, loss: may not take on_hand below what is reserved."""
    return await _move(
        conn,
        sku,
        location,
        delta=delta,
        kind="adjustment",
        reason=reason,
        expected_version=expected_version,
    )


async def get_stock(conn: Connection, sku: str) -> StockLevel:
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    rows = await conn.fetch(
        "SELECT s.*, l.region FROM stock_levels s JOIN locations l ON l.id = s.location "
        "WHERE s.sku = $1 ORDER BY s.location",
        sku,
    )
    locations = [_at_location(row, row["region"]) for row in rows]
    return StockLevel(
        sku=sku, available=sum(loc.available for loc in locations), locations=locations
    )
