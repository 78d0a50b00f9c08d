"""API keys and channel scopes: 401 without a valid key, 403 without the scope, and nothing
written either way."""

from __future__ import annotations

from typing import Any

import pytest

from retailsync.models import Channel
from retailsync.services.keys import list_keys, revoke_key
from tests.support import ADMIN, MOBILE, POS, WAREHOUSE, WEB, Api

pytestmark = pytest.mark.surface

RECEIPT = ("POST", "/v1/stock/SKU-1/eu-dc1/receipts", {"quantity": 1})
ADJUST = ("POST", "/v1/stock/SKU-1/eu-dc1/adjustments", {"delta": 1, "reason": "x"})
PRODUCT = ("PUT", "/v1/products/SKU-9", {"title": "t", "category": "toys"})
PRICE = ("PUT", "/v1/prices/SKU-1/eu", {"currency": "EUR", "amount_minor": 1})
LOCATION = ("PUT", "/v1/locations/x-1", {"region": "eu", "kind": "store"})
CART = ("POST", "/v1/carts", {"customer_id": "c", "region": "eu"})

# (channel, request) pairs that must be refused with 403.
FORBIDDEN = [
    (channel, request)
    for channel in (WEB, MOBILE, POS)
    for request in (RECEIPT, ADJUST, PRODUCT, PRICE, LOCATION)
] + [(WAREHOUSE, request) for request in (PRODUCT, PRICE, LOCATION, CART)]


async def _state(api: Api) -> tuple[Any, ...]:
    return (
        await api.count("stock_movements"),
        await api.count("products"),
        await api.count("prices"),
        await api.count("locations"),
        await api.count("carts"),
        await api.db.fetchval("SELECT sum(amount_minor) FROM prices"),
    )


class TestAuthentication:
    """Requests without a valid key are refused before anything happens."""

    @pytest.mark.parametrize("request_", [RECEIPT, ADJUST, PRODUCT, PRICE, LOCATION, CART])
    @pytest.mark.parametrize(
        "authorization", [None, "Bearer", "Bearer rs_not-a-key", "Basic YTpi", "rs_raw"]
    )
    async def test_missing_or_wrong_key_is_401(
        self, api: Api, request_: tuple[str, str, Any], authorization: str | None
    ) -> None:
        await api.world()
        before = await _state(api)
        method, path, body = request_
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert await _state(api) == before

    async def test_reads_need_a_key_too(self, api: Api) -> None:
        await api.world()
        assert (await api.client.get("/v1/products/SKU-1")).status_code == 401
        assert (await api.client.get("/v1/stock/SKU-1")).status_code == 401

    async def test_revoked_key_is_refused(self, api: Api) -> None:
        await api.world()
        async with api.db.transaction() as conn:
            web_key = next(k for k in await list_keys(conn) if k.channel == Channel.WEB)
            await revoke_key(conn, web_key.id)
        response = await api.call("GET", "/v1/products/SKU-1", as_=WEB)
        assert response.status_code == 401

    async def test_keys_are_stored_hashed(self, api: Api) -> None:
        stored = await api.db.fetch("SELECT key_hash FROM api_keys")
        secrets = [secret.encode() for secret in api.keys.values()]
        assert all(secret not in bytes(row["key_hash"]) for row in stored for secret in secrets)


class TestScopes:
    """Each channel may do only what its scopes allow."""

    @pytest.mark.parametrize(("channel", "request_"), FORBIDDEN)
    async def test_out_of_scope_is_403_and_writes_nothing(
        self, api: Api, channel: Channel, request_: tuple[str, str, Any]
    ) -> None:
        await api.world()
        before = await _state(api)
        method, path, body = request_
        response = await api.call(method, path, json=body, as_=channel)
        assert response.status_code == 403
        assert response.json()["type"] == "urn:retailsync:problem:forbidden"
        assert await _state(api) == before

    @pytest.mark.parametrize("channel", [WAREHOUSE, ADMIN])
    async def test_warehouse_and_admin_receive_stock(self, api: Api, channel: Channel) -> None:
        await api.world()
        method, path, body = RECEIPT
        assert (await api.call(method, path, json=body, as_=channel)).status_code == 200

    @pytest.mark.parametrize("channel", [WEB, MOBILE, POS])
    async def test_selling_channels_sell(self, api: Api, channel: Channel) -> None:
        await api.world()
        cart = await api.ok(
            "POST", "/v1/carts", json={"customer_id": "c", "region": "eu"}, as_=channel
        )
        await api.ok(
            "PUT", f"/v1/carts/{cart['id']}/lines/SKU-2", json={"quantity": 1}, as_=channel
        )
        assert (await api.checkout(cart["id"], as_=channel)).status_code == 201

    @pytest.mark.parametrize(
        ("channel", "status"), [(WEB, "shipped"), (MOBILE, "delivered"), (WAREHOUSE, "paid")]
    )
    async def test_status_changes_need_their_scope(
        self, api: Api, channel: Channel, status: str
    ) -> None:
        await api.world()
        order = (await api.checkout(await api.cart({"SKU-2": 1}))).json()
        if status == "delivered":
            await api.status(order["id"], "paid")
            await api.status(order["id"], "shipped")
        response = await api.status(order["id"], status, as_=channel)
        assert response.status_code == 403
