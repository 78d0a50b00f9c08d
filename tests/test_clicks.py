"""Click events are written back in batches: accepted at once, in the database within the
flush interval, and a kill -9 loses at most what was accepted in the last interval."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime

import httpx
import pytest

from retailsync.clicks import Click, ClickBuffer
from retailsync.config import ServerTarget
from retailsync.db.database import Database
from retailsync.errors import DatabaseUnavailable
from retailsync.models import Channel
from retailsync.services.keys import create_key
from tests.processes import Serve
from tests.support import WEB, Api


def event(n: int, **extra: object) -> dict[str, object]:
    return {"session_id": f"s-{n}", "kind": "view", "sku": "SKU-1", **extra}


async def rows(db: Database) -> int:
    return int(await db.fetchval("SELECT count(*) FROM click_events"))


async def test_accepted_events_reach_the_database_within_the_interval(api: Api) -> None:
    response = await api.call(
        "POST", "/v1/events/clicks", as_=WEB, json={"events": [event(n) for n in range(300)]}
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 300
    started = time.monotonic()
    while await rows(api.db) < 300:
        assert time.monotonic() - started < 2.0, "not written within the flush interval"
        await asyncio.sleep(0.05)
    stored = await api.db.fetchrow("SELECT * FROM click_events WHERE session_id = 's-7'")
    assert stored["kind"] == "view"
    assert stored["sku"] == "SKU-1"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"events": []}, 422),
        ({"events": [event(1, kind="purchase")]}, 422),
        ({"events": [event(1, session_id="")]}, 422),
        ({"events": [event(1, sku="no spaces")]}, 422),
        ({"events": [event(n) for n in range(501)]}, 422),
        ({"events": [event(1, at="2020-01-01T00:00:00Z")]}, 400),
        ({"events": [event(1, at="2026-01-01T00:00:00")]}, 422),  # no time zone
        ({"events": [event(1)], "extra": 1}, 422),
    ],
)
async def test_bad_events_are_refused_and_nothing_is_buffered(
    api: Api, body: dict[str, object], status: int
) -> None:
    response = await api.call("POST", "/v1/events/clicks", as_=WEB, json=body)
    assert response.status_code == status, response.text
    buffer = api.client._transport.app.state.clicks  # type: ignore[attr-defined]
    assert buffer.buffered == 0
    await buffer.flush()
    assert await rows(api.db) == 0


async def test_a_key_is_needed(api: Api) -> None:
    response = await api.client.post("/v1/events/clicks", json={"events": [event(1)]})
    assert response.status_code == 401


async def test_events_wait_in_the_buffer_while_the_database_is_away(
    db: Database, database_dsn: str
) -> None:
    gone = await Database.connect(ServerTarget(database_dsn, 0, 1, 5.0))
    await gone.close()  # every call now fails as unavailable
    now = datetime.now(UTC)
    buffer = ClickBuffer(gone, max_buffered=5)
    buffer.accept([Click(f"s-{n}", "view", None, now, now) for n in range(4)])
    with pytest.raises(DatabaseUnavailable):
        await buffer.flush()
    assert buffer.buffered == 4  # kept, in order
    buffer.accept([Click(f"s-{n}", "view", None, now, now) for n in range(4, 8)])
    assert buffer.buffered == 5  # bounded: the oldest went
    buffer._db = db
    assert await buffer.flush() == 5
    names = [
        r["session_id"] for r in await db.fetch("SELECT session_id FROM click_events ORDER BY id")
    ]
    assert names == ["s-3", "s-4", "s-5", "s-6", "s-7"]


@pytest.mark.processes
async def test_kill_9_loses_at_most_the_last_interval(db: Database, database_dsn: str) -> None:
    async with db.transaction() as conn:
        _, secret = await create_key(conn, Channel.WEB)
    acked: dict[int, float] = {}  # batch number -> when its 202 came
    with Serve(database_dsn) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}
        ) as client:
            started = time.monotonic()
            batch = 0
            while time.monotonic() - started < 2.5:
                body = {"events": [event(batch * 10 + n) for n in range(10)]}
                response = await client.post("/v1/events/clicks", json=body)
                assert response.status_code == 202
                acked[batch] = time.monotonic()
                batch += 1
            killed = time.monotonic()
            server.signal(signal.SIGKILL)
    stored = {
        int(row["session_id"][2:]) // 10
        for row in await db.fetch("SELECT DISTINCT session_id FROM click_events")
    }
    old = {n for n, at in acked.items() if at < killed - 1.5}  # accepted 1.5 intervals ago
    assert old, "the run was too short to have flushed"
    assert old <= stored  # every one of them was written
    lost = set(acked) - stored
    assert all(acked[n] >= killed - 1.5 for n in lost)
    assert len(lost) < len(acked)  # something was written: the window is not everything
