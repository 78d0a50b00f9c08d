"""Bad input gets a clear problem document and writes nothing: one test per class of bad
input, on every endpoint it applies to."""

from __future__ import annotations

from typing import Any

import pytest

from retailsync.models import Channel
from tests.support import ADMIN, WAREHOUSE, WEB, Api

pytestmark = pytest.mark.surface

LONG = "x" * 201


async def _snapshot(api: Api) -> tuple[Any, ...]:
    """Everything a bad request could have changed."""
    return tuple(
        [
            await api.db.fetchval(f"SELECT count(*), sum(version) FROM {table}")
            for table in ("products", "prices", "stock", "locations", "carts", "orders")
        ]
        + [
            await api.db.fetchval("SELECT sum(on_hand) FROM stock"),
            await api.count("stock_movements"),
            await api.count("cart_lines"),
            await api.count("idempotency_keys"),
        ]
    )


def _cases() -> list[Any]:
    product = {"title": "T", "category": "toys"}
    cases: list[tuple[str, str, str, Any, int, str]] = [
        # (id, method, path, body, status, problem type)
        (
            "receipt-zero",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": 0},
            422,
            "validation-error",
        ),
        (
            "receipt-negative",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": -5},
            422,
            "validation-error",
        ),
        (
            "receipt-string",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": "5"},
            422,
            "validation-error",
        ),
        (
            "receipt-float",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": 5.0},
            422,
            "validation-error",
        ),
        (
            "receipt-bool",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": True},
            422,
            "validation-error",
        ),
        (
            "receipt-huge",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": 10**12},
            422,
            "validation-error",
        ),
        (
            "receipt-unknown-sku",
            "POST",
            "/v1/stock/NOPE/eu-dc1/receipts",
            {"quantity": 1},
            404,
            "not-found",
        ),
        (
            "receipt-unknown-location",
            "POST",
            "/v1/stock/SKU-1/nowhere/receipts",
            {"quantity": 1},
            404,
            "not-found",
        ),
        (
            "receipt-unknown-field",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {"quantity": 1, "note": "x"},
            422,
            "validation-error",
        ),
        (
            "receipt-missing-field",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            {},
            422,
            "validation-error",
        ),
        (
            "receipt-not-object",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            [1],
            422,
            "validation-error",
        ),
        (
            "adjust-zero",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            {"delta": 0, "reason": "x"},
            400,
            "invalid-parameter",
        ),
        (
            "adjust-no-reason",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            {"delta": 1, "reason": ""},
            422,
            "validation-error",
        ),
        (
            "adjust-long-reason",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            {"delta": 1, "reason": LONG},
            422,
            "validation-error",
        ),
        (
            "adjust-below-zero",
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            {"delta": -11, "reason": "x"},
            409,
            "insufficient-stock",
        ),
        (
            "product-long-title",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "title": LONG},
            422,
            "validation-error",
        ),
        (
            "product-empty-title",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "title": ""},
            422,
            "validation-error",
        ),
        (
            "product-bad-category",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "category": "Toys//x"},
            422,
            "validation-error",
        ),
        (
            "product-unknown-field",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "colour": "red"},
            422,
            "validation-error",
        ),
        (
            "product-attribute-object",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "attributes": {"a": {"b": 1}}},
            422,
            "validation-error",
        ),
        (
            "product-attribute-bool",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "attributes": {"a": True}},
            422,
            "validation-error",
        ),
        (
            "product-too-many-attributes",
            "PUT",
            "/v1/products/SKU-9",
            {**product, "attributes": {f"k{i}": i for i in range(65)}},
            422,
            "validation-error",
        ),
        ("product-bad-sku", "PUT", "/v1/products/bad%20sku", product, 422, "validation-error"),
        ("product-long-sku", "PUT", "/v1/products/" + "S" * 65, product, 422, "validation-error"),
        (
            "price-float",
            "PUT",
            "/v1/prices/SKU-1/eu",
            {"currency": "EUR", "amount_minor": 19.99},
            422,
            "validation-error",
        ),
        (
            "price-negative",
            "PUT",
            "/v1/prices/SKU-1/eu",
            {"currency": "EUR", "amount_minor": -1},
            422,
            "validation-error",
        ),
        (
            "price-bad-currency",
            "PUT",
            "/v1/prices/SKU-1/eu",
            {"currency": "euro", "amount_minor": 1},
            422,
            "validation-error",
        ),
        (
            "price-unknown-sku",
            "PUT",
            "/v1/prices/NOPE/eu",
            {"currency": "EUR", "amount_minor": 1},
            404,
            "not-found",
        ),
        (
            "price-bad-region",
            "PUT",
            "/v1/prices/SKU-1/EU!",
            {"currency": "EUR", "amount_minor": 1},
            422,
            "validation-error",
        ),
        (
            "location-bad-kind",
            "PUT",
            "/v1/locations/x-1",
            {"region": "eu", "kind": "depot"},
            422,
            "validation-error",
        ),
        (
            "location-bad-region",
            "PUT",
            "/v1/locations/x-1",
            {"region": "E U", "kind": "store"},
            422,
            "validation-error",
        ),
        (
            "cart-long-customer",
            "POST",
            "/v1/carts",
            {"customer_id": "c" * 65, "region": "eu"},
            422,
            "validation-error",
        ),
        (
            "cart-unknown-region",
            "POST",
            "/v1/carts",
            {"customer_id": "c", "region": "mars"},
            404,
            "not-found",
        ),
        (
            "order-bad-cart-id",
            "POST",
            "/v1/orders",
            {"cart_id": "not-a-uuid"},
            422,
            "validation-error",
        ),
        (
            "order-unknown-cart",
            "POST",
            "/v1/orders",
            {"cart_id": "00000000-0000-0000-0000-000000000000"},
            404,
            "not-found",
        ),
        (
            "status-unknown",
            "POST",
            "/v1/orders/00000000-0000-0000-0000-000000000000/status",
            {"status": "lost"},
            422,
            "validation-error",
        ),
        (
            "status-placed",
            "POST",
            "/v1/orders/00000000-0000-0000-0000-000000000000/status",
            {"status": "placed"},
            422,
            "validation-error",
        ),
        (
            "status-unknown-order",
            "POST",
            "/v1/orders/00000000-0000-0000-0000-000000000000/status",
            {"status": "paid"},
            404,
            "not-found",
        ),
    ]
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


class TestBadBodies:
    """Wrong types, out-of-range numbers, unknown fields and entities: refused, no write."""

    @pytest.mark.parametrize(("method", "path", "body", "status", "problem"), _cases())
    async def test_refused_without_writing(
        self, api: Api, method: str, path: str, body: Any, status: int, problem: str
    ) -> None:
        await api.world()
        before = await _snapshot(api)
        response = await api.call(method, path, json=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        document = response.json()
        assert document["type"] == f"urn:retailsync:problem:{problem}"
        assert document["status"] == status
        assert document["detail"]
        assert "Traceback" not in response.text
        assert await _snapshot(api) == before

    async def test_cart_line_quantities(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 1})
        before = await _snapshot(api)
        for quantity in (0, -1, 1000, "2", 1.5, None):
            response = await api.call(
                "PUT", f"/v1/carts/{cart_id}/lines/SKU-1", json={"quantity": quantity}, as_=WEB
            )
            assert response.status_code == 422, quantity
        unknown = await api.call(
            "PUT", f"/v1/carts/{cart_id}/lines/NOPE", json={"quantity": 1}, as_=WEB
        )
        assert unknown.status_code == 404
        assert await _snapshot(api) == before


class TestBadRequests:
    """Malformed JSON, wrong media types, oversized bodies, bad headers and parameters."""

    @pytest.mark.parametrize(
        "raw", [b'{"quantity": 1', b"quantity=1", b'{"quantity": NaN}', b"\xff\xfe"]
    )
    async def test_malformed_json_is_400(self, api: Api, raw: bytes) -> None:
        await api.world()
        before = await _snapshot(api)
        response = await api.call(
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            content=raw,
            headers={"Content-Type": "application/json"},
            as_=WAREHOUSE,
        )
        assert response.status_code in (400, 422)
        assert response.json()["type"] in (
            "urn:retailsync:problem:malformed-json",
            "urn:retailsync:problem:validation-error",
        )
        assert await _snapshot(api) == before

    async def test_truncated_json_is_400(self, api: Api) -> None:
        response = await api.call(
            "PUT",
            "/v1/products/SKU-9",
            content=b'{"title": "x", ',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["type"] == "urn:retailsync:problem:malformed-json"

    async def test_non_json_media_type_is_415(self, api: Api) -> None:
        await api.world()
        response = await api.call(
            "POST",
            "/v1/stock/SKU-1/eu-dc1/receipts",
            content=b"quantity=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 415

    async def test_oversized_body_is_413(self, api: Api) -> None:
        await api.world()
        before = await _snapshot(api)
        body = {"title": "T", "category": "toys", "attributes": {"a": "x" * 70_000}}
        response = await api.call("PUT", "/v1/products/SKU-9", json=body)
        assert response.status_code == 413
        assert response.json()["type"] == "urn:retailsync:problem:payload-too-large"
        assert await _snapshot(api) == before

    async def test_streamed_oversized_body_is_413(self, api: Api) -> None:
        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b" " * 1024

        response = await api.client.put(
            "/v1/products/SKU-9",
            content=chunks(),
            headers={**api.auth(ADMIN), "Content-Type": "application/json"},
        )
        assert response.status_code == 413

    @pytest.mark.parametrize("tag", ["7", '"abc"', '"1", "2"', "*"])
    async def test_malformed_if_match_is_400(self, api: Api, tag: str) -> None:
        await api.world()
        response = await api.call(
            "PUT",
            "/v1/products/SKU-1",
            json={"title": "T", "category": "toys"},
            headers={"If-Match": tag},
        )
        assert response.status_code == 400
        assert (await api.ok("GET", "/v1/products/SKU-1"))["title"] != "T"

    @pytest.mark.parametrize("key", [b"", b"x" * 256, "caf\u00e9".encode("latin-1"), b"a\x01b"])
    async def test_malformed_idempotency_key_is_400(self, api: Api, key: bytes) -> None:
        await api.world()
        before = await _snapshot(api)
        response = await api.client.post(
            "/v1/stock/SKU-1/eu-dc1/receipts",
            json={"quantity": 1},
            headers={**api.auth(WAREHOUSE), "Idempotency-Key": key},  # type: ignore[dict-item]
        )
        assert response.status_code == 400
        assert await _snapshot(api) == before

    @pytest.mark.parametrize(
        "query", ["limit=0", "limit=201", "limit=abc", "category=Bad Cat", "cursor=%%%"]
    )
    async def test_bad_list_parameters(self, api: Api, query: str) -> None:
        response = await api.call("GET", f"/v1/products?{query}", as_=Channel.WEB)
        assert response.status_code in (400, 422)
        assert response.headers["content-type"] == "application/problem+json"

    async def test_unknown_route_and_method(self, api: Api) -> None:
        assert (await api.call("GET", "/v1/nothing")).status_code == 404
        wrong = await api.call("DELETE", "/v1/products/SKU-1")
        assert wrong.status_code == 405
        assert wrong.headers["content-type"] == "application/problem+json"
