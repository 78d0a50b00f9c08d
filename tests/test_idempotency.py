"""Idempotency-Key on every POST: a retry returns the first answer and never applies twice."""

from __future__ import annotations

import asyncio

from tests.support import ADMIN, WAREHOUSE, WEB, Api


def _receipt(api: Api, key: str, quantity: int = 3, as_=WAREHOUSE):  # type: ignore[no-untyped-def]
    return api.call(
        "POST",
        "/v1/stock/SKU-1/eu-dc1/receipts",
        json={"quantity": quantity},
        headers={"Idempotency-Key": key},
        as_=as_,
    )


class TestRetries:
    """Same key, same request: the first answer again, the effect once."""

    async def test_retried_receipt_counts_once(self, api: Api) -> None:
        await api.world()
        first = await _receipt(api, "r-1")
        retry = await _receipt(api, "r-1")
        assert first.status_code == retry.status_code == 200
        assert retry.content == first.content
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["etag"] == first.headers["etag"]
        assert await api.available("SKU-1") == 18
        assert await api.count("stock_movements") == 4

    async def test_retried_checkout_places_one_order(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 2})
        answers = [
            await api.call(
                "POST",
                "/v1/orders",
                json={"cart_id": cart_id},
                headers={"Idempotency-Key": "checkout-1"},
                as_=WEB,
            )
            for _ in range(3)
        ]
        assert {a.status_code for a in answers} == {201}
        assert len({a.json()["id"] for a in answers}) == 1
        assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
        assert {a.headers["etag"] for a in answers} == {answers[0].headers["etag"]}
        assert await api.count("orders") == 1
        assert await api.available("SKU-1") == 13

    async def test_concurrent_duplicates_apply_once(self, api: Api) -> None:
        await api.world()
        answers = await asyncio.gather(*[_receipt(api, "burst") for _ in range(20)])
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        assert await api.available("SKU-1") == 18

    async def test_same_key_different_body_is_422(self, api: Api) -> None:
        await api.world()
        await _receipt(api, "r-1", quantity=3)
        reused = await _receipt(api, "r-1", quantity=4)
        assert reused.status_code == 422
        assert reused.json()["type"] == "urn:retailsync:problem:idempotency-key-reused"
        assert await api.available("SKU-1") == 18

    async def test_keys_belong_to_their_api_key(self, api: Api) -> None:
        await api.world()
        await _receipt(api, "shared", as_=WAREHOUSE)
        other = await _receipt(api, "shared", as_=ADMIN)
        assert other.headers.get("idempotent-replayed") is None
        assert await api.available("SKU-1") == 21

    async def test_failed_request_is_not_remembered(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 20})
        headers = {"Idempotency-Key": "try-again"}
        short = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id}, headers=headers, as_=WEB
        )
        assert short.status_code == 409
        await api.receive("SKU-1", "eu-dc1", 10)
        retry = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id}, headers=headers, as_=WEB
        )
        assert retry.status_code == 201

    async def test_expired_answers_are_forgotten(self, api: Api) -> None:
        from retailsync.services.idempotency import forget_expired

        await api.world()
        await _receipt(api, "old")
        await api.db.fetchval("UPDATE idempotency_keys SET created_at = now() - interval '2 days'")
        async with api.db.connection() as conn:
            assert await forget_expired(conn, 86400) == 1
        assert await api.count("idempotency_keys") == 0
