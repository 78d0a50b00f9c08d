"""The waiting room as the real application's gate puts it in front of a sale's product page:
the first session in, the next queued with a token, let in with it when its turn comes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from retailsync.api.app import create_app
from retailsync.config import load_settings
from retailsync.db.database import Database
from retailsync.models import Channel
from retailsync.services.keys import create_key
from tests.support import Api


@pytest.fixture
async def sale_api(db: Database, database_dsn: str) -> AsyncIterator[Api]:
    room = {"name": "drop", "paths": ["/v1/products/DROP-*"], "skus": ["DROP-1"]}
    room |= {"rate_per_s": 2, "burst": 1}
    settings = load_settings(
        {"db_url": database_dsn, "api_key_cache_seconds": 0, "waiting_rooms": json.dumps([room])},
        environ={},
    )
    app = create_app(settings, db=db)
    async with db.transaction() as conn:  # in stock before the room opens
        await conn.execute("INSERT INTO regions (id) VALUES ('eu')")
        await conn.execute("INSERT INTO locations (id, region, kind) VALUES ('W1', 'eu', 'store')")
        await conn.execute(
            "INSERT INTO products (sku, title, category) VALUES ('DROP-1', 'd', 's')"
        )
        await conn.execute("INSERT INTO stock (sku, location, on_hand) VALUES ('DROP-1', 'W1', 5)")
    keys = {}
    async with db.transaction() as conn:
        for channel in Channel:
            keys[channel] = (await create_key(conn, channel, label="test"))[1]
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://retailsync.test") as client,
    ):
        yield Api(client, db, keys)


async def test_a_sale_page_queues_the_second_session_and_lets_it_in_on_its_turn(
    sale_api: Api,
) -> None:
    api = sale_api
    first = await api.call("GET", "/v1/products/DROP-1", headers={"Accept": "application/json"})
    assert first.status_code == 200
    assert first.headers["retailsync-queue-pass"]  # its pass for the next pages
    api.client.cookies.clear()  # an app keeps headers, not cookies: a new session
    second = await api.call("GET", "/v1/products/DROP-1", headers={"Accept": "application/json"})
    assert second.status_code == 202
    waiting = second.json()
    assert waiting["status"] == "waiting"
    assert waiting["position"] >= 1
    assert int(second.headers["retry-after"]) >= 1
    token = second.headers["retailsync-queue-token"]
    session = second.headers["retailsync-session"]
    headers = {"Retailsync-Queue-Token": token, "Retailsync-Session": session}
    for _ in range(40):  # 2 sessions a second: its turn comes within a second or so
        api.client.cookies.clear()
        again = await api.call("GET", "/v1/products/DROP-1", headers=headers)
        if again.status_code == 200:
            break
        assert again.status_code == 202
        await asyncio.sleep(0.1)
    assert again.status_code == 200
    assert again.json()["sku"] == "DROP-1"
    # Pages the event does not guard never wait.
    assert (await api.call("GET", "/v1/locations")).status_code == 200
