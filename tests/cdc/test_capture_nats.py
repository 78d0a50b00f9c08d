"""Capture into NATS JetStream: the same capture, the other backend, and a kill -9 of the
NATS server in the middle of the load."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from retailsync.cdc.capture import Capture, prepare
from retailsync.cdc.tables import own_tables
from retailsync.db.database import Database
from retailsync.errors import EventLogUnavailable
from retailsync.eventlog import EventLog, open_event_log
from tests.cdc.test_capture import config
from tests.cdc.test_capture_faults import _insert_acknowledged
from tests.eventlog.conftest import NatsServer


async def _keys_in(log: EventLog, want: int) -> list[str]:
    keys: list[str] = []
    for _ in range(300):
        with contextlib.suppress(EventLogUnavailable):
            records = await log.read(0, 10_000)
            keys = [r.event.key["sku"] for r in records if r.event.key]
        if len(keys) >= want:
            break
        await asyncio.sleep(0.1)
    return keys


async def test_nats_killed_mid_load_loses_and_doubles_nothing(
    cdc_db: Database, cdc_dsn: str, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    cfg = config()
    log = await open_event_log(f"{server.url}?stream=capture&ack_timeout=2&connect_timeout=5")
    try:
        await prepare(cdc_db, cfg, own_tables(), snapshot_new=False)
        capture = asyncio.create_task(Capture(cdc_db, cdc_dsn, log, cfg, own_tables()).run())
        acknowledged: list[str] = []
        await _insert_acknowledged(cdc_db, [f"A{i}" for i in range(100)], acknowledged)
        await _keys_in(log, 50)
        server.kill()  # kill -9 while the capture appends
        await _insert_acknowledged(cdc_db, [f"B{i}" for i in range(100)], acknowledged)
        server.start()  # same store: what it acknowledged is there
        keys = await _keys_in(log, len(acknowledged))
        capture.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await capture
    finally:
        await log.close()
        server.kill()
    assert sorted(keys) == sorted(acknowledged)  # every change once, none lost
