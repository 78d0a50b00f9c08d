"""Store stock sold offline: a bounded-counter allotment per replica x sku x location.

The server's counter for ``stock.units:<sku>@<location>`` holds, as rights, the units allotted
to offline replicas and not yet sold. Allotting ``n`` units to a POS terminal reserves them in
``stock`` (an ``allotted`` reservation of that replica), then the server increments the counter
by ``n`` and transfers the rights to the terminal. Offline, the terminal sells by decrementing
its own rights, which the counter refuses beyond what it holds: it cannot oversell, however
long it stays disconnected. On the next sync the growth of its decrements is the units it
sold: they leave on_hand and the allotment as a shipment; rights it gave back to the server
return to available stock.

A replica may only bring news of its own row: its decrements and rights given back to the
server. Anything else (increments, another replica's row grown) is refused, so a terminal
cannot mint stock.
"""

from __future__ import annotations

from retailsync.crdt import BoundedCounter
from retailsync.db.database import Connection
from retailsync.errors import Refused
from retailsync.observe.metrics import OFFLINE_UNITS
from retailsync.services.stock import require_stock_place
from retailsync.sync import store
from retailsync.sync.policies import ObjectName
from retailsync.sync.store import SERVER_REPLICA


def check_authority(server: BoundedCounter, incoming: BoundedCounter, replica: str) -> None:
    """Refuse a state that writes what ``replica`` may not (see the module docstring)."""
    for writer in incoming.writers():
        row = incoming.row(writer)
        if writer == replica:
            if row.increments or set(row.moved) - {SERVER_REPLICA}:
                raise Refused(
                    "not-the-replicas-to-write",
                    f"replica {replica} may only sell from its allotment or give it back, "
                    "not add stock or give rights to another replica",
                )
        elif not row.within(server.row(writer)):
            raise Refused(
                "not-the-replicas-to-write",
                f"replica {replica} sent writes of replica {writer} the server never made",
            )


async def merge_stock(
    conn: Connection,
    name: ObjectName,
    replica: str,
    incoming: BoundedCounter | None,
    allot: int,
) -> tuple[BoundedCounter, int]:
    """Merge the replica's counter, settle what it sold or gave back, allot up to ``allot``
    more; return the server's counter and the units allotted."""
    sku, location = name.parts["sku"], name.parts["location"]
    await require_stock_place(conn, sku, location)
    stored = await store.load(conn, name)
    counter: BoundedCounter = stored.state
    if incoming is not None:
        check_authority(counter, incoming, replica)
        before = counter.row(replica)
        counter.merge(incoming)
        after = counter.row(replica)
        sold = after.decrements - before.decrements
        returned = after.moved.get(SERVER_REPLICA, 0) - before.moved.get(SERVER_REPLICA, 0)
        await _settle(conn, sku, location, replica, sold=sold, returned=returned)
    granted = await _allot(conn, sku, location, replica, allot) if allot else 0
    if granted:
        OFFLINE_UNITS.labels("allotted").inc(granted)
        counter.increment(granted)
        counter.transfer(granted, to=replica)
    await store.save(conn, name.key, stored)
    return counter, granted


async def _allot(conn: Connection, sku: str, location: str, replica: str, wanted: int) -> int:
    """Reserve up to ``wanted`` available units for ``replica``; return how many."""
    granted: int = (
        await conn.fetchval(
            "WITH level AS (SELECT least($3, on_hand - reserved) AS n FROM stock "
            "  WHERE sku = $1 AND location = $2 FOR NO KEY UPDATE) "
            "UPDATE stock SET reserved = reserved + level.n FROM level "
            "WHERE sku = $1 AND location = $2 AND level.n > 0 RETURNING level.n",
            sku,
            location,
            wanted,
        )
        or 0
    )
    if granted:
        await conn.execute(
            "INSERT INTO reservations (sku, location, quantity, state, replica) "
            "VALUES ($1, $2, $3, 'allotted', $4) "
            "ON CONFLICT (replica, sku, location) WHERE state = 'allotted' "
            "DO UPDATE SET quantity = reservations.quantity + EXCLUDED.quantity",
            sku,
            location,
            granted,
            replica,
        )
    return granted


async def _settle(
    conn: Connection, sku: str, location: str, replica: str, *, sold: int, returned: int
) -> None:
    """Units sold offline leave on_hand as a shipment; units given back are available again."""
    used = sold + returned
    if not used:
        return
    OFFLINE_UNITS.labels("sold").inc(sold)
    OFFLINE_UNITS.labels("returned").inc(returned)
    await conn.execute(
        "UPDATE stock SET on_hand = on_hand - $3, reserved = reserved - $4 "
        "WHERE sku = $1 AND location = $2",
        sku,
        location,
        sold,
        used,
    )
    # The allotment shrinks by what was used; used up, it is closed (released) as it stood.
    await conn.execute(
        "UPDATE reservations SET "
        "state = CASE WHEN quantity = $4 THEN 'released' ELSE state END, "
        "quantity = CASE WHEN quantity = $4 THEN quantity ELSE quantity - $4 END "
        "WHERE replica = $1 AND sku = $2 AND location = $3 AND state = 'allotted'",
        replica,
        sku,
        location,
        used,
    )
    if sold:
        await conn.execute(
            "INSERT INTO stock_movements (sku, location, delta, kind, reason) "
            "VALUES ($1, $2, $3, 'shipment', $4)",
            sku,
            location,
            -sold,
            f"sold offline by {replica}",
        )
        await conn.execute(
            "INSERT INTO reservations (sku, location, quantity, state, replica) "
            "VALUES ($1, $2, $3, 'fulfilled', $4)",
            sku,
            location,
            sold,
            replica,
        )
