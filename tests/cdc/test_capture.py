"""The capture process end to end: real slot, real pgoutput stream, the PostgreSQL event log."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from retailsync.cdc.capture import Capture, CaptureConfig, prepare
from retailsync.cdc.events import ChangeEvent
from retailsync.cdc.slot import slot_status
from retailsync.cdc.tables import CapturedTable, load_tables, own_tables
from retailsync.db.database import Database
from retailsync.errors import ConfigError
from retailsync.eventlog.postgres import PostgresEventLog
from tests.processes import cli

ERP = CapturedTable("erp.stock_levels", "erp.stock.changed", ("item_no", "warehouse"))


def config() -> CaptureConfig:
    name = f"t_{secrets.token_hex(4)}"
    return CaptureConfig(source="test", slot=name, publication=name, heartbeat_seconds=0.2)


async def events_in(log: PostgresEventLog, count: int, within: float = 20) -> list[ChangeEvent]:
    """Wait until the log holds ``count`` events; return them in log order."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        records = await log.read(0, 100_000)
        if len(records) >= count or asyncio.get_running_loop().time() > deadline:
            return [record.event for record in records]
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def capturing(
    db: Database,
    dsn: str,
    tables: Sequence[CapturedTable],
    cfg: CaptureConfig | None = None,
    *,
    snapshot_new: bool = False,
) -> AsyncIterator[PostgresEventLog]:
    """Run a capture into the database's own event log for the ``async with`` block. The
    initial snapshot is off unless asked for: these tests look at the stream alone."""
    cfg = cfg or config()
    log = PostgresEventLog(db)
    await prepare(db, cfg, tables, snapshot_new=snapshot_new)
    task = asyncio.create_task(Capture(db, dsn, log, cfg, tables).run())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def make_product(db: Database, sku: str, title: str = "A title") -> None:
    await db.fetchval(
        "INSERT INTO products (sku, title, category) VALUES ($1, $2, 'toys') "
        "ON CONFLICT (sku) DO UPDATE SET title = EXCLUDED.title RETURNING version",
        sku,
        title,
    )


class TestStream:
    async def test_transactions_arrive_whole_in_commit_order(
        self, cdc_db: Database, cdc_dsn: str
    ) -> None:
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            async with cdc_db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO products (sku, title, category) VALUES ('A', 'a', 'toys'), "
                    "('B', 'b', 'toys')"
                )
                await conn.execute(
                    "SELECT pg_logical_emit_message(true, 'orders.placed', '{\"order\": 1}')"
                )
            await cdc_db.execute("UPDATE products SET title = 'a2' WHERE sku = 'A'")
            await cdc_db.execute("DELETE FROM products WHERE sku = 'B'")
            events = await events_in(log, 5)
        assert [(e.op, e.key) for e in events] == [
            ("insert", {"sku": "A"}),
            ("insert", {"sku": "B"}),
            ("message", None),
            ("update", {"sku": "A"}),
            ("delete", {"sku": "B"}),
        ]
        first = events[:3]
        assert len({e.xid for e in first}) == 1
        assert len({e.commit_lsn for e in first}) == 1
        assert [e.index for e in first] == [0, 1, 2]
        assert [e.last_in_tx for e in events] == [False, False, True, True, True]
        assert events[2].table == "orders.placed"
        assert events[2].payload == '{"order": 1}'
        assert events[3].after is not None
        assert events[3].after["title"] == "a2"
        assert events[0].type == "products.changed"
        assert events[0].source == "test"
        ids = [e.id for e in events]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        commits = [e.commit_lsn for e in events]
        assert commits == sorted(commits)

    async def test_unchanged_toast_is_named_never_invented(
        self, cdc_db: Database, cdc_dsn: str
    ) -> None:
        big = secrets.token_hex(100_000)  # random: it is stored out of line, not compressed
        await make_product(cdc_db, "T")
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            await cdc_db.execute(
                "UPDATE products SET attributes = jsonb_build_object('manual', $1::text) "
                "WHERE sku = 'T'",
                big,
            )
            await cdc_db.execute("UPDATE products SET title = 'new' WHERE sku = 'T'")
            events = await events_in(log, 2)
        with_big, untouched = events
        assert with_big.after is not None
        assert with_big.after["attributes"] == {"manual": big}
        assert untouched.unchanged_toast == ("attributes",)
        assert untouched.after is not None
        assert "attributes" not in untouched.after
        assert untouched.after["title"] == "new"

    async def test_a_column_added_mid_stream(self, cdc_db: Database, cdc_dsn: str) -> None:
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            await make_product(cdc_db, "D1")
            await cdc_db.execute("ALTER TABLE locations ADD COLUMN note text")
            await cdc_db.execute("INSERT INTO regions (id) VALUES ('eu')")
            await cdc_db.execute(
                "INSERT INTO locations (id, region, kind, note) VALUES ('L1', 'eu', 'store', 'x')"
            )
            events = await events_in(log, 2)
        assert events[-1].after is not None
        assert events[-1].after["note"] == "x"

    async def test_a_large_transaction_streamed_in_progress_arrives_whole(
        self, cdc_db: Database, cdc_dsn: str
    ) -> None:
        # A tiny decoding memory makes the server stream the transaction before it commits.
        dsn = (
            cdc_dsn
            + ("&" if "?" in cdc_dsn else "?")
            + "options=-c%20logical_decoding_work_mem%3D64kB"
        )
        async with capturing(cdc_db, dsn, own_tables()) as log:
            async with cdc_db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO products (sku, title, category) "
                    "SELECT 'S' || g, repeat('t', 100), 'toys' FROM generate_series(1, 3000) g"
                )
            with contextlib.suppress(RuntimeError):
                async with cdc_db.transaction() as conn:
                    await conn.execute(
                        "INSERT INTO products (sku, title, category) "
                        "SELECT 'X' || g, repeat('t', 100), 'toys' FROM generate_series(1, 3000) g"
                    )
                    raise RuntimeError("roll back")
            await make_product(cdc_db, "AFTER")
            events = await events_in(log, 3001)
        assert len(events) == 3001
        assert {e.key["sku"] for e in events if e.key} == {f"S{i}" for i in range(1, 3001)} | {
            "AFTER"
        }
        assert len({e.xid for e in events[:3000]}) == 1
        assert events[2999].last_in_tx


class TestLegacyTables:
    async def test_a_table_we_do_not_own_is_captured_by_its_configured_key(
        self, cdc_db: Database, cdc_dsn: str
    ) -> None:
        await cdc_db.execute(
            "CREATE SCHEMA erp; CREATE TABLE erp.stock_levels "
            "(item_no text, warehouse text, qty int); "
            "ALTER TABLE erp.stock_levels REPLICA IDENTITY FULL"
        )
        async with capturing(cdc_db, cdc_dsn, [*own_tables(), ERP]) as log:
            # The legacy writer, unchanged: plain SQL against its own table.
            await cdc_db.execute("INSERT INTO erp.stock_levels VALUES ('I1', 'W1', 5)")
            await cdc_db.execute("UPDATE erp.stock_levels SET qty = 4 WHERE item_no = 'I1'")
            await cdc_db.execute("DELETE FROM erp.stock_levels")
            events = await events_in(log, 3)
        assert [e.op for e in events] == ["insert", "update", "delete"]
        assert all(e.key == {"item_no": "I1", "warehouse": "W1"} for e in events)
        assert all(e.type == "erp.stock.changed" for e in events)
        assert events[1].before == {"item_no": "I1", "warehouse": "W1", "qty": 5}

    @pytest.mark.parametrize(
        ("ddl", "table", "message"),
        [
            ("", CapturedTable("erp.missing", "x"), "no such table"),
            ("CREATE TABLE erp.t (a int)", CapturedTable("erp.t", "x"), "no primary key"),
            ("CREATE TABLE erp.t (a int)", CapturedTable("erp.t", "x", ("a",)), "REPLICA IDENTITY"),
            ("CREATE TABLE erp.t (a int)", CapturedTable("erp.t", "x", ("b",)), "no columns"),
        ],
    )
    async def test_tables_that_cannot_be_keyed_are_refused_at_start(
        self, cdc_db: Database, ddl: str, table: CapturedTable, message: str
    ) -> None:
        await cdc_db.execute(f"CREATE SCHEMA erp; {ddl}")
        cfg = config()
        with pytest.raises(ConfigError, match=message):
            await prepare(cdc_db, cfg, [table])
        slots = await cdc_db.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", cfg.slot
        )
        assert slots == 0


class TestTablesFile:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("[[table]]\nname = 'NoSchema'\n", "schema.table"),
            ("[[table]]\nname = 'erp.t'\nkey = 'a'\n", "list of column names"),
            ("[[table]]\nname = 'erp.t'\ncolour = 1\n", "unknown keys"),
            ("[[table]]\nname = 'public.products'\n", "named twice"),
            ("[tables]\n", "unknown sections"),
            ("name = \n", "not valid TOML"),
        ],
    )
    def test_bad_files_name_the_setting(self, tmp_path: Path, text: str, message: str) -> None:
        path = tmp_path / "tables.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as raised:
            load_tables(path)
        assert "RETAILSYNC_CDC_TABLES_FILE" in str(raised.value)

    def test_a_good_file(self, tmp_path: Path) -> None:
        path = tmp_path / "tables.toml"
        path.write_text(
            "[[table]]\nname = 'erp.stock_levels'\nkey = ['item_no', 'warehouse']\n"
            "type = 'erp.stock.changed'\n"
        )
        assert load_tables(path)[-1] == ERP


class TestSlotSafety:
    async def test_heartbeats_move_an_idle_slot(self, cdc_db: Database, cdc_dsn: str) -> None:
        """Nothing captured changes, yet WAL is written (here by a table not captured): the
        heartbeats let the slot confirm past it, so the server can recycle that WAL."""
        cfg = config()
        await cdc_db.execute("CREATE TABLE not_captured (n int)")
        async with capturing(cdc_db, cdc_dsn, own_tables(), cfg) as log:
            await asyncio.sleep(0.5)
            async with cdc_db.connection() as conn:
                before = await slot_status(conn, cfg.slot)
            await cdc_db.execute("INSERT INTO not_captured SELECT generate_series(1, 20000)")
            for _ in range(100):
                async with cdc_db.connection() as conn:
                    after = await slot_status(conn, cfg.slot)
                if after.confirmed_lsn > before.confirmed_lsn + 100_000:
                    break
                await asyncio.sleep(0.1)
            assert await log.read(0, 10) == []  # heartbeats are not events
        assert after.confirmed_lsn > before.confirmed_lsn + 100_000
        assert after.wal_status in ("reserved", "extended")

    @pytest.mark.processes
    async def test_cdc_status_reports_the_slot(self, cdc_db: Database, cdc_dsn: str) -> None:
        cfg = config()
        await prepare(cdc_db, cfg, own_tables(), snapshot_new=False)
        env = {
            "RETAILSYNC_CDC_SLOT": cfg.slot,
            "RETAILSYNC_CDC_PUBLICATION": cfg.publication,
            "RETAILSYNC_CDC_SOURCE": cfg.source,
        }
        result = await asyncio.to_thread(
            cli, "--db-url", cdc_dsn, "cdc", "status", env={**env, "COLUMNS": "200"}
        )
        assert result.returncode == 0, result.stderr
        assert cfg.slot in result.stdout
        assert "reserved" in result.stdout
        absent = await asyncio.to_thread(
            cli, "--db-url", cdc_dsn, "cdc", "status", env={**env, "RETAILSYNC_CDC_SLOT": "nope"}
        )
        assert "(absent)" in absent.stdout
