"""Products: upsert with optimistic concurrency, read, list a category subtree by cursor."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import asyncpg

from retailsync.db.database import Connection
from retailsync.errors import NotFound, RequestInvalid
from retailsync.models import AttributeValue, Product, ProductPage
from retailsync.services.versioned import write_versioned


def _product(row: asyncpg.Record) -> Product:
    return Product(
        sku=row["sku"],
        title=row["title"],
        category=row["category"],
        attributes=row["attributes"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


async def get_product(conn: Connection, sku: str) -> Product:
    row = await conn.fetchrow("SELECT * FROM products WHERE sku = $1", sku)
    if row is None:
        raise NotFound("product", sku)
    return _product(row)


async def upsert_product(
    conn: Connection,
    sku: str,
    *,
    title: str,
    category: str,
    attributes: Mapping[str, AttributeValue],
    expected_version: int | None = None,
    create_only: bool = False,
) -> tuple[Product, bool]:
    """Create or replace a product; return it and whether it was created."""
    row, created = await write_versioned(
        conn,
        table="products",
        kind="product",
        key={"sku": sku},
        values={"title": title, "category": category, "attributes": dict(attributes)},
        expected_version=expected_version,
        create_only=create_only,
    )
    return _product(row), created


def encode_cursor(sku: str) -> str:
    return base64.urlsafe_b64encode(sku.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise RequestInvalid("cursor", "not a cursor this API returned") from exc


async def list_products(
    conn: Connection, *, category: str | None, cursor: str | None, limit: int
) -> ProductPage:
    """Products in ``category`` and its subcategories (``a/b`` covers ``a/b/c``), by sku."""
    after = decode_cursor(cursor) if cursor else ""
    if category is None:
        rows = await conn.fetch(
            "SELECT * FROM products WHERE sku > $1 ORDER BY sku LIMIT $2", after, limit + 1
        )
    else:
        escaped = category.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await conn.fetch(
            "SELECT * FROM products WHERE (category = $1 OR category LIKE $2) AND sku > $3 "
            "ORDER BY sku LIMIT $4",
            category,
            escaped + "/%",
            after,
            limit + 1,
        )
    items = [_product(row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].sku) if len(rows) > limit else None
    return ProductPage(items=items, next_cursor=next_cursor)
