"""``check_inventory`` finds each kind of damage, written behind the engine's back."""

from __future__ import annotations

import asyncio

import pytest

from retailsync.db.database import Database
from retailsync.inventory.check import check_inventory
from retailsync.inventory.engine import InventoryEngine
from retailsync.services.orders import place_from_hold
from tests.inventory.conftest import request, stocked


async def problems(db: Database) -> list[str]:
    async with db.connection() as conn:
        return (await check_inventory(conn)).problems()


@pytest.fixture
async def history(engine: InventoryEngine, db: Database) -> dict[str, str]:
    """A clean ledger: a held hold, a committed one, a released one, with a limited sku."""
    from retailsync.inventory.model import Policy

    await stocked(db, {"A": 20, "L": 20})
    engine.set_policy("L", Policy(per_customer_limit=5))
    held = await engine.hold(request(("A", "eu-dc1", 2), ("L", "eu-dc1", 1), customer="c-1"))
    committed = await engine.hold(request(("A", "eu-dc1", 3)))
    async with db.transaction() as conn:
        await place_from_hold(conn, committed.id, channel="pos")
    released = await engine.hold(request(("A", "eu-store1", 1)))
    await engine.release(released.id)
    assert await problems(db) == []
    return {"held": str(held.id), "committed": str(committed.id), "released": str(released.id)}


async def test_reserved_that_no_line_explains(db: Database, history: dict[str, str]) -> None:
    await db.execute(
        "UPDATE stock SET reserved = reserved + 1 WHERE sku = 'A' AND location = 'eu-dc1'"
    )
    assert any("reserved 6, open holds 5" in p for p in await problems(db))


async def test_units_promised_beyond_what_came_in(db: Database, history: dict[str, str]) -> None:
    await db.execute(
        "UPDATE reservations SET quantity = 30 WHERE hold_id = $1::uuid AND sku = 'A'",
        history["held"],
    )
    found = await problems(db)
    assert any(p.startswith("oversold units") for p in found)


async def test_a_released_hold_with_a_line_still_held(
    db: Database, history: dict[str, str]
) -> None:
    await db.execute(
        "UPDATE reservations SET state = 'held' WHERE hold_id = $1::uuid", history["released"]
    )
    assert any(f"hold {history['released']} (released)" in p for p in await problems(db))


async def test_a_committed_hold_whose_lines_are_not_its_orders(
    db: Database, history: dict[str, str]
) -> None:
    await db.execute(
        "UPDATE reservations SET state = 'held', order_id = NULL WHERE hold_id = $1::uuid",
        history["committed"],
    )
    assert any(f"hold {history['committed']} (committed)" in p for p in await problems(db))


async def test_an_early_expiry(db: Database, history: dict[str, str]) -> None:
    await db.execute(
        "UPDATE holds SET state = 'expired', ended_at = expires_at - interval '1 second' "
        "WHERE id = $1::uuid",
        history["held"],
    )
    await db.execute(
        "UPDATE reservations SET state = 'released' WHERE hold_id = $1::uuid", history["held"]
    )
    assert any("wrong side of its expiry" in p for p in await problems(db))


async def test_a_purchase_allowance_out_of_step(db: Database, history: dict[str, str]) -> None:
    await db.execute("UPDATE customer_sku_usage SET quantity = 4 WHERE customer_id = 'c-1'")
    assert any("usage of c-1 for L: recorded 4, counted lines 1" in p for p in await problems(db))


async def test_a_line_whose_hold_is_missing(db: Database, history: dict[str, str]) -> None:
    await db.execute(
        "UPDATE reservations SET hold_id = gen_random_uuid() WHERE hold_id = $1::uuid",
        history["released"],
    )
    assert any("names a missing hold" in p for p in await problems(db))


async def test_rows_the_lines_refer_to_cannot_be_deleted(
    db: Database, history: dict[str, str]
) -> None:
    import asyncpg

    with pytest.raises(asyncpg.RestrictViolationError):
        await db.execute("DELETE FROM holds WHERE id = $1::uuid", history["released"])
    with pytest.raises(asyncpg.RestrictViolationError):
        await db.execute("DELETE FROM stock WHERE sku = 'A'")
    assert await problems(db) == []


@pytest.mark.processes
async def test_the_command_exits_1_on_damage_and_0_when_clean(
    db: Database, database_dsn: str, history: dict[str, str]
) -> None:
    from tests.processes import cli

    clean = await asyncio.to_thread(cli, "--db-url", database_dsn, "inventory", "check")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert "every invariant holds" in clean.stdout
    await db.execute("UPDATE customer_sku_usage SET quantity = 4 WHERE customer_id = 'c-1'")
    damaged = await asyncio.to_thread(cli, "--db-url", database_dsn, "inventory", "check")
    assert damaged.returncode == 1
    assert "usage of c-1 for L" in damaged.stdout
    assert "Traceback" not in damaged.stderr
