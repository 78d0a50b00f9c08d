"""Randomized histories of holds, commits, releases, expiries, cancellations and shipments,
over skus that each take another strategy, checked by ``check_inventory`` and against what
the clients were told.

The big run has many concurrent clients and is checked at the end; the small one takes one
step at a time and is checked after every step.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from uuid import UUID

import pytest

from retailsync.db.database import Database
from retailsync.errors import DomainError
from retailsync.inventory.check import check_inventory
from retailsync.inventory.engine import EngineConfig, InventoryEngine
from retailsync.inventory.model import HoldState, Policy, StrategyName
from retailsync.models import OrderStatus
from retailsync.services.orders import change_status, place_from_hold
from tests.inventory.conftest import LOCATIONS, request, start_engine, stocked, stop_engine

SKUS = {  # sku -> the strategy its policy names
    "P": StrategyName.PESSIMISTIC,
    "O": StrategyName.OPTIMISTIC,
    "A": StrategyName.ATOMIC,
    "B": StrategyName.BATCHED,
    "E": StrategyName.ESCROW,
    "X": StrategyName.AUTO,
    "Y": StrategyName.AUTO,
}
LIMITED = {"X": 6}  # per-customer purchase limit
CUSTOMERS = [f"c-{n}" for n in range(6)]


@dataclass
class Told:
    """What the clients were told, to hold the database to."""

    held: dict[UUID, str] = field(default_factory=dict)  # hold -> key
    committed: dict[UUID, UUID] = field(default_factory=dict)  # hold -> order
    released: set[UUID] = field(default_factory=set)
    keys: dict[str, tuple[UUID, tuple[tuple[str, str, int], ...], str | None]] = field(
        default_factory=dict
    )


async def step(engine: InventoryEngine, db: Database, rng: random.Random, told: Told) -> None:
    """One random operation; refusals are answers too (and must have changed nothing)."""
    roll = rng.random()
    mine = [hold for hold in told.held if hold not in told.committed | dict.fromkeys(told.released)]
    try:
        if roll < 0.5 or not told.held:
            skus = rng.sample(sorted(SKUS), rng.randint(1, 3))
            lines = tuple((sku, rng.choice(LOCATIONS), rng.randint(1, 4)) for sku in skus)
            customer = rng.choice(CUSTOMERS) if rng.random() < 0.8 else None
            ttl = rng.choice([150, 400, 60_000])
            key = f"k-{rng.getrandbits(48)}"
            hold = await engine.hold(request(*lines, key=key, ttl_ms=ttl, customer=customer))
            told.held[hold.id] = key
            told.keys[key] = (hold.id, lines, customer)
            # Half the time, the client "did not hear" and retries: the same hold comes back.
            if rng.random() < 0.5:
                again = await engine.hold(request(*lines, key=key, ttl_ms=ttl, customer=customer))
                assert again.id == hold.id
                assert again.replayed
        elif roll < 0.7 and mine:
            hold_id = rng.choice(mine)
            async with db.transaction() as conn:
                order = await place_from_hold(conn, hold_id, channel="pos")
            told.committed[hold_id] = order.id
        elif roll < 0.85 and mine:
            hold_id = rng.choice(mine)
            if (await engine.release(hold_id)).state is HoldState.RELEASED:
                told.released.add(hold_id)  # else it had expired already: nothing to give
        elif told.committed:
            hold_id, order_id = rng.choice(sorted(told.committed.items()))
            status = rng.choice([OrderStatus.PAID, OrderStatus.CANCELLED, OrderStatus.SHIPPED])
            async with db.transaction() as conn:
                await change_status(conn, order_id, status, channel="admin")
    except DomainError:
        pass  # sold out, over a limit, expired, an order not in the state for that, ...


async def world(db: Database, engine: InventoryEngine) -> None:
    await stocked(db, dict.fromkeys(SKUS, 40))
    for sku, strategy in SKUS.items():
        policy = Policy(strategy, LIMITED.get(sku))
        async with db.connection() as conn:
            await conn.execute(
                "INSERT INTO reservation_policies (sku, strategy, per_customer_limit) "
                "VALUES ($1, $2, $3)",
                sku,
                policy.strategy.value,
                policy.per_customer_limit,
            )
        engine.set_policy(sku, policy)


async def check(db: Database) -> None:
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    assert checked.ok, checked.problems()


async def held_to_what_was_told(db: Database, told: Told) -> None:
    rows = await db.fetch("SELECT id, state, order_id FROM holds")
    states = {row["id"]: (HoldState(row["state"]), row["order_id"]) for row in rows}
    assert set(told.held) == set(states)  # every acknowledged hold, and nothing else
    for hold_id, order_id in told.committed.items():
        assert states[hold_id] == (HoldState.COMMITTED, order_id)
    for hold_id in told.released:
        assert states[hold_id][0] is HoldState.RELEASED
    assert not set(told.committed) & told.released
    for hold_id in set(told.held) - set(told.committed) - told.released:
        # Expired by now (every short TTL is long past), or still held (a 60 s TTL).
        assert states[hold_id][0] in (HoldState.EXPIRED, HoldState.HELD)
    negative = await db.fetchval("SELECT count(*) FROM stock_levels WHERE available < 0")
    assert negative == 0


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_histories_balance(db: Database, database_dsn: str, seed: int) -> None:
    engine = await start_engine(
        database_dsn, EngineConfig(expiry_interval_s=0.05, hot_rps=20, low_stock_threshold=8)
    )
    try:
        await world(db, engine)
        told = Told()
        rng = random.Random(seed)

        async def client(client_rng: random.Random) -> None:
            for _ in range(60):
                await step(engine, db, client_rng, told)

        await asyncio.gather(*[client(random.Random(rng.random())) for _ in range(16)])
        await asyncio.sleep(0.6)  # every short TTL has run out...
        await engine.expire_due()  # ...and the expiry chore has run at least once since
        await held_to_what_was_told(db, told)
        await check(db)
        assert any(state == "expired" for (state,) in await db.fetch("SELECT state FROM holds"))
    finally:
        await stop_engine(engine)
    await check(db)  # escrow allotments given back


async def test_every_step_balances(db: Database, engine: InventoryEngine) -> None:
    await world(db, engine)
    told = Told()
    rng = random.Random(7)
    for _ in range(120):
        await step(engine, db, rng, told)
        await check(db)
        if rng.random() < 0.1:
            await asyncio.sleep(0.2)
            await engine.expire_due()
            await check(db)
    await held_to_what_was_told(db, told)
