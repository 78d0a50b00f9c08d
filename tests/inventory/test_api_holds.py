"""Creating holds over HTTP, and bad input, which writes nothing (see api_support.snapshot)."""

import asyncio
import time
import uuid
from typing import Any

from tests.inventory.api_support import (
    PROBLEM,
    assert_consistent,
    assert_problem,
    commit,
    get_hold,
    hold_body,
    new_hold,
    parse_time,
    post_hold,
    reserved,
    snapshot,
)
from tests.support import ADMIN, MOBILE, WAREHOUSE, WEB, Api

# --- creating a hold -------------------------------------------------------------------------


class TestCreate:
    async def test_hold_is_201_and_reserves(self, api: Api) -> None:
        await api.world()
        response = await post_hold(api, ("SKU-1", "eu-dc1", 3), ("SKU-2", "eu-dc1", 2))
        assert response.status_code == 201, response.text
        hold = response.json()
        uuid.UUID(hold["id"])
        assert hold["state"] == "held"
        assert hold["order_id"] is None
        assert hold["replayed"] is False
        assert hold["customer_id"] is None
        assert hold["strategy"] == "batched"  # auto on a quiet sku: group commit
        assert sorted((x["sku"], x["location"], x["quantity"]) for x in hold["lines"]) == [
            ("SKU-1", "eu-dc1", 3),
            ("SKU-2", "eu-dc1", 2),
        ]
        assert response.headers["location"] == f"/v1/reservations/{hold['id']}"
        assert "idempotent-replayed" not in response.headers
        # The default TTL is 15 minutes.
        remaining = parse_time(hold["expires_at"]).timestamp() - time.time()
        assert 14 * 60 < remaining <= 15 * 60 + 5
        assert await reserved(api, "SKU-1") == {"eu-dc1": 3, "eu-store1": 0}
        assert await reserved(api, "SKU-2") == {"eu-dc1": 2}
        assert await api.available("SKU-1") == 12
        assert await get_hold(api, hold["id"]) == hold
        # The TTL's bounds are accepted, and set expires_at.
        for ttl_ms in (100, 86_400_000):
            edge = await new_hold(api, ("SKU-2", "eu-dc1", 1), ttl_ms=ttl_ms)
            ttl = parse_time(edge["expires_at"]).timestamp() - time.time()
            assert -1 < ttl <= ttl_ms / 1000 + 1
            assert ttl > ttl_ms / 1000 - 60
        await assert_consistent(api)

    async def test_retry_with_the_same_key_replays_the_hold(self, api: Api) -> None:
        await api.world()
        key = str(uuid.uuid4())
        body = hold_body(("SKU-1", "eu-dc1", 2), ttl_ms=60_000, customer_id="c1")
        headers = {"Idempotency-Key": key}
        first = await api.call("POST", "/v1/reservations", json=body, headers=headers, as_=WEB)
        assert first.status_code == 201, first.text
        again = await api.call("POST", "/v1/reservations", json=body, headers=headers, as_=WEB)
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["replayed"] is True
        assert again.headers["location"] == first.headers["location"]
        assert await reserved(api, "SKU-1") == {"eu-dc1": 2, "eu-store1": 0}
        assert await api.count("holds") == 1
        # The same key under another API key (another channel) is another hold.
        other = await api.call("POST", "/v1/reservations", json=body, headers=headers, as_=MOBILE)
        assert other.status_code == 201, other.text
        assert other.json()["id"] != first.json()["id"]
        assert await reserved(api, "SKU-1") == {"eu-dc1": 4, "eu-store1": 0}

    async def test_same_key_other_body_is_409(self, api: Api) -> None:
        await api.world()
        key = str(uuid.uuid4())
        first = await post_hold(api, ("SKU-1", "eu-dc1", 2), key=key)
        assert first.status_code == 201
        before = await snapshot(api)
        for changed in (
            hold_body(("SKU-1", "eu-dc1", 3)),
            hold_body(("SKU-1", "eu-store1", 2)),
            hold_body(("SKU-1", "eu-dc1", 2), ttl_ms=1000),
            hold_body(("SKU-1", "eu-dc1", 2), customer_id="c9"),
            hold_body(("SKU-1", "eu-dc1", 2), commit=True),
        ):
            response = await api.call(
                "POST",
                "/v1/reservations",
                json=changed,
                headers={"Idempotency-Key": key},
                as_=WEB,  # the key's scope is the API key: the same one as the first
            )
            assert_problem(response, 409, "idempotency-key-reused")
            assert await snapshot(api) == before, changed

    async def test_missing_or_bad_idempotency_key_is_400(self, api: Api) -> None:
        await api.world()
        before = await snapshot(api)
        body = hold_body(("SKU-1", "eu-dc1", 1))
        missing = await api.call("POST", "/v1/reservations", json=body, as_=WEB)
        assert assert_problem(missing, 400, "invalid-parameter")["field"] == "Idempotency-Key"
        for bad in (b"x" * 300, "caf\u00e9".encode("latin-1"), b"", b"tab\tkey"):
            response = await api.client.post(
                "/v1/reservations", json=body, headers={**api.auth(WEB), "Idempotency-Key": bad}
            )
            assert_problem(response, 400, "invalid-idempotency-key")
        assert await snapshot(api) == before

    async def test_multi_line_hold_is_all_or_nothing(self, api: Api) -> None:
        await api.world()
        before = await snapshot(api)
        response = await post_hold(api, ("SKU-2", "eu-dc1", 5), ("SKU-1", "eu-store1", 6))
        problem = assert_problem(response, 409, "insufficient-stock")
        assert problem["shortages"] == [
            {"sku": "SKU-1", "location": "eu-store1", "requested": 6, "available": 5}
        ]
        assert await snapshot(api) == before
        assert await reserved(api, "SKU-2") == {"eu-dc1": 0}
        # Exactly what is there can be held.
        ok = await post_hold(api, ("SKU-2", "eu-dc1", 5), ("SKU-1", "eu-store1", 5))
        assert ok.status_code == 201, ok.text
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 5}
        short = await post_hold(api, ("SKU-1", "eu-store1", 1))
        assert assert_problem(short, 409, "insufficient-stock")["shortages"] == [
            {"sku": "SKU-1", "location": "eu-store1", "requested": 1, "available": 0}
        ]

    async def test_holds_never_oversell(self, api: Api) -> None:
        await api.world()
        responses = await asyncio.gather(
            *(post_hold(api, ("SKU-1", "eu-store1", 1)) for _ in range(12))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 5 + [409] * 7
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 5}
        await assert_consistent(api)


# --- bad input writes nothing ----------------------------------------------------------------

_LINE = {"sku": "SKU-1", "location": "eu-dc1", "quantity": 1}
BAD_HOLDS: list[tuple[str, Any, int, str]] = [
    # (id, body, status, problem type)
    ("quantity-zero", {"lines": [{**_LINE, "quantity": 0}]}, 422, "validation-error"),
    ("quantity-negative", {"lines": [{**_LINE, "quantity": -1}]}, 422, "validation-error"),
    ("quantity-string", {"lines": [{**_LINE, "quantity": "5"}]}, 422, "validation-error"),
    ("quantity-float", {"lines": [{**_LINE, "quantity": 5.0}]}, 422, "validation-error"),
    ("quantity-bool", {"lines": [{**_LINE, "quantity": True}]}, 422, "validation-error"),
    ("quantity-null", {"lines": [{**_LINE, "quantity": None}]}, 422, "validation-error"),
    ("quantity-huge", {"lines": [{**_LINE, "quantity": 1_000_001}]}, 422, "validation-error"),
    (
        "quantity-missing",
        {"lines": [{"sku": "SKU-1", "location": "eu-dc1"}]},
        422,
        "validation-error",
    ),
    ("unknown-sku", {"lines": [{**_LINE, "sku": "NOPE"}]}, 404, "not-found"),
    ("unknown-location", {"lines": [{**_LINE, "location": "nowhere"}]}, 404, "not-found"),
    (
        "no-stock-row",
        {"lines": [{**_LINE, "sku": "SKU-2", "location": "eu-store1"}]},
        404,
        "not-found",
    ),
    (
        "unknown-second-line",
        {"lines": [_LINE, {**_LINE, "sku": "SKU-2", "location": "us-dc1"}]},
        404,
        "not-found",
    ),
    ("bad-sku", {"lines": [{**_LINE, "sku": "bad sku"}]}, 422, "validation-error"),
    ("sku-number", {"lines": [{**_LINE, "sku": 5}]}, 422, "validation-error"),
    ("ttl-below-min", {"lines": [_LINE], "ttl_ms": 99}, 422, "validation-error"),
    ("ttl-zero", {"lines": [_LINE], "ttl_ms": 0}, 422, "validation-error"),
    ("ttl-above-max", {"lines": [_LINE], "ttl_ms": 86_400_001}, 422, "validation-error"),
    ("ttl-string", {"lines": [_LINE], "ttl_ms": "1000"}, 422, "validation-error"),
    ("ttl-float", {"lines": [_LINE], "ttl_ms": 1000.0}, 422, "validation-error"),
    # Duplicates pass the schema and are refused by HoldRequest.create (RequestInvalid): 400.
    ("duplicate-line", {"lines": [_LINE, {**_LINE, "quantity": 2}]}, 400, "invalid-parameter"),
    ("empty-lines", {"lines": []}, 422, "validation-error"),
    ("no-lines", {}, 422, "validation-error"),
    ("lines-not-list", {"lines": _LINE}, 422, "validation-error"),
    (
        "too-many-lines",
        {"lines": [{**_LINE, "sku": f"S{i}"} for i in range(101)]},
        422,
        "validation-error",
    ),
    ("unknown-field", {"lines": [_LINE], "note": "x"}, 422, "validation-error"),
    ("unknown-line-field", {"lines": [{**_LINE, "price": 1}]}, 422, "validation-error"),
    ("bad-customer", {"lines": [_LINE], "customer_id": "no spaces"}, 422, "validation-error"),
    ("customer-number", {"lines": [_LINE], "customer_id": 7}, 422, "validation-error"),
    ("commit-string", {"lines": [_LINE], "commit": "yes"}, 422, "validation-error"),
    (
        "bad-currency",
        {"lines": [_LINE], "commit": True, "currency": "euro"},
        422,
        "validation-error",
    ),
    ("not-an-object", [_LINE], 422, "validation-error"),
]


class TestBadInput:
    async def test_bad_hold_bodies_write_nothing(self, api: Api) -> None:
        await api.world()
        await new_hold(api, ("SKU-1", "eu-dc1", 1))  # something to leave untouched
        before = await snapshot(api)
        for case, body, status, slug in BAD_HOLDS:
            response = await api.call(
                "POST",
                "/v1/reservations",
                json=body,
                headers={"Idempotency-Key": f"bad-{case}"},
                as_=WEB,
            )
            assert response.status_code == status, (case, response.text)
            assert response.json()["type"] == PROBLEM + slug, (case, response.text)
            assert await snapshot(api) == before, case

    async def test_bad_encodings_and_keys_write_nothing(self, api: Api) -> None:
        await api.world()
        before = await snapshot(api)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        json_type = {**key, "Content-Type": "application/json"}
        good = b'{"lines": [{"sku": "SKU-1", "location": "eu-dc1", "quantity": 1}]}'

        malformed = await api.call(
            "POST", "/v1/reservations", content=b'{"lines": [', headers=json_type
        )
        assert_problem(malformed, 400, "malformed-json")
        text = await api.call(
            "POST", "/v1/reservations", content=good, headers={**key, "Content-Type": "text/plain"}
        )
        assert_problem(text, 415, "unsupported-media-type")
        no_type = await api.call("POST", "/v1/reservations", content=good, headers=key)
        assert_problem(no_type, 415, "unsupported-media-type")

        unauthenticated = await api.client.post("/v1/reservations", content=good, headers=json_type)
        assert_problem(unauthenticated, 401, "unauthorized")
        assert unauthenticated.headers["www-authenticate"] == "Bearer"
        bad_key = await api.client.post(
            "/v1/reservations", content=good, headers={**json_type, "Authorization": "Bearer nope"}
        )
        assert_problem(bad_key, 401, "unauthorized")
        warehouse = await api.call(
            "POST", "/v1/reservations", content=good, headers=json_type, as_=WAREHOUSE
        )
        problem = assert_problem(warehouse, 403, "forbidden")
        assert problem["required_scope"] == "sell"
        assert await snapshot(api) == before

    async def test_bad_hold_ids(self, api: Api) -> None:
        await api.world()
        hold = await new_hold(api, ("SKU-1", "eu-dc1", 1))
        before = await snapshot(api)
        unknown = str(uuid.uuid4())
        for method, suffix in (("GET", ""), ("POST", "/commit"), ("POST", "/release")):
            missing = await api.call(method, f"/v1/reservations/{unknown}{suffix}", as_=WEB)
            assert_problem(missing, 404, "not-found")
            malformed = await api.call(
                method,
                f"/v1/reservations/not-a-uuid{suffix}",
                as_=WEB,
                headers={"Content-Type": "application/json"},
            )
            assert_problem(malformed, 422, "validation-error")
            warehouse = await api.call(
                method, f"/v1/reservations/{hold['id']}{suffix}", as_=WAREHOUSE
            )
            assert_problem(warehouse, 403, "forbidden")
            anonymous = await api.client.request(method, f"/v1/reservations/{hold['id']}{suffix}")
            assert_problem(anonymous, 401, "unauthorized")
        bad_commit = await commit(api, hold["id"], json={"currency": "euro"})
        assert_problem(bad_commit, 422, "validation-error")
        extra = await commit(api, hold["id"], json={"currency": "EUR", "x": 1})
        assert_problem(extra, 422, "validation-error")
        assert await snapshot(api) == before
        assert (await get_hold(api, hold["id"]))["state"] == "held"

    async def test_malformed_hold_id_without_a_body_is_422(self, api: Api) -> None:
        for action in ("commit", "release"):
            response = await api.call("POST", f"/v1/reservations/not-a-uuid/{action}", as_=WEB)
            assert_problem(response, 422, "validation-error")


async def test_a_hold_is_seen_and_acted_on_by_its_own_key_only(api: Api) -> None:
    await api.world()
    holds = await asyncio.gather(*[new_hold(api, ("SKU-2", "eu-dc1", 1)) for _ in range(8)])
    ids = [uuid.UUID(hold["id"]) for hold in holds]
    # Random ids, even within one group-commit batch: none can be guessed from another.
    assert len({hold_id.int & 0xFFFFFFFF for hold_id in ids}) == len(ids)
    assert len({hold_id.int >> 32 for hold_id in ids}) == len(ids)
    hold_id = holds[0]["id"]
    for method, path in (
        ("GET", f"/v1/reservations/{hold_id}"),
        ("POST", f"/v1/reservations/{hold_id}/commit"),
        ("POST", f"/v1/reservations/{hold_id}/release"),
    ):
        other = await api.call(method, path, as_=MOBILE)  # another channel's key
        assert other.status_code == 404, other.text
    assert (await api.call("GET", f"/v1/reservations/{hold_id}", as_=ADMIN)).status_code == 200
    assert (await get_hold(api, hold_id))["state"] == "held"  # untouched
    cart_id = await api.cart({"SKU-2": 1}, customer="c-9")
    borrowed = await api.call(
        "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": hold_id}, as_=MOBILE
    )
    assert borrowed.status_code == 404
