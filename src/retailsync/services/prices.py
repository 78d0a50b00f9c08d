"""Prices per sku x region x currency, as integer minor units."""

from __future__ import annotations

import asyncpg

from retailsync.db.database import Connection
from retailsync.models import Price
from retailsync.services.locations import require_region
from retailsync.services.versioned import require_row, write_versioned


def _price(row: asyncpg.Record) -> Price:
    return Price(
        sku=row["sku"],
        region=row["region"],
        currency=row["currency"],
        amount_minor=row["amount_minor"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


async def set_price(
    conn: Connection,
    sku: str,
    region: str,
    *,
    currency: str,
    amount_minor: int,
    expected_version: int | None = None,
    create_only: bool = False,
) -> tuple[Price, bool]:
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    await require_region(conn, region)
    row, created = await write_versioned(
        conn,
        table="prices",
        kind="price",
        key={"sku": sku, "region": region, "currency": currency},
        values={"amount_minor": amount_minor},
        expected_version=expected_version,
        create_only=create_only,
    )
    return _price(row), created


async def get_prices(conn: Connection, sku: str) -> list[Price]:
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    rows = await conn.fetch("SELECT * FROM prices WHERE sku = $1 ORDER BY region, currency", sku)
    return [_price(row) for row in rows]
