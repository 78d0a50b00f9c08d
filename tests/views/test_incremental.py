"""The consumer beside real writes and the real capture: what it builds equals a rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from retailsync.cdc.tables import own_tables
from retailsync.db.database import Database
from retailsync.eventlog.base import Delivery
from retailsync.eventlog.postgres import PostgresEventLog
from retailsync.views import GROUP, ViewMaintainer, ensure_built
from tests.cdc.test_capture import capturing
from tests.views.harness import World, caught_up, dump_views, maintaining, oracle, rebuilt


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestConvergence:
    """Random histories, two workers of the group: the views equal a rebuild from scratch."""

    @pytest.mark.parametrize("seed", [7, 8])
    async def test_random_history(self, cdc_db: Database, cdc_dsn: str, seed: int) -> None:
        world = World(cdc_db, random.Random(seed))
        await world.setup()
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            # Changes from before the views exist: the bootstrap builds them, and the events
            # of these changes then meet rows at their version (no-ops).
            await world.run(25)
            async with maintaining(cdc_db, log, workers=2, batch=7):
                await world.run(120)
                await caught_up(log, cdc_db)
                actual = await dump_views(cdc_db)
        assert actual == await rebuilt(cdc_db)
        # The rebuild itself against the rules computed apart from SQL.
        products = [dict(r) for r in await cdc_db.fetch("SELECT * FROM products")]
        atp = {
            r["sku"]: r["available"]
            for r in await cdc_db.fetch(
                "SELECT sku, sum(available)::bigint AS available FROM stock_levels GROUP BY 1"
            )
        }
        want = oracle(products, atp)
        assert [(c, s, i) for c, s, _, _, _, i in actual["view_category_products"]] == want[
            "listings"
        ]
        assert {(c, n, v): k for c, n, v, k in actual["view_facets"]} == want["facets"]
        assert dict(actual["view_atp"]) == atp


class _Gate:
    """An event log whose consumers stop for good at their first ack: the worker is then
    cancelled between its committed transaction and the ack. Its acks follow the commit, as
    JetStream's do (the PostgreSQL log's own join the transaction: no such gap)."""

    def __init__(self, log: PostgresEventLog) -> None:
        self._log = log
        self.reached = asyncio.Event()

    async def consumer(self, group: str, **kwargs: Any) -> Any:
        inner = await self._log.consumer(group, **kwargs)
        gate = self

        class Gated:
            async def fetch(self, batch: int = 100, max_wait: float = 1.0) -> list[Delivery]:
                return await inner.fetch(batch, max_wait)

            def acks_in(self, db: Database) -> bool:
                return False

            async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
                gate.reached.set()
                await asyncio.Event().wait()

            async def nack(self, delivery: Delivery, error: str) -> None:
                await inner.nack(delivery, error)

            async def close(self) -> None:
                await inner.close()

        return Gated()


class TestCrash:
    """A worker cancelled after applying a batch and before acking it: the batch comes back
    and applies again, as no-ops."""

    async def test_cancelled_between_commit_and_ack(self, cdc_db: Database, cdc_dsn: str) -> None:
        world = World(cdc_db, random.Random(3))
        await world.setup()
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            await world.run(30)
            gate = _Gate(log)
            task = asyncio.create_task(ViewMaintainer(cdc_db, gate, ack_wait=0.5).run())
            await asyncio.wait_for(gate.reached.wait(), 20)
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert (await log.lag(GROUP)).events > 0  # applied, not acknowledged
            skipped = sample("retailsync_view_events_total", outcome="skipped")
            await world.run(30)
            async with maintaining(cdc_db, log, ack_wait=0.5):
                await caught_up(log, cdc_db)
                actual = await dump_views(cdc_db)
        assert actual == await rebuilt(cdc_db)
        assert sample("retailsync_view_events_total", outcome="skipped") > skipped


class TestLag:
    """Every event applied is measured from its commit to the views' commit."""

    async def test_lag_has_observations(self, cdc_db: Database, cdc_dsn: str) -> None:
        world = World(cdc_db, random.Random(5))
        await world.setup()
        # Built before the writes, so their events change the views (a build after them
        # would leave every event a no-op).
        await ensure_built(cdc_db)
        before = sample("retailsync_view_lag_seconds_count")
        applied = sample("retailsync_view_events_total", outcome="applied")
        async with (
            capturing(cdc_db, cdc_dsn, own_tables()) as log,
            maintaining(cdc_db, log),
        ):
            await world.run(10)
            await caught_up(log, cdc_db)
        assert sample("retailsync_view_lag_seconds_count") >= before + 10
        assert sample("retailsync_view_lag_seconds_sum") > 0
        assert sample("retailsync_view_events_total", outcome="applied") > applied


class TestRowsNoServiceWrites:
    """Deletes (no service makes one) and an update that leaves the attributes in TOAST (the
    event then lacks them): the views still equal a rebuild."""

    async def test_deletes_and_unchanged_toast(self, cdc_db: Database, cdc_dsn: str) -> None:
        world = World(cdc_db, random.Random(13))
        await world.setup()
        # Random text does not compress, so the attributes are stored out of line (in an
        # object: not a facet value).
        blob = "".join(random.Random(1).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=9000))
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            async with maintaining(cdc_db, log, batch=3):
                await world.run(20)
                await cdc_db.execute(
                    "INSERT INTO products (sku, title, category, attributes) "
                    "VALUES ('BIG', 'Big one', 'a/b', $1), ('GONE', 'Gone soon', 'e/f', $2)",
                    {"notes": {"blob": blob}, "color": "red"},
                    {"color": "blue", "size": 2},
                )
                await cdc_db.execute(
                    "INSERT INTO locations (id, region, kind) VALUES ('L9', 'eu', 'store')"
                )
                await caught_up(log, cdc_db)
                await cdc_db.execute("UPDATE products SET title = 'Big two' WHERE sku = 'BIG'")
                await cdc_db.execute("DELETE FROM products WHERE sku = 'GONE'")
                await cdc_db.execute("UPDATE locations SET region = 'us' WHERE id = 'L9'")
                await cdc_db.execute("DELETE FROM locations WHERE id = 'L9'")
                await world.run(10)
                await caught_up(log, cdc_db)
                actual = await dump_views(cdc_db)
            events = [r.event for r in await log.read(0, 1_000_000)]
        big_update = [e for e in events if e.after and e.after.get("title") == "Big two"]
        assert big_update[0].unchanged_toast == ("attributes",)  # the case under test
        assert actual == await rebuilt(cdc_db)
        products = {row[0]: row for row in actual["view_products"]}
        assert "GONE" not in products
        assert products["BIG"][1] == "Big two"
        assert blob in products["BIG"][3]
        assert "L9" not in {row[0] for row in actual["view_locations"]}
