"""The hold ledger in SQL: reading holds, recording one (the per-request strategies), ending
them (release, expiry). Group commit records many at once in ``inventory_hold_batch``
(migration 0005), which follows the same rules.

Lock order: a hold row, then stock rows in (sku, location) order, then escrow allotment rows
in (sku, location, owner) order, then purchase-limit usage rows in (customer, sku) order.
Group commit, release, expiry, escrow give-back and lease renewal all keep it, so they never
deadlock one another; the per-request ``atomic`` and ``optimistic`` strategies lock by their
conditional updates, in the order of a hold's lines, and retry the rare deadlock between two
multi-line holds (see ``direct``). Rows are locked ``FOR NO KEY UPDATE``, never ``FOR
UPDATE``, which would also block key-share locks of foreign keys to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from retailsync.db.database import Connection
from retailsync.errors import HoldKeyReused, NotFound, Refused
from retailsync.inventory.model import Hold, HoldLine, HoldRequest, HoldState

_HOLD_FIELDS = "id, state, customer_id, expires_at, strategy, order_id, fingerprint"


def hold_from(row: asyncpg.Record, lines: Sequence[HoldLine]) -> Hold:
    return Hold(
        id=row["id"],
        state=HoldState(row["state"]),
        lines=tuple(lines),
        customer_id=row["customer_id"],
        expires_at=row["expires_at"],
        strategy=row["strategy"],
        order_id=row["order_id"],
    )


def new_hold(request: HoldRequest, hold_id: UUID, expires_at: datetime, strategy: str) -> Hold:
    """The hold a request just became (no need to read back what was written)."""
    return Hold(
        id=hold_id,
        state=HoldState.HELD,
        lines=request.lines,
        customer_id=request.customer_id,
        expires_at=expires_at,
        strategy=strategy,
        order_id=None,
    )


async def load_holds(conn: Connection, ids: Sequence[UUID]) -> dict[UUID, Hold]:
    rows = await conn.fetch(f"SELECT {_HOLD_FIELDS} FROM holds WHERE id = ANY($1)", list(ids))
    lines = await conn.fetch(
        "SELECT hold_id, sku, location, quantity FROM reservations "
        "WHERE hold_id = ANY($1) ORDER BY hold_id, sku, location",
        list(ids),
    )
    by_hold: dict[UUID, list[HoldLine]] = {}
    for line in lines:
        by_hold.setdefault(line["hold_id"], []).append(
            HoldLine(line["sku"], line["location"], line["quantity"])
        )
    return {row["id"]: hold_from(row, by_hold.get(row["id"], [])) for row in rows}


async def require_owner(conn: Connection, hold_id: UUID, owner: str | None) -> None:
    """NotFound unless the hold exists and, given ``owner`` (an API key's scope), was taken
    under it: a channel sees and acts on its own holds only (admin passes None)."""
    scope = await conn.fetchval("SELECT key_scope FROM holds WHERE id = $1", hold_id)
    if scope is None or (owner is not None and scope != owner):
        raise NotFound("reservation", str(hold_id))


async def get_hold(conn: Connection, hold_id: UUID, *, owner: str | None = None) -> Hold:
    if owner is not None:
        await require_owner(conn, hold_id, owner)
    found = await load_holds(conn, [hold_id])
    if hold_id not in found:
        raise NotFound("reservation", str(hold_id))
    return found[hold_id]


async def find_replay(conn: Connection, request: HoldRequest) -> Hold | None:
    """The hold this request's key already made, or None; HoldKeyReused if the key made a
    hold for a different request."""
    row = await conn.fetchrow(
        "SELECT id, fingerprint FROM holds WHERE key_scope = $1 AND idempotency_key = $2",
        request.scope,
        request.key,
    )
    if row is None:
        return None
    if row["fingerprint"] != request.fingerprint:
        raise HoldKeyReused(request.key)
    hold = await get_hold(conn, row["id"])
    return msgspec.structs.replace(hold, replayed=True)


async def take_allowance(
    conn: Connection, request: HoldRequest, limits: Sequence[int | None]
) -> list[bool]:
    """Count the lines of skus under a purchase limit against the customer's allowance;
    Refused if any would pass its limit. Returns, per line, whether it was counted."""
    limited = [(line, limit) for line, limit in zip(request.lines, limits, strict=True) if limit]
    if not limited:
        return [False] * len(request.lines)
    assert request.customer_id is not None  # the engine refuses limited skus without one
    limited.sort(key=lambda item: item[0].sku)
    skus = [line.sku for line, _ in limited]
    await conn.execute(
        "INSERT INTO customer_sku_usage (customer_id, sku, quantity) "
        "SELECT $1, sku, 0 FROM unnest($2::text[]) AS sku ON CONFLICT DO NOTHING",
        request.customer_id,
        skus,
    )
    used = await conn.fetch(
        "SELECT sku, quantity FROM customer_sku_usage WHERE customer_id = $1 AND sku = ANY($2) "
        "ORDER BY sku FOR UPDATE",
        request.customer_id,
        skus,
    )
    already = {row["sku"]: row["quantity"] for row in used}
    for line, limit in limited:
        if already[line.sku] + line.quantity > limit:
            raise Refused(
                "purchase-limit",
                f"customer {request.customer_id} may hold or buy at most {limit} of {line.sku}",
            )
    await conn.execute(
        "UPDATE customer_sku_usage u SET quantity = u.quantity + x.q "
        "FROM unnest($2::text[], $3::int[]) AS x(sku, q) "
        "WHERE u.customer_id = $1 AND u.sku = x.sku",
        request.customer_id,
        skus,
        [line.quantity for line, _ in limited],
    )
    return [bool(limit) for limit in limits]


async def record_hold(
    conn: Connection,
    request: HoldRequest,
    hold_id: UUID,
    strategy: str,
    counted: Sequence[bool],
) -> datetime:
    """Write the hold and its lines; return its expiry. The caller has taken the stock."""
    expires_at: datetime = await conn.fetchval(
        "INSERT INTO holds (id, key_scope, idempotency_key, fingerprint, customer_id, state, "
        "strategy, expires_at) VALUES ($1, $2, $3, $4, $5, 'held', $6, "
        "clock_timestamp() + $7 * interval '1 millisecond') RETURNING expires_at",
        hold_id,
        request.scope,
        request.key,
        request.fingerprint,
        request.customer_id,
        strategy,
        request.ttl_ms,
    )
    await conn.execute(
        "INSERT INTO reservations (hold_id, sku, location, quantity, state, counted) "
        "SELECT $1, sku, location, q, 'held', c "
        "FROM unnest($2::text[], $3::text[], $4::int[], $5::bool[]) AS x(sku, location, q, c)",
        hold_id,
        [line.sku for line in request.lines],
        [line.location for line in request.lines],
        [line.quantity for line in request.lines],
        list(counted),
    )
    return expires_at


async def lock_stock_rows(conn: Connection, skus: Sequence[str], locations: Sequence[str]) -> None:
    """Lock these stock rows in (sku, location) order, the order every writer uses."""
    await conn.execute(
        "SELECT 1 FROM stock s JOIN unnest($1::text[], $2::text[]) AS x(sku, location) "
        "ON s.sku = x.sku AND s.location = x.location "
        "ORDER BY s.sku, s.location FOR NO KEY UPDATE OF s",
        list(skus),
        list(locations),
    )


async def give_back(conn: Connection, lines: Sequence[asyncpg.Record]) -> None:
    """Return ended lines' units to available stock and to their customers' allowances.
    ``lines``: records with sku, location, quantity, counted, customer_id."""
    if not lines:
        return
    skus = [line["sku"] for line in lines]
    locations = [line["location"] for line in lines]
    await lock_stock_rows(conn, skus, locations)
    await conn.execute(
        "UPDATE stock s SET reserved = s.reserved - d.q "
        "FROM (SELECT sku, location, sum(q) AS q "
        "      FROM unnest($1::text[], $2::text[], $3::int[]) AS x(sku, location, q) "
        "      GROUP BY 1, 2) AS d "
        "WHERE s.sku = d.sku AND s.location = d.location",
        skus,
        locations,
        [line["quantity"] for line in lines],
    )
    counted = [line for line in lines if line["counted"]]
    if counted:
        customers = [line["customer_id"] for line in counted]
        counted_skus = [line["sku"] for line in counted]
        await conn.execute(
            "SELECT 1 FROM customer_sku_usage u JOIN unnest($1::text[], $2::text[]) AS x(c, sku) "
            "ON u.customer_id = x.c AND u.sku = x.sku "
            "ORDER BY u.customer_id, u.sku FOR UPDATE OF u",
            customers,
            counted_skus,
        )
        await conn.execute(
            "UPDATE customer_sku_usage u SET quantity = u.quantity - d.q "
            "FROM (SELECT c, sku, sum(q) AS q "
            "      FROM unnest($1::text[], $2::text[], $3::int[]) AS x(c, sku, q) "
            "      GROUP BY 1, 2) AS d "
            "WHERE u.customer_id = d.c AND u.sku = d.sku",
            customers,
            counted_skus,
            [line["quantity"] for line in counted],
        )


async def end_holds(conn: Connection, hold_ids: Sequence[UUID], state: HoldState) -> int:
    """End the given holds that are still held (release or expiry): their lines are released
    and their units given back. The caller holds the hold rows' locks. Returns how many."""
    ended = await conn.fetch(
        "UPDATE holds SET state = $2, ended_at = clock_timestamp() "
        "WHERE id = ANY($1) AND state = 'held' RETURNING id",
        list(hold_ids),
        state.value,
    )
    ids = [row["id"] for row in ended]
    if not ids:
        return 0
    lines = await conn.fetch(
        "UPDATE reservations r SET state = 'released' FROM holds h "
        "WHERE r.hold_id = ANY($1) AND r.state = 'held' AND h.id = r.hold_id "
        "RETURNING r.sku, r.location, r.quantity, r.counted, h.customer_id",
        ids,
    )
    await give_back(conn, lines)
    return len(ids)


async def release(conn: Connection, hold_id: UUID, *, owner: str | None = None) -> Hold:
    """Give a held hold's stock back. Releasing a released or expired hold changes nothing
    (a safe retry); a committed hold is part of an order: cancel the order instead."""
    if owner is not None:
        await require_owner(conn, hold_id, owner)
    state = await conn.fetchval("SELECT state FROM holds WHERE id = $1 FOR UPDATE", hold_id)
    if state is None:
        raise NotFound("reservation", str(hold_id))
    if state == HoldState.COMMITTED:
        raise Refused("hold-committed", "the hold is part of an order; cancel the order instead")
    if state == HoldState.HELD:
        await end_holds(conn, [hold_id], HoldState.RELEASED)
    return await get_hold(conn, hold_id)


async def expire_due(conn: Connection, limit: int) -> list[datetime]:
    """Expire up to ``limit`` holds whose time is up (skipping any another process is ending
    or committing right now); return their expiry times."""
    due = await conn.fetch(
        # statement_timestamp(), not clock_timestamp(): a volatile bound cannot use the index.
        "SELECT id, expires_at FROM holds "
        "WHERE state = 'held' AND expires_at <= statement_timestamp() "
        "ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    if due:
        await end_holds(conn, [row["id"] for row in due], HoldState.EXPIRED)
    return [row["expires_at"] for row in due]
