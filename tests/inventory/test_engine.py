"""Every strategy keeps the ledger's rules: a hold is every line or none, a key is one hold,
a refusal writes nothing, a purchase limit holds, and the stock audit balances after."""

from __future__ import annotations

import asyncio

import pytest

from retailsync.db.database import Database
from retailsync.errors import HoldKeyReused, InsufficientStock, NotFound, Refused, RequestInvalid
from retailsync.inventory.check import check_inventory
from retailsync.inventory.engine import InventoryEngine
from retailsync.inventory.model import HoldState, Policy, StrategyName
from tests.inventory.conftest import request, stocked

STRATEGIES = [s for s in StrategyName if s is not StrategyName.AUTO]


async def reserved(db: Database, sku: str, location: str = "eu-dc1") -> int:
    return int(
        await db.fetchval(
            "SELECT reserved FROM stock_levels WHERE sku = $1 AND location = $2", sku, location
        )
    )


async def assert_balanced(db: Database) -> None:
    async with db.connection() as conn:
        checked = await check_inventory(conn)
    assert checked.ok, checked.problems()


@pytest.mark.parametrize("strategy", STRATEGIES)
class TestEveryStrategy:
    async def test_a_hold_takes_its_units_and_is_recorded(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100, "B": 100})
        hold = await engine.hold(
            request(("A", "eu-dc1", 3), ("B", "eu-store1", 2), customer="c-1"), strategy=strategy
        )
        assert hold.state is HoldState.HELD
        assert not hold.replayed
        assert {(line.sku, line.location, line.quantity) for line in hold.lines} == {
            ("A", "eu-dc1", 3),
            ("B", "eu-store1", 2),
        }
        assert await reserved(db, "A") == 3
        assert await reserved(db, "B", "eu-store1") == 2
        assert await db.fetchval("SELECT state FROM holds WHERE id = $1", hold.id) == "held"
        await assert_balanced(db)

    async def test_the_same_key_is_the_same_hold(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100})
        first = await engine.hold(request(("A", "eu-dc1", 3), key="k-1"), strategy=strategy)
        again = await engine.hold(request(("A", "eu-dc1", 3), key="k-1"), strategy=strategy)
        assert again.id == first.id
        assert again.replayed
        assert await reserved(db, "A") == 3
        with pytest.raises(HoldKeyReused):
            await engine.hold(request(("A", "eu-dc1", 4), key="k-1"), strategy=strategy)
        assert await db.fetchval("SELECT count(*) FROM holds") == 1

    async def test_concurrent_duplicates_make_one_hold(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100})
        holds = await asyncio.gather(
            *[
                engine.hold(request(("A", "eu-dc1", 2), key="dup"), strategy=strategy)
                for _ in range(8)
            ]
        )
        assert len({hold.id for hold in holds}) == 1
        assert sum(not hold.replayed for hold in holds) == 1
        assert await reserved(db, "A") == 2
        await assert_balanced(db)

    async def test_a_short_line_refuses_the_whole_hold_and_writes_nothing(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100, "B": 1})
        with pytest.raises(InsufficientStock) as refused:
            await engine.hold(request(("A", "eu-dc1", 5), ("B", "eu-dc1", 2)), strategy=strategy)
        assert [s.as_dict() for s in refused.value.shortages] == [
            {"sku": "B", "location": "eu-dc1", "requested": 2, "available": 1}
        ]
        assert await reserved(db, "A") == 0
        assert await db.fetchval("SELECT count(*) FROM holds") == 0
        assert await db.fetchval("SELECT count(*) FROM reservations") == 0

    async def test_an_unknown_place_is_not_found(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100})
        with pytest.raises(NotFound):
            await engine.hold(request(("A", "nowhere", 1)), strategy=strategy)
        with pytest.raises(NotFound):
            await engine.hold(request(("NOPE", "eu-dc1", 1)), strategy=strategy)
        assert await db.fetchval("SELECT count(*) FROM holds") == 0

    async def test_a_purchase_limit_counts_holds_and_frees_on_release(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 100})
        engine.set_policy("A", Policy(strategy, per_customer_limit=3))
        with pytest.raises(Refused) as anonymous:
            await engine.hold(request(("A", "eu-dc1", 1)))
        assert anonymous.value.reason == "customer-required"
        first = await engine.hold(request(("A", "eu-dc1", 2), customer="c-1"))
        with pytest.raises(Refused) as over:
            await engine.hold(request(("A", "eu-dc1", 2), customer="c-1"))
        assert over.value.reason == "purchase-limit"
        await engine.hold(request(("A", "eu-dc1", 3), customer="c-2"))  # another customer
        await engine.release(first.id)
        await engine.hold(request(("A", "eu-dc1", 3), customer="c-1"))
        usage = await db.fetchval(
            "SELECT quantity FROM customer_sku_usage WHERE customer_id = 'c-1' AND sku = 'A'"
        )
        assert usage == 3
        await assert_balanced(db)

    async def test_never_oversells_under_a_crowd(
        self, engine: InventoryEngine, db: Database, strategy: StrategyName
    ) -> None:
        await stocked(db, {"A": 25})

        async def buyer() -> int:
            try:
                await engine.hold(request(("A", "eu-dc1", 2)), strategy=strategy)
            except (InsufficientStock, Refused):  # sold out; or, optimistic, contention
                return 0
            return 2

        sold = sum(await asyncio.gather(*[buyer() for _ in range(40)]))
        assert sold == await reserved(db, "A")
        assert sold <= 25
        if strategy is not StrategyName.OPTIMISTIC:  # the others queue rather than give up
            assert sold == 24
        await assert_balanced(db)


async def test_release_gives_the_units_back_once(engine: InventoryEngine, db: Database) -> None:
    await stocked(db, {"A": 10})
    hold = await engine.hold(request(("A", "eu-dc1", 4)))
    released = await engine.release(hold.id)
    assert released.state is HoldState.RELEASED
    assert (await engine.release(hold.id)).state is HoldState.RELEASED
    assert await reserved(db, "A") == 0
    await assert_balanced(db)


async def test_bad_requests_are_refused_before_anything_runs() -> None:
    with pytest.raises(RequestInvalid):
        request(("A", "eu-dc1", 0))
    with pytest.raises(RequestInvalid):
        request(("A", "eu-dc1", 1), ("A", "eu-dc1", 2))
    with pytest.raises(RequestInvalid):
        request(("A", "eu-dc1", 1), ttl_ms=99)
    with pytest.raises(RequestInvalid):
        request(("A", "eu-dc1", 1), ttl_ms=24 * 3600 * 1000 + 1)
    with pytest.raises(RequestInvalid):
        request(("A", "eu-dc1", 1), customer="not a customer id")
    with pytest.raises(RequestInvalid):
        request()


async def test_auto_takes_escrow_while_hot_and_the_row_when_low(
    engine: InventoryEngine, db: Database
) -> None:
    await stocked(db, {"HOT": 1000, "LOW": 30})
    hot = [engine.hold(request(("HOT", "eu-dc1", 1))) for _ in range(120)]
    strategies = {hold.strategy for hold in await asyncio.gather(*hot)}
    assert "escrow" in strategies
    # A sku near its threshold (20) never has more than 30 - 20 units in escrow: the rest, and
    # every hold once it is that low, sell from the row. Which of a concurrent burst the
    # escrow lanes serve depends on how their refills interleave, so only the count is fixed.
    burst = await asyncio.gather(*[engine.hold(request(("LOW", "eu-dc1", 1))) for _ in range(20)])
    assert sum(hold.strategy == "escrow" for hold in burst) <= 30 - 20
    after = [await engine.hold(request(("LOW", "eu-dc1", 1))) for _ in range(5)]
    assert {hold.strategy for hold in after} == {"batched"}
    assert (
        await db.fetchval("SELECT coalesce(sum(free), 0) FROM escrow_allotments WHERE sku = 'LOW'")
        <= 30 - 20
    )
    await assert_balanced(db)


async def test_escrow_allotments_go_back_when_the_engine_closes(
    database_dsn: str, db: Database
) -> None:
    from tests.inventory.conftest import start_engine, stop_engine

    await stocked(db, {"A": 500})
    engine = await start_engine(database_dsn)
    try:
        await engine.hold(request(("A", "eu-dc1", 1)), strategy=StrategyName.ESCROW)
        assert await db.fetchval("SELECT sum(free) FROM escrow_allotments") > 0
        # Units in escrow still count as available to the channels.
        assert (
            await db.fetchval(
                "SELECT available FROM stock_levels WHERE sku = 'A' AND location = 'eu-dc1'"
            )
            == 499
        )
    finally:
        await stop_engine(engine)
    assert await db.fetchval("SELECT count(*) FROM escrow_allotments") == 0
    assert (
        await db.fetchval("SELECT reserved FROM stock WHERE sku = 'A' AND location = 'eu-dc1'") == 1
    )
    await assert_balanced(db)


@pytest.mark.parametrize("strategy", [None, StrategyName.ESCROW])
async def test_a_crowd_through_escrow_sells_every_unit(
    engine: InventoryEngine, db: Database, strategy: StrategyName | None
) -> None:
    """No false sold-out: when the row runs low, the lanes' allotments come back to it."""
    await stocked(db, {"F": 300})
    sold: list[str] = []

    async def buyer() -> None:
        while True:
            try:
                hold = await engine.hold(request(("F", "eu-dc1", 1)), strategy=strategy)
            except InsufficientStock:
                return
            sold.append(hold.strategy)

    await asyncio.gather(*[buyer() for _ in range(100)])
    assert len(sold) == 300
    assert "escrow" in sold
    assert (
        await db.fetchval(
            "SELECT available FROM stock_levels WHERE sku = 'F' AND location = 'eu-dc1'"
        )
        == 0
    )
    await assert_balanced(db)


# Optimistic shares atomic's retry code (DirectStrategy.hold) and takes seconds here: its
# backoff waits between deadlocks, each found only after PostgreSQL's deadlock_timeout.
@pytest.mark.parametrize("strategy", [s for s in StrategyName if s is not StrategyName.OPTIMISTIC])
async def test_crossed_multi_line_holds_never_fail_with_a_deadlock(
    engine: InventoryEngine, db: Database, strategy: StrategyName
) -> None:
    """Half of 8 buyers hold [A, B], half [B, A]: group commit locks in order; the per-request
    strategies may deadlock and then retry, or refuse with `contention`: never an error."""
    await stocked(db, {"A": 1000, "B": 1000})

    async def buyer(n: int) -> str:
        lines = [("A", "eu-dc1", 1), ("B", "eu-dc1", 1)]
        try:
            await engine.hold(
                request(*(lines if n % 2 else lines[::-1])),
                strategy=None if strategy is StrategyName.AUTO else strategy,
            )
        except Refused as refused:
            return refused.reason
        return "held"

    outcomes = await asyncio.gather(*[buyer(n) for n in range(8)])
    assert set(outcomes) <= {"held", "contention"}
    assert "held" in outcomes
    await assert_balanced(db)
