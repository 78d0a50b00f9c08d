"""Where a replicated register's value lives in the system of record, and how to write it.

A synced price or product field is two things: a register (in ``crdt_objects``) that merges
replicas' writes, and a column the plain API reads. A Source reads and writes that column and
says which values it accepts, so the register merge (``registers.py``) and the conflict
appliers (``appliers.py``) share one definition per field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from retailsync.db.database import Connection
from retailsync.errors import NotFound
from retailsync.services.prices import set_price

Parts = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SourceRow:
    value: Any
    version: int
    updated_ms: int  # when the row was last written, as an HLC wall time


@dataclass(frozen=True, slots=True)
class Source:
    read: Callable[[Connection, Parts], Awaitable[SourceRow | None]]
    write: Callable[[Connection, Parts, Any], Awaitable[int]]  # returns the row's new version
    accepts: Callable[[Any], bool]
    expects: str  # what ``accepts`` wants, for the error message


def _row(value: Any, version: int, updated_ms: float) -> SourceRow:
    return SourceRow(value, version, int(updated_ms))


_MS = "(extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms"


async def _read_price(conn: Connection, parts: Parts) -> SourceRow | None:
    row = await conn.fetchrow(
        f"SELECT amount_minor, version, {_MS} FROM prices "
        "WHERE sku = $1 AND region = $2 AND currency = $3",
        parts["sku"],
        parts["region"],
        parts["currency"],
    )
    return None if row is None else _row(row["amount_minor"], row["version"], row["updated_ms"])


async def _write_price(conn: Connection, parts: Parts, value: Any) -> int:
    price, _ = await set_price(
        conn, parts["sku"], parts["region"], currency=parts["currency"], amount_minor=value
    )
    return price.version


async def _read_product(conn: Connection, sku: str, column: str) -> SourceRow | None:
    row = await conn.fetchrow(
        f"SELECT {column} AS value, version, {_MS} FROM products WHERE sku = $1", sku
    )
    return None if row is None else _row(row["value"], row["version"], row["updated_ms"])


async def _write_product(conn: Connection, sku: str, column: str, value: Any) -> int:
    version: int | None = await conn.fetchval(
        f"UPDATE products SET {column} = $2 WHERE sku = $1 RETURNING version", sku, value
    )
    if version is None:
        raise NotFound("product", sku)
    return version


async def _read_title(conn: Connection, parts: Parts) -> SourceRow | None:
    return await _read_product(conn, parts["sku"], "title")


async def _write_title(conn: Connection, parts: Parts, value: Any) -> int:
    return await _write_product(conn, parts["sku"], "title", value)


def canonical_attributes(attributes: Mapping[str, Any]) -> str:
    """Attributes as a register value: a map is not hashable, its canonical JSON text is."""
    return json.dumps(attributes, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


async def _read_attributes(conn: Connection, parts: Parts) -> SourceRow | None:
    row = await _read_product(conn, parts["sku"], "attributes")
    if row is None:
        return None
    return SourceRow(canonical_attributes(row.value), row.version, row.updated_ms)


async def _write_attributes(conn: Connection, parts: Parts, value: Any) -> int:
    return await _write_product(conn, parts["sku"], "attributes", json.loads(value))


def _is_amount(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**62


def _is_title(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 200


def _is_attributes(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 16384:
        return False
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, dict) and canonical_attributes(parsed) == value


SOURCES: Mapping[str, Source] = {
    "price.amount_minor": Source(
        _read_price, _write_price, _is_amount, "an integer amount in minor units, >= 0"
    ),
    "product.title": Source(_read_title, _write_title, _is_title, "a title of 1-200 characters"),
    "product.attributes": Source(
        _read_attributes,
        _write_attributes,
        _is_attributes,
        "a JSON object as canonical text (sorted keys, no spaces)",
    ),
}
