"""kill -9 of `retailsync cdc run` in the middle of a write load: after a restart every
committed change is in the log exactly once, in commit order per key."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import tempfile
from collections import defaultdict

from retailsync.cdc.events import ChangeEvent
from retailsync.db.database import Database
from retailsync.eventlog.postgres import PostgresEventLog
from tests.processes import RETAILSYNC, _clean_env

ROWS = 1200


class CaptureProcess:
    def __init__(self, dsn: str, slot: str) -> None:
        self.args = [*RETAILSYNC, "--db-url", dsn, "cdc", "run"]
        self.env = {
            **_clean_env(),
            "RETAILSYNC_CDC_SLOT": slot,
            "RETAILSYNC_CDC_PUBLICATION": slot,
            "RETAILSYNC_CDC_SOURCE": "faults",
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
    return len(await log.read(0, 1_000_000))


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
        events = [record.event for record in await log.read(0, 1_000_000)]
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
