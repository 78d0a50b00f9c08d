"""Reservation policies over HTTP: purchase limits, each strategy, the OpenAPI document."""

import pytest

from tests.inventory.api_support import (
    assert_consistent,
    assert_problem,
    commit,
    eventually,
    get_hold,
    new_hold,
    post_hold,
    release,
    reserved,
    set_policy,
    snapshot,
    stocked_sku,
)
from tests.support import ADMIN, POS, WAREHOUSE, WEB, Api

# --- purchase limits and policies ------------------------------------------------------------


class TestPolicies:
    async def test_default_policy_and_put_get(self, api: Api) -> None:
        await api.world()
        default = await api.ok("GET", "/v1/reservation-policies/SKU-1", as_=WEB)
        assert default == {
            "sku": "SKU-1",
            "strategy": "auto",
            "per_customer_limit": None,
            "low_stock_threshold": None,
            "version": 0,
            "updated_at": None,
        }
        response = await api.call(
            "PUT",
            "/v1/reservation-policies/SKU-1",
            json={"strategy": "auto", "per_customer_limit": 2},
            as_=ADMIN,
        )
        assert response.status_code == 200, response.text
        stored = response.json()
        assert (stored["sku"], stored["strategy"], stored["per_customer_limit"]) == (
            "SKU-1",
            "auto",
            2,
        )
        assert stored["low_stock_threshold"] is None
        assert stored["version"] == 1
        assert stored["updated_at"] is not None
        assert response.headers["etag"] == '"1"'
        got = await api.call("GET", "/v1/reservation-policies/SKU-1", as_=WEB)
        assert got.json() == stored
        assert got.headers["etag"] == '"1"'
        replaced = await set_policy(api, "SKU-1", strategy="pessimistic", low_stock_threshold=5)
        assert (replaced["strategy"], replaced["per_customer_limit"], replaced["version"]) == (
            "pessimistic",
            None,
            2,
        )

    async def test_bad_policy_writes_nothing(self, api: Api) -> None:
        await api.world()
        await set_policy(api, "SKU-2", per_customer_limit=3)
        before = await snapshot(api)
        for body in (
            {"strategy": "fastest"},
            {"strategy": 1},
            {"per_customer_limit": 0},
            {"per_customer_limit": -1},
            {"per_customer_limit": "2"},
            {"per_customer_limit": 2.0},
            {"per_customer_limit": 1_000_001},
            {"low_stock_threshold": -1},
            {"unknown": 1},
            [],
        ):
            for sku in ("SKU-1", "SKU-2"):
                response = await api.call(
                    "PUT", f"/v1/reservation-policies/{sku}", json=body, as_=ADMIN
                )
                assert_problem(response, 422, "validation-error")
        good = {"per_customer_limit": 1}
        unknown = await api.call("PUT", "/v1/reservation-policies/NOPE", json=good, as_=ADMIN)
        assert_problem(unknown, 404, "not-found")
        for channel in (WEB, POS, WAREHOUSE):
            refused = await api.call(
                "PUT", "/v1/reservation-policies/SKU-1", json=good, as_=channel
            )
            assert_problem(refused, 403, "forbidden")
        anonymous = await api.client.put("/v1/reservation-policies/SKU-1", json=good)
        assert_problem(anonymous, 401, "unauthorized")
        bad_sku = await api.call("PUT", "/v1/reservation-policies/bad%20sku", json=good)
        assert_problem(bad_sku, 422, "validation-error")
        assert_problem(await api.call("GET", "/v1/reservation-policies/NOPE"), 404, "not-found")
        assert await snapshot(api) == before
        # The engine was not told either: SKU-1 has no limit, SKU-2 still 3.
        await new_hold(api, ("SKU-1", "eu-dc1", 5))
        assert (await api.ok("GET", "/v1/reservation-policies/SKU-2"))["per_customer_limit"] == 3

    async def test_purchase_limit(self, api: Api) -> None:
        await api.world()
        await set_policy(api, "SKU-2", strategy="auto", per_customer_limit=2)
        before = await snapshot(api)
        anonymous = await post_hold(api, ("SKU-2", "eu-dc1", 1))
        assert_problem(anonymous, 409, "refused", "customer-required")
        over = await post_hold(api, ("SKU-2", "eu-dc1", 3), customer_id="c1")
        assert_problem(over, 409, "refused", "purchase-limit")
        assert await snapshot(api) == before

        first = await new_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1")
        await new_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1")
        before = await snapshot(api)
        third = await post_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1")
        assert_problem(third, 409, "refused", "purchase-limit")
        # A line of an unlimited sku in the same hold does not get through either.
        mixed = await post_hold(
            api, ("SKU-1", "eu-dc1", 1), ("SKU-2", "eu-dc1", 1), customer_id="c1"
        )
        assert_problem(mixed, 409, "refused", "purchase-limit")
        assert await snapshot(api) == before
        # Another customer has an allowance of their own.
        await new_hold(api, ("SKU-2", "eu-dc1", 2), customer_id="c2")

        assert (await release(api, first["id"])).status_code == 200
        again = await new_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1")
        assert again["state"] == "held"
        assert_problem(
            await post_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1"),
            409,
            "refused",
            "purchase-limit",
        )
        await assert_consistent(api)

    async def test_expiry_and_cancel_give_the_allowance_back(self, api: Api) -> None:
        await api.world()
        await set_policy(api, "SKU-2", per_customer_limit=2)
        short = await new_hold(api, ("SKU-2", "eu-dc1", 2), customer_id="c1", ttl_ms=100)

        async def expired() -> bool:
            return (await get_hold(api, short["id"]))["state"] == "expired"

        await eventually(expired)
        sold = await new_hold(api, ("SKU-2", "eu-dc1", 2), customer_id="c1")
        order_id = (await commit(api, sold["id"])).json()["order_id"]
        assert_problem(
            await post_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1"),
            409,
            "refused",
            "purchase-limit",
        )
        assert (await api.status(order_id, "cancelled", as_=WEB)).status_code == 200
        await new_hold(api, ("SKU-2", "eu-dc1", 2), customer_id="c1")
        await assert_consistent(api)

    async def test_checkout_respects_the_limit(self, api: Api) -> None:
        await api.world()
        await set_policy(api, "SKU-2", per_customer_limit=2)
        cart_id = await api.cart({"SKU-2": 3}, customer="c1")
        before = await snapshot(api)
        response = await api.checkout(cart_id)
        assert_problem(response, 409, "refused", "purchase-limit")
        assert await snapshot(api) == before
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "open"
        # Two units are fine, and count: the customer cannot hold a third.
        ok = await api.checkout(await api.cart({"SKU-2": 2}, customer="c1"))
        assert ok.status_code == 201, ok.text
        assert_problem(
            await post_hold(api, ("SKU-2", "eu-dc1", 1), customer_id="c1"),
            409,
            "refused",
            "purchase-limit",
        )

    async def test_hold_of_another_customer_cannot_bypass_the_limit(self, api: Api) -> None:
        await api.world()
        await set_policy(api, "SKU-2", per_customer_limit=2)
        first = await api.checkout(await api.cart({"SKU-2": 2}, customer="c1"))
        assert first.status_code == 201, first.text  # c1 bought the 2 they may
        c2_hold = await new_hold(api, ("SKU-2", "eu-dc1", 2), customer_id="c2")
        cart_id = await api.cart({"SKU-2": 2}, customer="c1")
        response = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": c2_hold["id"]}, as_=WEB
        )
        assert response.status_code == 409, response.text
        assert response.json()["reason"] == "hold-mismatch"
        assert (await get_hold(api, c2_hold["id"]))["state"] == "held"  # still c2's


# --- strategies ------------------------------------------------------------------------------

STRATEGIES = ["pessimistic", "optimistic", "atomic", "batched", "escrow"]


class TestStrategies:
    @pytest.mark.parametrize("strategy", STRATEGIES)
    async def test_each_strategy_through_the_api(self, api: Api, strategy: str) -> None:
        await api.world()
        await stocked_sku(api, "SKU-S", units=100)  # well above the low-stock threshold (20)
        stored = await set_policy(api, "SKU-S", strategy=strategy, per_customer_limit=5)
        assert stored["strategy"] == strategy
        hold = await new_hold(api, ("SKU-S", "eu-dc1", 2), customer_id="c1")
        assert hold["strategy"] == strategy
        assert (await get_hold(api, hold["id"]))["strategy"] == strategy
        assert await reserved(api, "SKU-S") == {"eu-dc1": 2, "eu-store1": 0}
        row = await api.db.fetchval(
            "SELECT reserved FROM stock WHERE sku = 'SKU-S' AND location = 'eu-dc1'"
        )
        allotted = await api.db.fetchval("SELECT coalesce(sum(free), 0) FROM escrow_allotments")
        if strategy == "escrow":
            # The lane took an allotment from the row (reserved there); the hold's 2 units came
            # out of it, and the stock view counts the rest as available.
            assert row == 2 + allotted
        else:
            assert (row, allotted) == (2, 0)

        # Refusals are the same whatever the strategy, and record nothing. (An escrow lane may
        # still move units into an allotment on the way, which the stock view does not show.)
        before = await snapshot(api, allotments=strategy != "escrow")
        short = await post_hold(api, ("SKU-S", "eu-store1", 101), customer_id="c1")
        assert assert_problem(short, 409, "insufficient-stock")["shortages"] == [
            {"sku": "SKU-S", "location": "eu-store1", "requested": 101, "available": 100}
        ]
        too_many = await post_hold(api, ("SKU-S", "eu-store1", 4), customer_id="c1")
        assert_problem(too_many, 409, "refused", "purchase-limit")
        unknown = await post_hold(api, ("SKU-S", "us-dc1", 1), customer_id="c1")
        assert_problem(unknown, 404, "not-found")
        assert await snapshot(api, allotments=strategy != "escrow") == before
        await assert_consistent(api)

        replay = await post_hold(api, ("SKU-S", "eu-store1", 1), customer_id="c1", key="k-1")
        assert replay.status_code == 201
        again = await post_hold(api, ("SKU-S", "eu-store1", 1), customer_id="c1", key="k-1")
        assert (again.json()["id"], again.json()["replayed"]) == (replay.json()["id"], True)

        order_id = (await api.ok("POST", f"/v1/reservations/{hold['id']}/commit"))["order_id"]
        order = await api.ok("GET", f"/v1/orders/{order_id}")
        assert [(x["sku"], x["quantity"]) for x in order["lines"]] == [("SKU-S", 2)]
        released = await api.ok("POST", f"/v1/reservations/{replay.json()['id']}/release")
        assert released["state"] == "released"
        await assert_consistent(api)

    async def test_escrow_falls_back_when_stock_is_low(self, api: Api) -> None:
        await api.world()
        await stocked_sku(api, "SKU-L", units=10)  # below the low-stock threshold (20)
        await set_policy(api, "SKU-L", strategy="escrow")
        hold = await new_hold(api, ("SKU-L", "eu-dc1", 2))
        assert hold["strategy"] == "batched"
        assert await reserved(api, "SKU-L") == {"eu-dc1": 2, "eu-store1": 0}
        assert await api.count("escrow_allotments") == 0
        # A threshold of its own (0) lets the same stock go into escrow.
        await set_policy(api, "SKU-L", strategy="escrow", low_stock_threshold=0)
        hold = await new_hold(api, ("SKU-L", "eu-store1", 2))
        assert hold["strategy"] == "escrow"
        # Lines whose skus name different strategies meet on the row, by group commit.
        await set_policy(api, "SKU-2", strategy="pessimistic")
        mixed = await new_hold(api, ("SKU-L", "eu-dc1", 1), ("SKU-2", "eu-dc1", 1))
        assert mixed["strategy"] == "batched"
        await assert_consistent(api)

    async def test_refused_escrow_hold_records_nothing(self, api: Api) -> None:
        await api.world()
        await stocked_sku(api, "SKU-E", units=100)
        await set_policy(api, "SKU-E", strategy="escrow")
        stock_before = await api.ok("GET", "/v1/stock/SKU-E")
        before = await snapshot(api, allotments=False)
        response = await post_hold(api, ("SKU-E", "eu-dc1", 1), ("SKU-E", "eu-store1", 101))
        assert assert_problem(response, 409, "insufficient-stock")["shortages"] == [
            {"sku": "SKU-E", "location": "eu-store1", "requested": 101, "available": 100}
        ]
        # The first line's allotment may have been taken before the second line was found
        # short (and given back since, or not): the stock view shows none of it.
        assert await snapshot(api, allotments=False) == before
        after = await api.ok("GET", "/v1/stock/SKU-E")
        assert [(x["reserved"], x["available"]) for x in after["locations"]] == [
            (x["reserved"], x["available"]) for x in stock_before["locations"]
        ]
        await assert_consistent(api)

    async def test_escrow_hold_of_what_the_stock_view_shows(self, api: Api) -> None:
        """Regression: units in one lane's allotment were invisible to the row path, so a hold
        the stock view said fits was refused ("available": 84 of the 99 shown)."""
        await api.world()
        await stocked_sku(api, "SKU-E", units=100)
        await set_policy(api, "SKU-E", strategy="escrow")
        first = await new_hold(api, ("SKU-E", "eu-dc1", 1))  # lane 0 takes an allotment
        assert first["strategy"] == "escrow"
        assert await api.db.fetchval("SELECT sum(free) FROM escrow_allotments") > 0
        stock = await api.ok("GET", "/v1/stock/SKU-E")
        assert stock["locations"][0]["available"] == 99
        response = await post_hold(api, ("SKU-E", "eu-dc1", 99))  # lane 1: too much to allot
        assert response.status_code == 201, response.text
        assert await reserved(api, "SKU-E") == {"eu-dc1": 100, "eu-store1": 0}
        over = await post_hold(api, ("SKU-E", "eu-dc1", 1))
        assert assert_problem(over, 409, "insufficient-stock")["shortages"] == [
            {"sku": "SKU-E", "location": "eu-dc1", "requested": 1, "available": 0}
        ]
        await assert_consistent(api)


# --- OpenAPI ---------------------------------------------------------------------------------


async def test_openapi_describes_holds(api: Api) -> None:
    document = await api.ok("GET", "/openapi.json")
    schemas = document["components"]["schemas"]
    hold = schemas["Hold"]
    assert set(hold["properties"]) >= {
        "id",
        "state",
        "lines",
        "customer_id",
        "expires_at",
        "strategy",
        "order_id",
        "replayed",
    }
    assert "HoldLine" in schemas
    assert set(schemas["HoldLine"]["properties"]) == {"sku", "location", "quantity"}
    paths = document["paths"]
    created = paths["/v1/reservations"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Hold"}
    for path in ("/v1/reservations/{hold_id}/commit", "/v1/reservations/{hold_id}/release"):
        answer = paths[path]["post"]["responses"]["200"]["content"]["application/json"]
        assert answer["schema"] == {"$ref": "#/components/schemas/Hold"}
    assert "HoldBody" in schemas
    assert "PolicyBody" in schemas
