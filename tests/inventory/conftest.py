"""A small world for the reservation engine: skus with stock at two locations of one region
(recorded as receipts, so the stock audit balances), and an engine with its own pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.inventory.engine import EngineConfig, InventoryEngine
from retailsync.inventory.model import HoldRequest
from retailsync.services import stock

LOCATIONS = ("eu-dc1", "eu-store1")


async def stocked(db: Database, skus: dict[str, int], *, price: int | None = 1000) -> None:
    """Products ``sku -> units at each location`` (receipts), priced in eu unless None."""
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO regions (id) VALUES ('eu') ON CONFLICT DO NOTHING")
        for location in LOCATIONS:
            await conn.execute(
                "INSERT INTO locations (id, region, kind) VALUES ($1, 'eu', 'warehouse') "
                "ON CONFLICT DO NOTHING",
                location,
            )
        for sku, units in skus.items():
            await conn.execute(
                "INSERT INTO products (sku, title, category) VALUES ($1, $1, 'toys')", sku
            )
            if price is not None:
                await conn.execute(
                    "INSERT INTO prices (sku, region, currency, amount_minor) "
                    "VALUES ($1, 'eu', 'EUR', $2)",
                    sku,
                    price,
                )
            for location in LOCATIONS:
                await stock.receive(conn, sku, location, quantity=units)


def request(
    *lines: tuple[str, str, int],
    key: str | None = None,
    ttl_ms: int = 60_000,
    customer: str | None = None,
    scope: str = "test",
) -> HoldRequest:
    return HoldRequest.create(
        scope=scope,
        key=key or str(uuid.uuid4()),
        lines=list(lines),
        ttl_ms=ttl_ms,
        customer_id=customer,
    )


async def start_engine(database_dsn: str, config: EngineConfig | None = None) -> InventoryEngine:
    pool = await Database.connect(
        ServerTarget(dsn=database_dsn, pool_min=1, pool_max=20, command_timeout=30.0)
    )
    engine = InventoryEngine(pool, config or EngineConfig())
    await engine.start()
    return engine


async def stop_engine(engine: InventoryEngine) -> None:
    await engine.close()
    await engine.db.close()


@pytest.fixture
async def engine(db: Database, database_dsn: str) -> AsyncIterator[InventoryEngine]:
    """An engine on the test database (emptied by ``db``), with expiry every 50 ms."""
    started = await start_engine(database_dsn, EngineConfig(expiry_interval_s=0.05))
    yield started
    await stop_engine(started)
