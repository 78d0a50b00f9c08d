"""``retailsync inventory check``: the reservation ledger's invariants over the whole database.

Per sku x location, ``on_hand = available + held + committed + allotted`` (the stock audit:
on_hand from its movements, reserved from the open reservation lines, nothing promised beyond
what came in); every reservation line names a stock row and (if any) a hold that exist (the
foreign keys the hot path does without); and, per hold:

- its lines agree with it: a held hold's lines are held, a released or expired hold's lines
  are released (no hold is both committed and released), a committed hold's lines belong to
  its order;
- expiry is never early (an expired hold ended at or after its expiry time) and never took a
  committed hold (a committed hold was committed before its expiry);
- every customer's purchase-limit usage equals the units of their counted lines still held,
  committed or delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retailsync.db.database import Connection
from retailsync.services.audit import StockAudit, audit_stock

_HOLD_LINES = """
WITH line AS (
    SELECT h.id, h.state,
           (h.state = 'held' AND r.state = 'held')
           OR (h.state IN ('released', 'expired') AND r.state = 'released')
           OR (h.state = 'committed' AND r.order_id = h.order_id
               AND r.state IN ('committed', 'fulfilled', 'released')) AS agrees
    FROM holds h JOIN reservations r ON r.hold_id = h.id
)
SELECT id, state, count(*) FILTER (WHERE NOT agrees) AS wrong
FROM line GROUP BY id, state HAVING NOT bool_and(agrees)
"""
_EMPTY_HOLDS = """
SELECT id FROM holds h WHERE NOT EXISTS (SELECT 1 FROM reservations WHERE hold_id = h.id)
"""
_DANGLING = """
SELECT r.id, r.sku, r.location, r.hold_id, s.sku IS NULL AS no_stock
FROM reservations r
LEFT JOIN stock s ON s.sku = r.sku AND s.location = r.location
LEFT JOIN holds h ON h.id = r.hold_id
WHERE s.sku IS NULL OR (r.hold_id IS NOT NULL AND h.id IS NULL)
"""
_TIMING = """
SELECT id, state FROM holds
WHERE (state = 'expired' AND ended_at < expires_at)
   OR (state = 'committed' AND ended_at >= expires_at)
"""
_USAGE = """
WITH counted AS (
    SELECT h.customer_id, r.sku, sum(r.quantity) AS q
    FROM reservations r JOIN holds h ON h.id = r.hold_id
    WHERE r.counted AND r.state IN ('held', 'committed', 'fulfilled')
    GROUP BY 1, 2
)
SELECT coalesce(u.customer_id, c.customer_id) AS customer_id, coalesce(u.sku, c.sku) AS sku,
       coalesce(u.quantity, 0) AS recorded, coalesce(c.q, 0) AS counted
FROM customer_sku_usage u FULL JOIN counted c ON c.customer_id = u.customer_id AND c.sku = u.sku
WHERE coalesce(u.quantity, 0) <> coalesce(c.q, 0)
"""


@dataclass(frozen=True, slots=True)
class InventoryCheck:
    stock: StockAudit
    holds_checked: int
    hold_mismatches: list[str] = field(default_factory=list)
    timing_violations: list[str] = field(default_factory=list)
    usage_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stock.ok and not (
            self.hold_mismatches or self.timing_violations or self.usage_mismatches
        )

    def problems(self) -> list[str]:
        stock = self.stock
        found = [f"oversold units: {stock.oversold_units}"] if stock.oversold_units else []
        return [
            *found,
            *stock.on_hand_mismatches,
            *stock.reserved_mismatches,
            *self.hold_mismatches,
            *self.timing_violations,
            *self.usage_mismatches,
        ]


async def check_inventory(conn: Connection) -> InventoryCheck:
    """Check every invariant in one repeatable-read snapshot, so a busy system is seen as of
    one instant."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        stock = await audit_stock(conn)
        holds = await conn.fetchval("SELECT count(*) FROM holds")
        lines = [
            f"hold {row['id']} ({row['state']}): {row['wrong']} lines disagree"
            for row in await conn.fetch(_HOLD_LINES)
        ]
        lines += [f"hold {row['id']} has no lines" for row in await conn.fetch(_EMPTY_HOLDS)]
        lines += [
            f"reservation {row['id']} names a missing "
            + (
                f"stock row {row['sku']}@{row['location']}"
                if row["no_stock"]
                else f"hold {row['hold_id']}"
            )
            for row in await conn.fetch(_DANGLING)
        ]
        timing = [
            f"hold {row['id']} was {row['state']} on the wrong side of its expiry"
            for row in await conn.fetch(_TIMING)
        ]
        usage = [
            f"usage of {row['customer_id']} for {row['sku']}: recorded {row['recorded']}, "
            f"counted lines {row['counted']}"
            for row in await conn.fetch(_USAGE)
        ]
    return InventoryCheck(stock, holds, lines, timing, usage)
