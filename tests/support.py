"""Helpers the tests share: an API client that speaks as any channel, and a small world."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from retailsync.api.app import create_app
from retailsync.config import load_settings
from retailsync.db.database import Database
from retailsync.models import Channel
from retailsync.services.keys import create_key

ADMIN, WEB, MOBILE, POS, WAREHOUSE = (
    Channel.ADMIN,
    Channel.WEB,
    Channel.MOBILE,
    Channel.POS,
    Channel.WAREHOUSE,
)


class Api:
    """The application under test, reached over HTTP semantics (ASGI in-process)."""

    def __init__(self, client: httpx.AsyncClient, db: Database, keys: dict[Channel, str]) -> None:
        self.client = client
        self.db = db
        self.keys = keys

    def auth(self, channel: Channel) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[channel]}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_: Channel = ADMIN,
        json: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        all_headers = {**self.auth(as_), **(headers or {})}
        return await self.client.request(
            method, path, json=json, content=content, headers=all_headers
        )

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def product(self, sku: str, category: str = "toys/games", **attributes: Any) -> Any:
        body = {"title": f"Product {sku}", "category": category, "attributes": attributes}
        return await self.ok("PUT", f"/v1/products/{sku}", json=body)

    async def location(self, location_id: str, region: str, kind: str = "warehouse") -> Any:
        body = {"region": region, "kind": kind}
        return await self.ok("PUT", f"/v1/locations/{location_id}", json=body)

    async def price(self, sku: str, region: str, amount: int, currency: str = "EUR") -> Any:
        body = {"currency": currency, "amount_minor": amount}
        return await self.ok("PUT", f"/v1/prices/{sku}/{region}", json=body)

    async def receive(self, sku: str, location: str, quantity: int) -> Any:
        return await self.ok(
            "POST",
            f"/v1/stock/{sku}/{location}/receipts",
            json={"quantity": quantity},
            as_=WAREHOUSE,
        )

    async def cart(self, lines: dict[str, int], region: str = "eu", customer: str = "c-1") -> str:
        cart = await self.ok(
            "POST", "/v1/carts", json={"customer_id": customer, "region": region}, as_=WEB
        )
        for sku, quantity in lines.items():
            await self.ok(
                "PUT", f"/v1/carts/{cart['id']}/lines/{sku}", json={"quantity": quantity}, as_=WEB
            )
        return str(cart["id"])

    async def checkout(self, cart_id: str, as_: Channel = WEB) -> httpx.Response:
        return await self.call("POST", "/v1/orders", json={"cart_id": cart_id}, as_=as_)

    async def status(self, order_id: str, status: str, as_: Channel = ADMIN) -> httpx.Response:
        return await self.call(
            "POST", f"/v1/orders/{order_id}/status", json={"status": status}, as_=as_
        )

    async def available(self, sku: str) -> int:
        stock = await self.ok("GET", f"/v1/stock/{sku}")
        return int(stock["available"])

    async def count(self, table: str) -> int:
        return int(await self.db.fetchval(f"SELECT count(*) FROM {table}"))

    async def world(self) -> None:
        """Two regions, three locations, two priced products with stock in eu."""
        await self.location("eu-dc1", "eu", "warehouse")
        await self.location("eu-store1", "eu", "store")
        await self.location("us-dc1", "us", "warehouse")
        for sku, amount in (("SKU-1", 1999), ("SKU-2", 500)):
            await self.product(sku, brand="Acme")
            await self.price(sku, "eu", amount)
        await self.receive("SKU-1", "eu-dc1", 10)
        await self.receive("SKU-1", "eu-store1", 5)
        await self.receive("SKU-2", "eu-dc1", 100)


@contextlib.asynccontextmanager
async def open_api(db: Database, database_dsn: str, **overrides: object) -> AsyncIterator[Api]:
    """The real application in-process over ASGI, with one API key per channel."""
    # Reconciliation is driven by the tests that exercise it, not by the background chore.
    values = {
        "db_url": database_dsn,
        "api_key_cache_seconds": 0,
        "reconcile_interval_seconds": 3600,
    }
    settings = load_settings({**values, **overrides}, environ={})
    app = create_app(settings, db=db)
    secrets_by_channel: dict[Channel, str] = {}
    async with db.transaction() as conn:
        for channel in Channel:
            _, secret = await create_key(conn, channel, label="test")
            secrets_by_channel[channel] = secret
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://retailsync.test") as client,
    ):
        yield Api(client, db, secrets_by_channel)
