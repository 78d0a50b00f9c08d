"""kill -9 of `retailsync cdc run` in the middle of a write load: after a restart every
committed change is in the log exactly once, in commit order per key."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from retailsync.cdc.capture import Capture, CaptureConfig, prepare
from retailsync.cdc.events import ChangeEvent
from retailsync.cdc.tables import own_tables
from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate
from retailsync.errors import DatabaseUnavailable, EventLogUnavailable
from retailsync.eventlog.postgres import PostgresEventLog
from retailsync.process import free_port
from tests.processes import RETAILSYNC, _clean_env

ROWS = 1200


class CaptureProcess:
    def __init__(self, dsn: str, slot: str) -> None:
        self.args = [*RETAILSYNC, "--db-url", dsn, "cdc", "run"]
        self.metrics_port = free_port()
        self.env = {
            **_clean_env(),
            "RETAILSYNC_CDC_SLOT": slot,
            "RETAILSYNC_CDC_PUBLICATION": slot,
            "RETAILSYNC_CDC_SOURCE": "faults",
            "RETAILSYNC_CDC_METRICS_PORT": str(self.metrics_port),
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        return text


async def _write(db: Database, done: asyncio.Event) -> None:
    """Insert ROWS products in transactions of 1-7 rows, each row then updated once."""
    written = 0
    rng = secrets.SystemRandom()
    while written < ROWS:
        size = min(rng.randint(1, 7), ROWS - written)
        skus = [f"K{written + i:05d}" for i in range(size)]
        async with db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO products (sku, title, category) VALUES ($1, 'v1', 'toys')",
                [(sku,) for sku in skus],
            )
        async with db.transaction() as conn:
            await conn.execute("UPDATE products SET title = 'v2' WHERE sku = ANY($1)", skus)
        written += size
        await asyncio.sleep(0)
    done.set()


async def _log_count(log: PostgresEventLog) -> int:
    """Row changes in the log. The new slot's snapshot of the tables may add snapshot events
    for rows the writer had already committed; they are checked apart."""
    return sum(r.event.op != "snapshot" for r in await log.read(0, 1_000_000))


@pytest.mark.processes
async def test_kill_9_mid_load_loses_and_doubles_nothing(cdc_db: Database, cdc_dsn: str) -> None:
    slot = f"f_{secrets.token_hex(4)}"
    capture = CaptureProcess(cdc_dsn, slot)
    log = PostgresEventLog(cdc_db)
    capture.start()
    try:
        for _ in range(200):  # the slot exists once the process has prepared
            if await cdc_db.fetchval(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot
            ):
                break
            await asyncio.sleep(0.1)
        done = asyncio.Event()
        writer = asyncio.create_task(_write(cdc_db, done))
        while await _log_count(log) < 300:  # noqa: ASYNC110 - the log is in another process
            await asyncio.sleep(0.02)
        capture.kill()  # mid-load: the writer goes on while no one captures
        await asyncio.sleep(0.5)
        capture.start()
        await writer
        for _ in range(600):
            if await _log_count(log) >= 2 * ROWS:
                break
            await asyncio.sleep(0.1)
        logged = [record.event for record in await log.read(0, 1_000_000)]
        events = [e for e in logged if e.op != "snapshot"]
        snapshots = [e for e in logged if e.op == "snapshot"]
        async with httpx.AsyncClient() as client:
            page = await client.get(f"http://127.0.0.1:{capture.metrics_port}/metrics")
        assert 'retailsync_cdc_events_total{source="faults"}' in page.text
        assert "retailsync_cdc_commit_to_log_seconds_bucket" in page.text
    finally:
        output = capture.stop()
    assert len(events) == 2 * ROWS, output[-2000:]
    assert len({e.id for e in events}) == len(events)
    by_key: dict[str, list[ChangeEvent]] = defaultdict(list)
    for event in events:
        assert event.key is not None
        by_key[event.key["sku"]].append(event)
    assert set(by_key) == {f"K{i:05d}" for i in range(ROWS)}
    for changes in by_key.values():
        assert [e.op for e in changes] == ["insert", "update"]
        assert changes[1].after is not None
        assert changes[1].after["title"] == "v2"
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert {e.key["sku"] for e in snapshots if e.key} <= set(by_key)


async def _insert_acknowledged(db: Database, skus: list[str], acknowledged: list[str]) -> None:
    """Insert ``skus`` one transaction each; remember those whose commit was acknowledged. A
    failed one is retried (ON CONFLICT: it may have committed before the answer was lost)."""
    for sku in skus:
        for _ in range(100):
            try:
                await db.execute(
                    "INSERT INTO products (sku, title, category) VALUES ($1, 't', 'toys') "
                    "ON CONFLICT (sku) DO NOTHING",
                    sku,
                )
            except DatabaseUnavailable:
                await asyncio.sleep(0.1)
                continue
            acknowledged.append(sku)
            break
        await asyncio.sleep(0.002)


async def test_a_postgresql_restart_mid_stream_loses_nothing(
    logical_admin_dsn: str, tmp_path: Path
) -> None:
    """The capture and its log lose their server; both come back, and every acknowledged
    commit is in the log once."""
    version = int(await _fetch(logical_admin_dsn, "SHOW server_version_num")) // 10000
    binaries = Path(f"/usr/lib/postgresql/{version}/bin") if version != 18 else None
    server = EmbeddedPostgres(tmp_path / "pg", binaries=binaries)
    server.start()
    try:
        dsn = server.dsn()
        db = await Database.connect(
            ServerTarget(dsn=dsn, pool_min=1, pool_max=5, command_timeout=10)
        )
        async with db.connection() as conn:
            await migrate(conn)
        cfg = CaptureConfig(source="restart", slot="restart", publication="restart")
        await prepare(db, cfg, own_tables(), snapshot_new=False)
        log = PostgresEventLog(db)
        capture = asyncio.create_task(Capture(db, dsn, log, cfg, own_tables()).run())
        acknowledged: list[str] = []
        await _insert_acknowledged(db, [f"A{i}" for i in range(150)], acknowledged)
        # Fast shutdown under the capture's feet. Stopped from a thread: the server waits for
        # its walsender to send the last WAL, which our reader must be free to take.
        await asyncio.to_thread(server.stop)
        server.start()  # from the main thread: the server's parent-death signal is per thread
        await _insert_acknowledged(db, [f"B{i}" for i in range(150)], acknowledged)
        keys: list[str] = []
        for _ in range(300):
            with contextlib.suppress(EventLogUnavailable):
                keys = [r.event.key["sku"] for r in await log.read(0, 10_000) if r.event.key]
            if len(keys) >= len(acknowledged):
                break
            await asyncio.sleep(0.1)
        capture.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await capture
        await db.close()
    finally:
        server.stop()
    assert len(acknowledged) == 300
    assert sorted(keys) == sorted(acknowledged)  # each once: nothing lost, nothing doubled


async def _fetch(dsn: str, query: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval(query))
    finally:
        await conn.close()


async def test_a_slot_the_server_gave_up_on_is_recreated_and_snapshot(tmp_path: Path) -> None:
    """With max_slot_wal_keep_size small, a slot nobody reads loses its WAL (wal_status
    'lost'). The next start says so, counts it, makes a new slot, and snapshots every table."""
    server = EmbeddedPostgres(tmp_path / "pg")  # private: the setting below is server-wide
    server.start()
    try:
        target = ServerTarget(dsn=server.dsn(), pool_min=1, pool_max=3, command_timeout=60)
        db = await Database.connect(target)
        async with db.connection() as conn:
            await migrate(conn)
        await db.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        await db.execute("SELECT pg_reload_conf()")
        cfg = CaptureConfig(source="lost", slot="lost", publication="lost")
        assert await prepare(db, cfg, own_tables(), snapshot_new=False)
        await db.execute("CREATE TABLE filler (v text)")
        for _ in range(40):  # WAL well past 1MB and a few segments, nobody reading the slot
            await db.execute(
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 1000)"
            )
            await db.execute("SELECT pg_switch_wal()")
        await db.execute("CHECKPOINT")
        status = await db.fetchval(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost'"
        )
        assert status == "lost"
        lost_before = _slots_lost()
        assert await prepare(db, cfg, own_tables())  # recreated
        assert _slots_lost() == lost_before + 1
        requested = await db.fetchval(
            "SELECT count(*) FROM cdc_snapshots WHERE source = 'lost' AND NOT done"
        )
        assert requested == len(own_tables())
        status = await db.fetchval(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost'"
        )
        assert status == "reserved"
        await db.close()
    finally:
        server.stop()


def _slots_lost() -> float:
    value = REGISTRY.get_sample_value("retailsync_cdc_slots_lost_total", {"slot": "lost"})
    return value or 0.0
