"""Snapshots interleaved with the stream by watermarks: the log ends at the table's state."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from retailsync.cdc import snapshot
from retailsync.cdc.tables import own_tables
from retailsync.db.database import Database
from tests.cdc.test_capture import capturing, config, events_in


def fold(events: list[Any]) -> dict[str, str]:
    """Replay the log: sku -> title, as a consumer applying every event would hold it."""
    state: dict[str, str] = {}
    for event in events:
        if event.table != "public.products":
            continue
        sku = event.key["sku"]
        if event.op == "delete":
            state.pop(sku, None)
        elif event.after is not None:
            state[sku] = event.after["title"]
    return state


async def table_state(db: Database) -> dict[str, str]:
    rows = await db.fetch("SELECT sku, title FROM products")
    return {row["sku"]: row["title"] for row in rows}


async def test_a_new_slot_snapshots_rows_already_there(cdc_db: Database, cdc_dsn: str) -> None:
    await cdc_db.execute(
        "INSERT INTO products (sku, title, category) "
        "SELECT 'P' || g, 'before', 'toys' FROM generate_series(1, 4500) g"
    )
    async with capturing(cdc_db, cdc_dsn, own_tables(), snapshot_new=True) as log:
        await cdc_db.execute(
            "INSERT INTO products (sku, title, category) VALUES ('NEW', 'n', 'toys')"
        )
        events = await events_in(log, 4501)
        progress = await cdc_db.fetchrow(
            "SELECT rows_emitted, done FROM cdc_snapshots WHERE table_name = 'public.products'"
        )
    before = {f"P{i}" for i in range(1, 4501)}
    snapshot_keys = [e.key["sku"] for e in events if e.op == "snapshot"]
    # NEW may be read by a chunk too, if it committed before that chunk's window opened.
    assert before <= set(snapshot_keys) <= before | {"NEW"}
    assert len(snapshot_keys) == len(set(snapshot_keys))
    assert fold(events) == await table_state(cdc_db)
    assert progress is not None
    assert progress["done"]
    assert progress["rows_emitted"] == len(snapshot_keys)


async def test_writes_during_a_snapshot_never_go_back_in_time(
    cdc_db: Database, cdc_dsn: str
) -> None:
    await cdc_db.execute(
        "INSERT INTO products (sku, title, category) "
        "SELECT 'P' || g, 'v0', 'toys' FROM generate_series(1, 6000) g"
    )
    stop = asyncio.Event()

    async def writer() -> None:
        rng = random.Random(5)
        version = 0
        while not stop.is_set():
            version += 1
            skus = [f"P{rng.randint(1, 6000)}" for _ in range(20)]
            await cdc_db.execute(
                "UPDATE products SET title = $2 WHERE sku = ANY($1)", skus, f"v{version}"
            )
            if version % 7 == 0:
                await cdc_db.execute("DELETE FROM products WHERE sku = $1", skus[0])
            await asyncio.sleep(0.005)

    cfg = config()
    async with capturing(cdc_db, cdc_dsn, own_tables(), cfg, snapshot_new=True) as log:
        task = asyncio.create_task(writer())
        for _ in range(1200):  # up to 60 s on a loaded machine
            done = await cdc_db.fetchval(
                "SELECT done FROM cdc_snapshots WHERE source = $1 AND table_name = $2",
                cfg.source,
                "public.products",
            )
            if done:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await cdc_db.execute(
            "INSERT INTO products (sku, title, category) VALUES ('END', 'e', 'toys')"
        )
        expected = await table_state(cdc_db)
        for _ in range(200):
            events = await events_in(log, 0)
            if any(e.key and e.key.get("sku") == "END" for e in events):
                break
            await asyncio.sleep(0.05)
    assert done
    assert fold(events) == expected


async def test_one_table_again_on_demand(cdc_db: Database, cdc_dsn: str) -> None:
    cfg = config()
    async with capturing(cdc_db, cdc_dsn, own_tables(), cfg) as log:
        await cdc_db.execute("INSERT INTO regions (id) VALUES ('eu')")
        await cdc_db.execute(
            "INSERT INTO locations (id, region, kind) VALUES ('A', 'eu', 'store'), "
            "('B', 'eu', 'warehouse')"
        )
        await events_in(log, 2)
        await snapshot.request(cdc_db, cfg.source, ["public.locations"])
        events = await events_in(log, 4)
    assert [(e.op, e.key) for e in events[2:]] == [
        ("snapshot", {"id": "A"}),
        ("snapshot", {"id": "B"}),
    ]
    assert events[3].after is not None
    assert events[3].after["kind"] == "warehouse"
