"""Holds over HTTP becoming orders: commit, release, POS sales, expiry, checkout."""

import asyncio
import time
import uuid

from tests.inventory.api_support import (
    assert_consistent,
    assert_problem,
    commit,
    eventually,
    get_hold,
    held_count,
    new_hold,
    parse_time,
    post_hold,
    release,
    reserved,
    snapshot,
)
from tests.support import POS, WEB, Api

# --- commit and release ----------------------------------------------------------------------


class TestCommitAndRelease:
    async def test_commit_places_an_order_priced_in_the_region(self, api: Api) -> None:
        await api.world()
        await api.price("SKU-1", "us", 2500, currency="USD")
        await api.receive("SKU-1", "us-dc1", 4)
        hold = await new_hold(
            api,
            ("SKU-1", "eu-dc1", 2),
            ("SKU-1", "eu-store1", 1),
            ("SKU-2", "eu-dc1", 3),
            customer_id="c1",
        )
        response = await commit(api, hold["id"])
        assert response.status_code == 200, response.text
        committed = response.json()
        assert committed["id"] == hold["id"]
        assert committed["state"] == "committed"
        assert committed["order_id"] is not None
        assert committed["lines"] == hold["lines"]
        order = await api.ok("GET", f"/v1/orders/{committed['order_id']}", as_=WEB)
        assert order["hold_id"] == hold["id"]
        assert order["cart_id"] is None
        assert (order["region"], order["currency"], order["channel"]) == ("eu", "EUR", "web")
        assert order["customer_id"] == "c1"
        assert order["status"] == "placed"
        assert [(x["sku"], x["quantity"], x["unit_price_minor"]) for x in order["lines"]] == [
            ("SKU-1", 3, 1999),
            ("SKU-2", 3, 500),
        ]
        assert order["total_minor"] == 3 * 1999 + 3 * 500
        # Committed units stay reserved (until shipped or cancelled).
        assert await reserved(api, "SKU-1") == {"eu-dc1": 2, "eu-store1": 1, "us-dc1": 0}
        assert await get_hold(api, hold["id"]) == committed

        again = await commit(api, hold["id"])
        assert again.status_code == 200, again.text
        assert again.json()["order_id"] == committed["order_id"]
        assert await api.count("orders") == 1

        # A hold in the us is priced in dollars; without a customer it is "anonymous".
        us = await new_hold(api, ("SKU-1", "us-dc1", 2))
        us_order_id = (await api.ok("POST", f"/v1/reservations/{us['id']}/commit"))["order_id"]
        us_order = await api.ok("GET", f"/v1/orders/{us_order_id}")
        assert (us_order["region"], us_order["currency"], us_order["total_minor"]) == (
            "us",
            "USD",
            5000,
        )
        assert us_order["customer_id"] == "anonymous"
        await assert_consistent(api)

    async def test_commit_refusals_write_nothing(self, api: Api) -> None:
        await api.world()
        await api.receive("SKU-1", "us-dc1", 4)
        mixed = await new_hold(api, ("SKU-1", "eu-dc1", 1), ("SKU-1", "us-dc1", 1))
        unpriced_region = await new_hold(api, ("SKU-1", "us-dc1", 1))
        eur = await new_hold(api, ("SKU-2", "eu-dc1", 1))
        before = await snapshot(api)
        assert_problem(await commit(api, mixed["id"]), 409, "refused", "mixed-regions")
        assert_problem(await commit(api, unpriced_region["id"]), 409, "refused", "unpriced")
        wrong_currency = await commit(api, eur["id"], json={"currency": "USD"})
        assert_problem(wrong_currency, 409, "refused", "unpriced")
        assert await snapshot(api) == before
        assert await held_count(api) == 3
        # The currency it is priced in works.
        ok = await commit(api, eur["id"], json={"currency": "EUR"})
        assert ok.status_code == 200, ok.text

    async def test_release_then_commit(self, api: Api) -> None:
        await api.world()
        hold = await new_hold(api, ("SKU-1", "eu-dc1", 4), customer_id="c1")
        assert await reserved(api, "SKU-1") == {"eu-dc1": 4, "eu-store1": 0}
        response = await release(api, hold["id"])
        assert response.status_code == 200, response.text
        released = response.json()
        assert released["state"] == "released"
        assert released["order_id"] is None
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 0}
        again = await release(api, hold["id"])
        assert again.status_code == 200
        assert again.json() == released
        before = await snapshot(api)
        assert_problem(await commit(api, hold["id"]), 409, "refused", "hold-released")
        assert await snapshot(api) == before
        await assert_consistent(api)

    async def test_release_of_a_committed_hold_is_409(self, api: Api) -> None:
        await api.world()
        hold = await new_hold(api, ("SKU-1", "eu-dc1", 2))
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        first = await commit(api, hold["id"], headers=headers)
        assert first.status_code == 200, first.text
        order_id = first.json()["order_id"]
        again = await commit(api, hold["id"], headers=headers)  # a retry under the same key
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert await api.count("orders") == 1
        before = await snapshot(api)
        assert_problem(await release(api, hold["id"]), 409, "refused", "hold-committed")
        assert await snapshot(api) == before
        assert (await api.ok("GET", f"/v1/orders/{order_id}"))["status"] == "placed"
        # Cancelling the order gives the units back.
        assert (await api.status(order_id, "cancelled", as_=WEB)).status_code == 200
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 0}
        await assert_consistent(api)

    async def test_commit_of_an_expired_hold_is_409(self, api: Api) -> None:
        await api.world()
        hold = await new_hold(api, ("SKU-1", "eu-dc1", 3), ttl_ms=100)
        assert await reserved(api, "SKU-1") == {"eu-dc1": 3, "eu-store1": 0}
        await asyncio.sleep(0.3)
        response = await commit(api, hold["id"])
        assert_problem(response, 409, "refused", "hold-expired")
        assert await api.count("orders") == 0

        async def given_back() -> bool:
            return await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 0}

        await eventually(given_back)
        assert (await get_hold(api, hold["id"]))["state"] == "expired"
        # Releasing an expired hold changes nothing.
        released = await release(api, hold["id"])
        assert (released.status_code, released.json()["state"]) == (200, "expired")
        assert_problem(await commit(api, hold["id"]), 409, "refused", "hold-expired")
        await assert_consistent(api)


# --- POS sales -------------------------------------------------------------------------------


class TestPosSale:
    async def test_pos_sale_commits_at_once(self, api: Api) -> None:
        await api.world()
        key = str(uuid.uuid4())
        response = await post_hold(
            api, ("SKU-1", "eu-store1", 2), key=key, as_=POS, commit=True, customer_id="c1"
        )
        assert response.status_code == 201, response.text
        sale = response.json()
        assert sale["state"] == "committed"
        assert sale["order_id"] is not None
        assert sale["replayed"] is False
        order = await api.ok("GET", f"/v1/orders/{sale['order_id']}", as_=POS)
        assert (order["channel"], order["hold_id"], order["total_minor"]) == (
            "pos",
            sale["id"],
            2 * 1999,
        )
        assert await held_count(api) == 0
        # A retry of the sale is the same sale.
        again = await post_hold(
            api, ("SKU-1", "eu-store1", 2), key=key, as_=POS, commit=True, customer_id="c1"
        )
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert (again.json()["id"], again.json()["order_id"]) == (sale["id"], sale["order_id"])
        assert await api.count("orders") == 1
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 2}
        # Handed over at the till.
        for status in ("paid", "shipped", "delivered"):
            assert (await api.status(sale["order_id"], status, as_=POS)).status_code == 200
        stock = await api.ok("GET", "/v1/stock/SKU-1")
        assert {x["location"]: (x["on_hand"], x["reserved"]) for x in stock["locations"]} == {
            "eu-dc1": (10, 0),
            "eu-store1": (3, 0),
        }
        await assert_consistent(api)

    async def test_pos_sale_of_an_unpriced_sku_holds_nothing(self, api: Api) -> None:
        await api.world()
        await api.product("SKU-3")
        await api.receive("SKU-3", "eu-store1", 5)
        key = str(uuid.uuid4())
        response = await post_hold(api, ("SKU-3", "eu-store1", 2), key=key, as_=POS, commit=True)
        assert_problem(response, 409, "refused", "unpriced")
        assert await held_count(api) == 0
        assert await api.count("orders") == 0
        assert await reserved(api, "SKU-3") == {"eu-store1": 0}
        assert await api.available("SKU-3") == 5
        # A retry under the same key is refused too and holds nothing either.
        retry = await post_hold(api, ("SKU-3", "eu-store1", 2), key=key, as_=POS, commit=True)
        assert retry.status_code == 409, retry.text
        assert await held_count(api) == 0
        assert await reserved(api, "SKU-3") == {"eu-store1": 0}
        await assert_consistent(api)

    async def test_pos_sale_with_a_currency(self, api: Api) -> None:
        await api.world()
        await api.price("SKU-2", "eu", 600, currency="CHF")  # priced twice in eu
        ambiguous = await post_hold(api, ("SKU-2", "eu-dc1", 1), as_=POS, commit=True)
        assert_problem(ambiguous, 409, "refused", "ambiguous-currency")
        assert await held_count(api) == 0
        sale = await new_hold(api, ("SKU-2", "eu-dc1", 1), as_=POS, commit=True, currency="CHF")
        order = await api.ok("GET", f"/v1/orders/{sale['order_id']}")
        assert (order["currency"], order["total_minor"]) == ("CHF", 600)


# --- expiry ----------------------------------------------------------------------------------


class TestExpiry:
    async def test_expired_hold_gives_its_stock_back(self, api: Api) -> None:
        await api.world()
        hold = await new_hold(api, ("SKU-1", "eu-dc1", 4), ttl_ms=200, customer_id="c1")
        expires_at = parse_time(hold["expires_at"]).timestamp()
        assert expires_at - time.time() <= 0.2
        assert await api.available("SKU-1") == 11

        async def expired() -> bool:
            return (await get_hold(api, hold["id"]))["state"] == "expired"

        await eventually(expired, within=expires_at - time.time() + 1.5)
        assert time.time() <= expires_at + 1.5
        assert await api.available("SKU-1") == 15
        assert await reserved(api, "SKU-1") == {"eu-dc1": 0, "eu-store1": 0}
        await assert_consistent(api)

    async def test_expiry_never_touches_a_committed_hold(self, api: Api) -> None:
        await api.world()
        kept = await new_hold(api, ("SKU-1", "eu-dc1", 2), ttl_ms=300)
        order_id = (await commit(api, kept["id"])).json()["order_id"]
        kept_expiry = parse_time(kept["expires_at"]).timestamp()
        witness = await new_hold(api, ("SKU-2", "eu-dc1", 1), ttl_ms=100)

        async def chore_ran_past_the_expiry() -> bool:
            if time.time() < kept_expiry + 0.25:  # two runs of the chore (every 0.1 s)
                return False
            return (await get_hold(api, witness["id"]))["state"] == "expired"  # it runs

        await eventually(chore_ran_past_the_expiry)
        assert (await get_hold(api, kept["id"]))["state"] == "committed"
        order = await api.ok("GET", f"/v1/orders/{order_id}")
        assert order["status"] == "placed"
        assert [(x["sku"], x["quantity"]) for x in order["lines"]] == [("SKU-1", 2)]
        assert await reserved(api, "SKU-1") == {"eu-dc1": 2, "eu-store1": 0}
        states = await api.db.fetch(
            "SELECT state FROM reservations WHERE hold_id = $1::uuid", kept["id"]
        )
        assert [row["state"] for row in states] == ["committed"]
        await assert_consistent(api)


# --- checkout --------------------------------------------------------------------------------


class TestCheckout:
    async def test_checkout_without_a_hold(self, api: Api) -> None:
        await api.world()
        response = await api.checkout(await api.cart({"SKU-1": 12, "SKU-2": 1}))
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["total_minor"] == 12 * 1999 + 500
        assert order["hold_id"] is not None
        assert await held_count(api) == 0
        rows = await api.db.fetch("SELECT id, state, order_id FROM holds")
        assert [(str(r["id"]), r["state"], str(r["order_id"])) for r in rows] == [
            (order["hold_id"], "committed", order["id"])
        ]
        assert await reserved(api, "SKU-1") == {"eu-dc1": 10, "eu-store1": 2}
        await assert_consistent(api)

    async def test_short_checkout_is_409_and_holds_nothing(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-2": 1, "SKU-1": 16})
        before = await snapshot(api)
        response = await api.checkout(cart_id)
        problem = assert_problem(response, 409, "insufficient-stock")
        assert problem["shortages"] == [{"sku": "SKU-1", "requested": 16, "available": 15}]
        assert await snapshot(api) == before
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "open"

    async def test_checkout_commits_the_given_hold(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 3, "SKU-2": 2})
        hold = await new_hold(
            api, ("SKU-1", "eu-dc1", 2), ("SKU-1", "eu-store1", 1), ("SKU-2", "eu-dc1", 2)
        )
        response = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": hold["id"]}, as_=WEB
        )
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["hold_id"] == hold["id"]
        assert order["cart_id"] == cart_id
        assert order["customer_id"] == "c-1"  # the cart's customer
        assert order["total_minor"] == 3 * 1999 + 2 * 500
        committed = await get_hold(api, hold["id"])
        assert (committed["state"], committed["order_id"]) == ("committed", order["id"])
        assert await api.count("holds") == 1  # no second hold taken
        assert await reserved(api, "SKU-1") == {"eu-dc1": 2, "eu-store1": 1}
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "checked_out"
        await assert_consistent(api)

    async def test_hold_that_does_not_match_the_cart_is_409(self, api: Api) -> None:
        await api.world()
        await api.receive("SKU-1", "us-dc1", 5)
        cart_id = await api.cart({"SKU-1": 2})
        other_quantity = await new_hold(api, ("SKU-1", "eu-dc1", 3))
        other_sku = await new_hold(api, ("SKU-2", "eu-dc1", 2))
        extra_line = await new_hold(api, ("SKU-1", "eu-dc1", 2), ("SKU-2", "eu-dc1", 1))
        other_region = await new_hold(api, ("SKU-1", "us-dc1", 2))
        before = await snapshot(api)
        for mismatched in (other_quantity, other_sku, extra_line, other_region):
            response = await api.call(
                "POST",
                "/v1/orders",
                json={"cart_id": cart_id, "hold_id": mismatched["id"]},
                as_=WEB,
            )
            assert_problem(response, 409, "refused", "hold-mismatch")
            assert (await get_hold(api, mismatched["id"]))["state"] == "held"
        assert await snapshot(api) == before
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "open"
        unknown = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": str(uuid.uuid4())}, as_=WEB
        )
        assert_problem(unknown, 404, "not-found")
        malformed = await api.call(
            "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": "nope"}, as_=WEB
        )
        assert_problem(malformed, 422, "validation-error")
        assert await snapshot(api) == before

    async def test_checkout_with_an_ended_hold_is_409(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 1})
        released = await new_hold(api, ("SKU-1", "eu-dc1", 1))
        await release(api, released["id"])
        committed = await new_hold(api, ("SKU-1", "eu-dc1", 1))
        await commit(api, committed["id"])
        before = await snapshot(api)
        for hold_id, reason in (
            (released["id"], "hold-released"),
            (committed["id"], "hold-committed"),
        ):
            response = await api.call(
                "POST", "/v1/orders", json={"cart_id": cart_id, "hold_id": hold_id}, as_=WEB
            )
            assert_problem(response, 409, "refused", reason)
        assert await snapshot(api) == before
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "open"
