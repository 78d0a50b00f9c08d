"""Expiry: a hold whose TTL ran out gives its stock back within a second, across restarts,
and never touches a committed hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from retailsync.db.database import Database
from retailsync.errors import Refused
from retailsync.inventory.engine import EngineConfig, InventoryEngine
from retailsync.inventory.model import HoldState
from retailsync.services.orders import place_from_hold
from tests.inventory.conftest import request, start_engine, stocked, stop_engine


async def available(db: Database, sku: str) -> int:
    return int(
        await db.fetchval(
            "SELECT available FROM stock_levels WHERE sku = $1 AND location = 'eu-dc1'", sku
        )
    )


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(5):
        while not await condition():  # noqa: ASYNC110 - the database offers no event
            await asyncio.sleep(0.02)


async def test_expired_holds_give_their_stock_back_within_a_second(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"A": 100})
    holds = await asyncio.gather(
        *[engine.hold(request(("A", "eu-dc1", 1), ttl_ms=100 + 10 * n)) for n in range(50)]
    )
    assert await available(db, "A") == 50

    async def all_ended() -> bool:
        return bool(await db.fetchval("SELECT bool_and(state = 'expired') FROM holds"))

    await wait_until(all_ended)
    lags = await db.fetch("SELECT extract(epoch FROM ended_at - expires_at) AS lag FROM holds")
    assert len(lags) == len(holds)
    assert all(0 <= row["lag"] <= 1.0 for row in lags), sorted(row["lag"] for row in lags)[-3:]
    assert await available(db, "A") == 100


async def test_expiry_never_takes_a_committed_hold(engine: InventoryEngine, db: Database) -> None:
    await stocked(db, {"A": 10})
    hold = await engine.hold(request(("A", "eu-dc1", 3), ttl_ms=300))
    async with db.transaction() as conn:
        order = await place_from_hold(conn, hold.id, channel="pos")
    await asyncio.sleep(0.5)
    await engine.expire_due()
    assert await db.fetchval("SELECT state FROM holds WHERE id = $1", hold.id) == "committed"
    assert await db.fetchval("SELECT status FROM orders WHERE id = $1", order.id) == "placed"
    assert await available(db, "A") == 7


async def test_a_hold_past_its_time_cannot_be_committed_even_before_the_sweep(
    db: Database, database_dsn: str
) -> None:
    await stocked(db, {"A": 10})
    engine = await start_engine(database_dsn, EngineConfig(expiry_interval_s=3600))
    try:
        hold = await engine.hold(request(("A", "eu-dc1", 3), ttl_ms=100))
        await asyncio.sleep(0.15)
        with pytest.raises(Refused) as refused:
            async with db.transaction() as conn:
                await place_from_hold(conn, hold.id, channel="pos")
        assert refused.value.reason == "hold-expired"
        assert await engine.expire_due() == 1
        assert (await engine.release(hold.id)).state is HoldState.EXPIRED
        assert await available(db, "A") == 10
    finally:
        await stop_engine(engine)


async def test_holds_expire_across_a_restart(db: Database, database_dsn: str) -> None:
    await stocked(db, {"A": 10})
    first = await start_engine(database_dsn)
    await first.hold(request(("A", "eu-dc1", 4), ttl_ms=200))
    await stop_engine(first)  # nobody sweeps while it is down
    await asyncio.sleep(0.4)
    assert await available(db, "A") == 6
    started = time.monotonic()
    second = await start_engine(database_dsn, EngineConfig(expiry_interval_s=0.1))
    try:

        async def back() -> bool:
            return await available(db, "A") == 10

        await wait_until(back)
        assert time.monotonic() - started < 1.0
    finally:
        await stop_engine(second)
