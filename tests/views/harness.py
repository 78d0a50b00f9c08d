"""What the views' tests share: a random history of writes, consumers to run beside it, the
wait for them to catch up, and the view tables as comparable values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from retailsync.cdc.events import ChangeEvent
from retailsync.db.database import Connection, Database
from retailsync.eventlog.postgres import PostgresEventLog
from retailsync.views import GROUP, ViewMaintainer, rebuild

REGIONS = ("eu", "us")
LOCATIONS = {"L1": "eu", "L2": "eu", "L3": "us"}
CATEGORIES = ("a", "a/b", "a/b/c", "a/d", "e", "e/f")
LANES = ("lane-a", "lane-b")
TITLES = ("Alpha", "beta", "Gamma", "alpha", "Zed")
MARKER = "test.views.marker"

# The view tables, each as an ordered query; category counters leave out their version (a
# history, not a function of the base tables) and the categories that emptied.
_DUMPS = {
    "view_products": "SELECT sku, title, category, attributes::text, version FROM view_products",
    "view_locations": "SELECT id, region, version FROM view_locations",
    "view_atp_location": "SELECT * FROM view_atp_location",
    "view_atp_region": "SELECT * FROM view_atp_region",
    "view_atp": "SELECT * FROM view_atp",
    "view_category_products": "SELECT category, sku, title, attributes::text, version, in_stock "
    "FROM view_category_products",
    "view_categories": "SELECT category, products FROM view_categories WHERE products > 0",
    "view_facets": "SELECT category, name, value::text, count FROM view_facets",
}


async def dump(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(tuple(row) for row in await conn.fetch(query))
        for table, query in _DUMPS.items()
    }


async def dump_views(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    async with db.connection() as conn:
        return await dump(conn)


async def rebuilt(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """What ``rebuild`` makes of the base tables now; the views are left as they were."""
    async with db.connection() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await rebuild(conn)
            return await dump(conn)
        finally:
            await transaction.rollback()


async def emit_marker(db: Database) -> str:
    """A logical message through the capture; returns its payload, to wait for."""
    payload = f"{random.random()}"
    await db.execute("SELECT pg_logical_emit_message(true, $1, $2)", MARKER, payload)
    return payload


async def logged_events(log: PostgresEventLog, db: Database, within: float = 20) -> list[Any]:
    """Every event in the log once the capture has passed a marker written now."""
    payload = await emit_marker(db)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        events = [record.event for record in await log.read(0, 1_000_000)]
        if any(e.table == MARKER and e.payload == payload for e in events):
            return events
        assert asyncio.get_running_loop().time() < deadline, "the capture did not catch up"
        await asyncio.sleep(0.05)


async def caught_up(log: PostgresEventLog, db: Database, within: float = 20) -> None:
    """Wait until every change made so far is in the log and acknowledged by the group."""
    await logged_events(log, db, within)
    deadline = asyncio.get_running_loop().time() + within
    while (await log.lag(GROUP)).events:
        assert asyncio.get_running_loop().time() < deadline, "the view consumer did not catch up"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def maintaining(
    db: Database, log: Any, *, workers: int = 1, batch: int = 500, ack_wait: float = 30.0
) -> AsyncIterator[None]:
    """``workers`` view consumers of the same group, for the ``async with`` block; ``log``
    is closed after them."""
    tasks = [
        asyncio.create_task(
            ViewMaintainer(db, log, batch=batch, max_wait=0.2, ack_wait=ack_wait).run()
        )
        for _ in range(workers)
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await log.close()  # the log's LISTEN connection (it does not own the pool)


async def apply_in_chunks(db: Database, events: Sequence[ChangeEvent], size: int) -> None:
    from retailsync.views import apply_events

    for start in range(0, len(events), size):
        async with db.transaction() as conn:
            await apply_events(conn, events[start : start + size])


# Writes to one stock row ($1 sku, $2 location) of $3 units, from 1 to the most given.
_STOCK_MOVES = {
    "receive": (
        "INSERT INTO stock (sku, location, on_hand) VALUES ($1, $2, $3) "
        "ON CONFLICT (sku, location) DO UPDATE SET on_hand = stock.on_hand + $3",
        20,
    ),
    "adjust": (
        "UPDATE stock SET on_hand = greatest(reserved, on_hand - $3) "
        "WHERE sku = $1 AND location = $2",
        10,
    ),
    "reserve": (
        "UPDATE stock SET reserved = least(on_hand, reserved + $3) "
        "WHERE sku = $1 AND location = $2",
        5,
    ),
    # Never below what escrow allotments hold of the row.
    "release": (
        "UPDATE stock SET reserved = reserved - least($3, reserved - "
        "  (SELECT coalesce(sum(free), 0) FROM escrow_allotments "
        "   WHERE sku = $1 AND location = $2)) WHERE sku = $1 AND location = $2",
        5,
    ),
}


class World:
    """A random history of catalog, stock and escrow writes, each op or a few together in one
    transaction, as the services would make them."""

    def __init__(self, db: Database, rng: random.Random, *, products: int = 12) -> None:
        self.db = db
        self.rng = rng
        self.skus = [f"P{i:02d}" for i in range(products)]
        self.created: list[str] = []

    async def setup(self) -> None:
        async with self.db.transaction() as conn:
            for region in REGIONS:
                await conn.execute("INSERT INTO regions (id) VALUES ($1)", region)
            for location, region in LOCATIONS.items():
                await conn.execute(
                    "INSERT INTO locations (id, region, kind) VALUES ($1, $2, 'warehouse')",
                    location,
                    region,
                )

    async def run(self, transactions: int) -> None:
        for _ in range(transactions):
            async with self.db.transaction() as conn:
                for _ in range(self.rng.choice((1, 1, 1, 2, 4))):
                    await self.step(conn)

    def _attributes(self) -> dict[str, Any]:
        rng = self.rng
        choices: dict[str, list[Any]] = {
            "color": ["red", "blue", "green"],
            "size": [1, 2, 3.5],
            "tags": [["x", "y"], ["y"], ["x", "x", {"deep": 1}]],
            "flag": [True, False],
            "nested": [{"k": 1}, None],
        }
        return {k: rng.choice(v) for k, v in choices.items() if rng.random() < 0.6}

    async def step(self, conn: Connection) -> None:
        rng = self.rng
        if not self.created or rng.random() < 0.25:
            await self.upsert_product(conn, rng.choice(self.skus))
            return
        sku, location = rng.choice(self.created), rng.choice(list(LOCATIONS))
        op = rng.choice(("receive", "adjust", "reserve", "release", "allot", "sell", "back"))
        if op in _STOCK_MOVES or rng.random() < 0.1:
            statement, most = _STOCK_MOVES.get(op, _STOCK_MOVES["receive"])
            await conn.execute(statement, sku, location, rng.randint(1, most))
        elif op == "allot":
            await self.allot(conn, sku, location, rng.choice(LANES), rng.randint(1, 4))
        elif op == "sell":
            await conn.execute(
                "UPDATE escrow_allotments SET free = free - 1 "
                "WHERE owner = $1 AND sku = $2 AND location = $3 AND free > 0",
                rng.choice(LANES),
                sku,
                location,
            )
        else:
            back = await conn.fetchval(
                "DELETE FROM escrow_allotments WHERE owner = $1 AND sku = $2 AND location = $3 "
                "RETURNING free",
                rng.choice(LANES),
                sku,
                location,
            )
            if back:
                await conn.execute(
                    "UPDATE stock SET reserved = reserved - $3 WHERE sku = $1 AND location = $2",
                    sku,
                    location,
                    back,
                )
        if rng.random() < 0.04:
            await conn.execute(
                "UPDATE locations SET region = CASE region WHEN 'eu' THEN 'us' ELSE 'eu' END "
                "WHERE id = $1",
                location,
            )

    async def upsert_product(self, conn: Connection, sku: str) -> None:
        await conn.execute(
            "INSERT INTO products (sku, title, category, attributes) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (sku) DO UPDATE SET title = EXCLUDED.title, "
            "category = EXCLUDED.category, attributes = EXCLUDED.attributes",
            sku,
            f"{self.rng.choice(TITLES)} {self.rng.randint(0, 3)}",
            self.rng.choice(CATEGORIES),
            self._attributes(),
        )
        if sku not in self.created:
            self.created.append(sku)

    async def allot(self, conn: Connection, sku: str, location: str, lane: str, units: int) -> None:
        granted = await conn.fetchval(
            "UPDATE stock SET reserved = reserved + $3 "
            "WHERE sku = $1 AND location = $2 AND on_hand - reserved >= $3 RETURNING 1",
            sku,
            location,
            units,
        )
        if granted:
            await conn.execute(
                "INSERT INTO escrow_allotments (owner, sku, location, free, lease_until) "
                "VALUES ($1, $2, $3, $4, clock_timestamp() + interval '1 minute') "
                "ON CONFLICT (owner, sku, location) DO UPDATE "
                "SET free = escrow_allotments.free + EXCLUDED.free",
                lane,
                sku,
                location,
                units,
            )


def oracle(products: Sequence[dict[str, Any]], atp: dict[str, int]) -> dict[str, Any]:
    """Category listings and facets computed in Python, from the rules as documented."""
    listings: set[tuple[str, str, bool]] = set()
    facets: dict[tuple[str, str, str], int] = {}
    for product in products:
        parts = product["category"].split("/")
        paths = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        pairs: set[tuple[str, str]] = set()
        for name, value in product["attributes"].items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, str | int | float | bool):
                    pairs.add((name, json.dumps(v)))
        for path in paths:
            listings.add((path, product["sku"], atp.get(product["sku"], 0) > 0))
            for name, value in pairs:
                facets[(path, name, value)] = facets.get((path, name, value), 0) + 1
    return {"listings": sorted(listings), "facets": facets}
