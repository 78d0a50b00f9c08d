"""The advisory locks that keep concurrent view workers (and rebuilds) correct.

Every batch the consumer applies holds, for its transaction (``view_apply_batch`` takes them):

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

from retailsync.db.database import Connection, keeps_session_state

_CLASS = 0x76696577  # "view": the advisory lock space's first key, for every lock here
_VIEWS = 0  # second key of the views lock ...
_BOOTSTRAP = 1  # ... and of the bootstrap lock; sku locks use _SKU_CLASS
_SKU_CLASS = 0x76696578
# What ``view_apply_batch`` (migration 0011) takes a batch's locks with.
BATCH_KEYS = (_CLASS, _VIEWS, _SKU_CLASS)


async def lock_views_session(conn: Connection) -> None:
    """The views lock, exclusive, until ``unlock_views_session`` (rebuild)."""
    keeps_session_state(conn)
    await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, _VIEWS)


async def unlock_views_session(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, _VIEWS)


async def lock_bootstrap(conn: Connection) -> None:
    keeps_session_state(conn)
    await conn.execute("SELECT pg_advisory_lock($1, $2)", _CLASS, _BOOTSTRAP)


async def unlock_bootstrap(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _CLASS, _BOOTSTRAP)
