"""Reads of the category views, for the routes: listing pages and facet counts.

Each answer carries the category's ``version``: a counter the consumer bumps in every
transaction that changes the category's listing or facets (and ``rebuild`` bumps too), so
it never repeats with other content and serves as the ETag of every page and sort of the
category. Rows and version are read in one snapshot.

A category with no products listed (never seen, or emptied) is not found.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec
from pydantic import Field, JsonValue

from retailsync.db.database import Connection
from retailsync.errors import NotFound, RequestInvalid
from retailsync.models import Entity
from retailsync.services.catalog import decode_cursor, encode_cursor
from retailsync.views.rebuild import snapshot

SortOrder = Literal["title", "sku"]
FacetValue = bool | int | float | str


class CategoryProduct(Entity):
    sku: str
    title: str
    attributes: dict[str, JsonValue]
    version: int
    in_stock: bool = Field(description="Available to promise somewhere (ATP total > 0)")


class CategoryPage(Entity):
    category: str
    sort: SortOrder
    items: list[CategoryProduct]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same sort) for the next page; null at the end"
    )
    version: int = Field(description="The category's view version (the ETag)")


class FacetCount(Entity):
    value: FacetValue
    count: int


class Facet(Entity):
    name: str
    values: list[FacetCount] = Field(description="Most frequent first, then by value")


class CategoryFacets(Entity):
    category: str
    products: int = Field(description="Products listed in the category and its subcategories")
    facets: list[Facet] = Field(description="By attribute name")
    version: int = Field(description="The category's view version (the ETag)")


_CURSOR = msgspec.json.Decoder(tuple[str, ...])


def _cursor_after(cursor: str, sort: SortOrder) -> tuple[str, ...]:
    try:
        position = _CURSOR.decode(decode_cursor(cursor))
    except msgspec.DecodeError as exc:
        raise RequestInvalid("cursor", "not a cursor this API returned") from exc
    if position[:1] != (sort,) or len(position) != (3 if sort == "title" else 2):
        raise RequestInvalid("cursor", f"not a cursor of a listing sorted by {sort}")
    return position[1:]


def _cursor_of(sort: SortOrder, row: asyncpg.Record) -> str:
    position = (sort, row["title"], row["sku"]) if sort == "title" else (sort, row["sku"])
    return encode_cursor(msgspec.json.encode(position).decode())


async def _category(conn: Connection, category: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT products, version FROM view_categories WHERE category = $1", category
    )
    if row is None or row["products"] == 0:
        raise NotFound("category", category)
    return row["products"], row["version"]


async def category_products(
    conn: Connection, category: str, sort: SortOrder, cursor: str | None, limit: int
) -> CategoryPage:
    """A page of the products in ``category`` and its subcategories, by title then sku, or by
    sku."""
    after = _cursor_after(cursor, sort) if cursor else None
    columns = "SELECT sku, title, attributes, version, in_stock FROM view_category_products"
    async with snapshot(conn, readonly=True):
        _, version = await _category(conn, category)
        if sort == "title":
            rows = await conn.fetch(
                f"{columns} WHERE category = $1 AND (title, sku) > ($2, $3) "
                "ORDER BY title, sku LIMIT $4",
                category,
                *(after or ("", "")),
                limit + 1,
            )
        else:
            rows = await conn.fetch(
                f"{columns} WHERE category = $1 AND sku > $2 ORDER BY sku LIMIT $3",
                category,
                after[0] if after else "",
                limit + 1,
            )
    items = [
        CategoryProduct(
            sku=r["sku"],
            title=r["title"],
            attributes=r["attributes"],
            version=r["version"],
            in_stock=r["in_stock"],
        )
        for r in rows[:limit]
    ]
    next_cursor = _cursor_of(sort, rows[limit - 1]) if len(rows) > limit else None
    return CategoryPage(
        category=category, sort=sort, items=items, next_cursor=next_cursor, version=version
    )


async def category_facets(conn: Connection, category: str) -> CategoryFacets:
    """Counts of the products in ``category`` and its subcategories per attribute value."""
    async with snapshot(conn, readonly=True):
        products, version = await _category(conn, category)
        rows = await conn.fetch(
            "SELECT name, value, count FROM view_facets WHERE category = $1 AND count > 0 "
            "ORDER BY name, count DESC, value",
            category,
        )
    facets: list[Facet] = []
    for row in rows:
        if not facets or facets[-1].name != row["name"]:
            facets.append(Facet(name=row["name"], values=[]))
        facets[-1].values.append(FacetCount(value=row["value"], count=row["count"]))
    return CategoryFacets(category=category, products=products, facets=facets, version=version)
