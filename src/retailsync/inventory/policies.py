"""Reservation policies per sku: the strategy its holds take, a purchase limit per customer,
the low-stock threshold below which its last units are sold from the row alone.

A purchase limit counts the units a customer holds or bought while the limit was set: holds
taken before it are not counted against it (and give nothing back when they end).
"""

from __future__ import annotations

from retailsync.db.database import Connection
from retailsync.inventory.model import Policy
from retailsync.models import ReservationPolicy
from retailsync.services.versioned import require_row


def _policy(row: object) -> ReservationPolicy:
    return ReservationPolicy.model_validate(dict(row))  # type: ignore[call-overload]


async def set_policy(conn: Connection, sku: str, policy: Policy) -> ReservationPolicy:
    await require_row(conn, table="products", kind="product", key={"sku": sku})
    row = await conn.fetchrow(
        "INSERT INTO reservation_policies (sku, strategy, per_customer_limit, "
        "low_stock_threshold) VALUES ($1, $2, $3, $4) ON CONFLICT (sku) DO UPDATE SET "
        "strategy = EXCLUDED.strategy, per_customer_limit = EXCLUDED.per_customer_limit, "
        "low_stock_threshold = EXCLUDED.low_stock_threshold "
        "RETURNING sku, strategy, per_customer_limit, low_stock_threshold, version, updated_at",
        sku,
        policy.strategy.value,
        policy.per_customer_limit,
        policy.low_stock_threshold,
    )
    return _policy(row)


async def get_policy(conn: Connection, sku: str) -> ReservationPolicy:
    row = await conn.fetchrow(
        "SELECT sku, strategy, per_customer_limit, low_stock_threshold, version, updated_at "
        "FROM reservation_policies WHERE sku = $1",
        sku,
    )
    if row is None:  # the defaults, which no write has changed yet
        await require_row(conn, table="products", kind="product", key={"sku": sku})
        return ReservationPolicy(
            sku=sku,
            strategy="auto",
            per_customer_limit=None,
            low_stock_threshold=None,
            version=0,
            updated_at=None,
        )
    return _policy(row)
