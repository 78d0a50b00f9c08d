"""Stock audit: recompute every stock row from its history and compare.

Three independent checks per sku x location, each from a different table than the one it
checks, so a bug that corrupted stock.on_hand or stock.reserved cannot hide itself:

- on_hand equals the sum of its movements (receipts, adjustments, shipments);
- reserved equals the open reservations (held, committed, or allotted to an offline replica),
  reading stock through ``stock_levels``, where units in escrow allotments are available;
- units promised (open or fulfilled) never exceed the units that ever came in (receipts plus
  adjustments): the excess, if any, is oversold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retailsync.db.database import Connection


@dataclass(frozen=True, slots=True)
class StockAudit:
    rows_checked: int
    oversold_units: int
    on_hand_mismatches: list[str] = field(default_factory=list)
    reserved_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.oversold_units or self.on_hand_mismatches or self.reserved_mismatches)


_AUDIT = """
WITH moves AS (
    SELECT sku, location,
           sum(delta) AS net,
           sum(delta) FILTER (WHERE kind <> 'shipment') AS inflow
    FROM stock_movements GROUP BY sku, location
), promised AS (
    SELECT sku, location,
           sum(quantity) FILTER (WHERE state IN ('held', 'committed', 'allotted')) AS open,
           sum(quantity) FILTER (
               WHERE state IN ('held', 'committed', 'allotted', 'fulfilled')) AS total
    FROM reservations GROUP BY sku, location
)
SELECT s.sku, s.location, s.on_hand, s.reserved,
       coalesce(m.net, 0) AS net, coalesce(m.inflow, 0) AS inflow,
       coalesce(p.open, 0) AS open, coalesce(p.total, 0) AS promised
FROM stock_levels s
LEFT JOIN moves m USING (sku, location)
LEFT JOIN promised p USING (sku, location)
"""


async def audit_stock(conn: Connection) -> StockAudit:
    rows = await conn.fetch(_AUDIT)
    oversold = 0
    on_hand_bad: list[str] = []
    reserved_bad: list[str] = []
    for row in rows:
        where = f"{row['sku']}@{row['location']}"
        if row["on_hand"] != row["net"]:
            on_hand_bad.append(f"{where}: on_hand {row['on_hand']}, movements {row['net']}")
        if row["reserved"] != row["open"]:
            reserved_bad.append(f"{where}: reserved {row['reserved']}, open holds {row['open']}")
        oversold += max(0, row["promised"] - row["inflow"])
    return StockAudit(len(rows), oversold, on_hand_bad, reserved_bad)
