"""Every view table recomputed from the base tables, in one snapshot.

Used to bootstrap a database whose views were never built (``ensure_built``, under an
advisory lock so that one worker does it) and by the tests, which hold the incremental result
to it. The rows carry the base rows' versions, so the events from before the snapshot that
the consumer meets afterwards are no-ops.

Category counters are not recomputed but bumped: an ETag a client holds never comes back
with other content.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from retailsync.db.database import Connection, Database
from retailsync.views import locks

_VIEW_TABLES = (
    "view_products",
    "view_locations",
    "view_atp_location",
    "view_atp_region",
    "view_atp",
    "view_category_products",
    "view_facets",
)

_STATEMENTS = (
    *(f"DELETE FROM {table}" for table in _VIEW_TABLES),
    "INSERT INTO view_products (sku, title, category, attributes, version) "
    "SELECT sku, title, category, attributes, version FROM products",
    "INSERT INTO view_locations (id, region, version) SELECT id, region, version FROM locations",
    # stock_levels (0005) is the formula; the view keeps stock's own `reserved`.
    "INSERT INTO view_atp_location "
    "(sku, location, on_hand, reserved, in_escrow, available, stock_version) "
    "SELECT sku, location, on_hand, reserved + in_escrow, in_escrow, available, version "
    "FROM stock_levels",
    "INSERT INTO view_atp_region (sku, region, available) "
    "SELECT v.sku, l.region, sum(v.available) FROM view_atp_location v "
    "JOIN view_locations l ON l.id = v.location GROUP BY 1, 2",
    "INSERT INTO view_atp (sku, available) "
    "SELECT sku, sum(available) FROM view_atp_location GROUP BY 1",
    "INSERT INTO view_category_products (category, sku, title, attributes, version, in_stock) "
    "SELECT c.path, p.sku, p.title, p.attributes, p.version, coalesce(a.available > 0, false) "
    "FROM view_products p CROSS JOIN LATERAL view_category_paths(p.category) AS c(path) "
    "LEFT JOIN view_atp a ON a.sku = p.sku",
    "INSERT INTO view_facets (category, name, value, count) "
    "SELECT c.path, v.name, v.value, count(*) FROM view_products p "
    "CROSS JOIN LATERAL view_category_paths(p.category) AS c(path) "
    "CROSS JOIN LATERAL view_facet_values(p.attributes) AS v GROUP BY 1, 2, 3",
    "UPDATE view_categories SET products = 0, version = version + 1",
    "INSERT INTO view_categories (category, products, version) "
    "SELECT category, count(*), 1 FROM view_category_products GROUP BY 1 "
    "ON CONFLICT (category) DO UPDATE SET products = EXCLUDED.products",
    "INSERT INTO view_state (singleton) VALUES (true) "
    "ON CONFLICT (singleton) DO UPDATE SET built_at = clock_timestamp()",
)


@contextlib.asynccontextmanager
async def snapshot(conn: Connection, *, readonly: bool) -> AsyncIterator[None]:
    """One REPEATABLE READ transaction, unless the caller already holds a transaction (whose
    snapshot is then the caller's business)."""
    if conn.is_in_transaction():
        yield
        return
    async with conn.transaction(isolation="repeatable_read", readonly=readonly):
        yield


async def rebuild(conn: Connection) -> None:
    """Recompute every view table from the base tables, in one snapshot. Outside a
    transaction, the consumers wait meanwhile (the views lock, exclusive) and the snapshot is
    taken once they have stopped; inside one, the caller sees to both."""
    if conn.is_in_transaction():
        await _recompute(conn)
        return
    await locks.lock_views_session(conn)
    try:
        async with snapshot(conn, readonly=False):
            await _recompute(conn)
    finally:
        await locks.unlock_views_session(conn)


async def _recompute(conn: Connection) -> None:
    for statement in _STATEMENTS:
        await conn.execute(statement)


async def is_built(conn: Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT FROM view_state)"))


async def ensure_built(db: Database) -> bool:
    """Build the views if they never were; return whether this call built them. Workers
    starting together wait for the one that builds."""
    async with db.connection() as conn:
        if await is_built(conn):
            return False
        await locks.lock_bootstrap(conn)
        try:
            if await is_built(conn):
                return False
            await rebuild(conn)
            return True
        finally:
            await locks.unlock_bootstrap(conn)
