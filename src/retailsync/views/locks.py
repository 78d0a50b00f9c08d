"""The advisory locks that keep concurrent view workers (and rebuilds) correct.

Every batch the consumer applies holds, for its transaction:

- the *views* lock, shared; exclusive when the batch changes a location (a region move
  re-aggregates every sku stocked there) and, session-wide, while ``rebuild`` runs;
- one lock per sku it touches, taken in key order (no two batches wait on each other in a
  circle). Rows keyed by sku (ATP per location, region and total, listing rows, the product
  copy) are written only under it, so a batch reads the view's own state for its skus
  (previous product state, per-location ATP) knowing that no other batch changes it.

Rows shared between skus (facet counts, category counters) are changed by atomic
increments, in key order.
"""

from __future__ import annotations

from collections.abc import Iterable

from retailsync.db.database import Connection

_CLASS = 0x76696577  # "view": the advisory lock space's first key, for every lock here
_VIEWS = 0  # second key of the views lock ...
_BOOTSTRAP = 1  # ... and of the bootstrap lock; sku locks use _SKU_CLASS
_SKU_CLASS = 0x76696578


async def lock_batch(conn: Connection, *, exclusive: bool) -> None:
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {fn}($1, $2)", _CLASS, _VIEWS)


async def lock_skus(conn: Connection, skus: Iterable[str]) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, k) "
        "FROM (SELECT DISTINCT hashtext(s) AS k FROM unnest($2::text[]) AS s ORDER BY k) AS x",
        _SKU_CLASS,
        sorted(set(skus)),
    )


async def lock_views_session(conn: Connection) -> None:
    """The views lock, exclusive, until ``unlock_views_session`` (rebuild)."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, _VIEWS)


async def unlock_views_session(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, _VIEWS)


async def lock_bootstrap(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, _BOOTSTRAP)


async def unlock_bootstrap(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, _BOOTSTRAP)
