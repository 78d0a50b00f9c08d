"""Stock, carts, checkout and the order life cycle over HTTP, with their stock effects."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from retailsync.models import OrderStatus
from retailsync.services.audit import audit_stock
from retailsync.services.orders import TRANSITIONS
from tests.support import POS, WAREHOUSE, WEB, Api


class TestStock:
    """Receipts add, adjustments correct, and nothing goes below what is reserved."""

    async def test_receipt_and_stock_view(self, api: Api) -> None:
        await api.world()
        stock = await api.ok("GET", "/v1/stock/SKU-1", as_=WEB)
        assert stock["available"] == 15
        assert [(loc["location"], loc["on_hand"]) for loc in stock["locations"]] == [
            ("eu-dc1", 10),
            ("eu-store1", 5),
        ]

    async def test_adjustment_down_and_up(self, api: Api) -> None:
        await api.world()
        down = await api.ok(
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            json={"delta": -3, "reason": "damaged"},
            as_=WAREHOUSE,
        )
        assert down["on_hand"] == 7
        up = await api.ok(
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            json={"delta": 2, "reason": "found"},
            as_=WAREHOUSE,
        )
        assert up["on_hand"] == 9
        audit = await self._audit(api)
        assert audit.ok

    async def test_adjustment_below_reserved_is_409(self, api: Api) -> None:
        await api.world()
        cart = await api.cart({"SKU-1": 12})  # reserves 10 at eu-dc1 and 2 at eu-store1
        assert (await api.checkout(cart)).status_code == 201
        refused = await api.call(
            "POST",
            "/v1/stock/SKU-1/eu-dc1/adjustments",
            json={"delta": -1, "reason": "lost"},
            as_=WAREHOUSE,
        )
        assert refused.status_code == 409
        assert refused.json()["type"] == "urn:retailsync:problem:insufficient-stock"
        assert await api.count("stock_movements") == 3  # the three receipts only

    async def test_stock_etag_changes_with_any_location(self, api: Api) -> None:
        await api.world()
        first = await api.call("GET", "/v1/stock/SKU-1")
        tag = first.headers["etag"]
        assert (
            await api.call("GET", "/v1/stock/SKU-1", headers={"If-None-Match": tag})
        ).status_code == 304
        await api.receive("SKU-1", "eu-store1", 1)
        again = await api.call("GET", "/v1/stock/SKU-1", headers={"If-None-Match": tag})
        assert again.status_code == 200

    @staticmethod
    async def _audit(api: Api):  # type: ignore[no-untyped-def]
        async with api.db.connection() as conn:
            return await audit_stock(conn)


class TestCarts:
    """Cart lines are set and removed under the cart's version."""

    async def test_lines_set_replace_remove(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 1, "SKU-2": 2})
        replaced = await api.ok(
            "PUT", f"/v1/carts/{cart_id}/lines/SKU-1", json={"quantity": 3}, as_=WEB
        )
        assert {line["sku"]: line["quantity"] for line in replaced["lines"]} == {
            "SKU-1": 3,
            "SKU-2": 2,
        }
        removed = await api.ok("DELETE", f"/v1/carts/{cart_id}/lines/SKU-2", as_=WEB)
        assert [line["sku"] for line in removed["lines"]] == ["SKU-1"]
        again = await api.ok("DELETE", f"/v1/carts/{cart_id}/lines/SKU-2", as_=WEB)
        assert again["version"] == removed["version"]  # removing nothing changes nothing

    async def test_stale_cart_version_is_412(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 1})
        cart = await api.call("GET", f"/v1/carts/{cart_id}", as_=WEB)
        tag = cart.headers["etag"]
        await api.ok("PUT", f"/v1/carts/{cart_id}/lines/SKU-2", json={"quantity": 1}, as_=WEB)
        stale = await api.call(
            "PUT",
            f"/v1/carts/{cart_id}/lines/SKU-1",
            json={"quantity": 5},
            headers={"If-Match": tag},
            as_=WEB,
        )
        assert stale.status_code == 412
        lines = (await api.ok("GET", f"/v1/carts/{cart_id}"))["lines"]
        assert {line["sku"]: line["quantity"] for line in lines} == {"SKU-1": 1, "SKU-2": 1}

    async def test_cart_for_unknown_region_is_404(self, api: Api) -> None:
        await api.world()
        response = await api.call(
            "POST", "/v1/carts", json={"customer_id": "c-1", "region": "mars"}, as_=WEB
        )
        assert response.status_code == 404
        assert await api.count("carts") == 0


class TestCheckout:
    """Checkout reserves all lines or none, in the cart's region."""

    async def test_checkout_places_order_and_reserves(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 12, "SKU-2": 1})
        response = await api.checkout(cart_id)
        assert response.status_code == 201
        order = response.json()
        assert order["status"] == "placed"
        assert order["total_minor"] == 12 * 1999 + 500
        assert order["currency"] == "EUR"
        assert response.headers["location"] == f"/v1/orders/{order['id']}"
        assert response.headers["etag"] == f'"{order["version"]}"'
        # The token names the transaction that wrote the order (one statement, its own).
        assert await api.db.fetchval(
            "SELECT xmin = xid($1::text::xid8) FROM orders WHERE id = $2",
            response.headers["consistency-token"],
            uuid.UUID(order["id"]),
        )
        stock = await api.ok("GET", "/v1/stock/SKU-1")
        assert stock["available"] == 3
        assert sum(loc["reserved"] for loc in stock["locations"]) == 12
        cart = await api.ok("GET", f"/v1/carts/{cart_id}")
        assert cart["status"] == "checked_out"

    async def test_short_stock_is_409_and_reserves_nothing(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-2": 1, "SKU-1": 16})
        response = await api.checkout(cart_id)
        assert response.status_code == 409
        problem = response.json()
        assert problem["type"] == "urn:retailsync:problem:insufficient-stock"
        assert problem["shortages"] == [{"sku": "SKU-1", "requested": 16, "available": 15}]
        assert await api.available("SKU-2") == 100  # the line that fit was not reserved either
        assert await api.count("orders") == 0
        assert (await api.ok("GET", f"/v1/carts/{cart_id}"))["status"] == "open"

    async def test_stock_in_another_region_does_not_count(self, api: Api) -> None:
        await api.world()
        await api.price("SKU-1", "us", 2100, currency="USD")
        cart_id = await api.cart({"SKU-1": 1}, region="us")
        response = await api.checkout(cart_id)
        assert response.status_code == 409

    async def test_empty_and_unpriced_carts_refused(self, api: Api) -> None:
        await api.world()
        await api.product("SKU-3")
        await api.receive("SKU-3", "eu-dc1", 5)
        empty = await api.checkout(await api.cart({}))
        assert (empty.status_code, empty.json()["reason"]) == (409, "empty-cart")
        unpriced = await api.checkout(await api.cart({"SKU-3": 1}))
        assert (unpriced.status_code, unpriced.json()["reason"]) == (409, "unpriced")

    async def test_second_checkout_of_a_cart_is_409(self, api: Api) -> None:
        await api.world()
        cart_id = await api.cart({"SKU-1": 1})
        assert (await api.checkout(cart_id)).status_code == 201
        again = await api.checkout(cart_id)
        assert again.status_code == 409
        assert again.json()["type"] == "urn:retailsync:problem:cart-not-open"
        assert await api.available("SKU-1") == 14


class TestOrderLifeCycle:
    """placed -> paid -> shipped -> delivered, or cancelled, with the stock following."""

    async def _order(self, api: Api, quantity: int = 2) -> str:
        await api.world()
        response = await api.checkout(await api.cart({"SKU-1": quantity}))
        return str(response.json()["id"])

    async def test_ship_takes_stock_out(self, api: Api) -> None:
        order_id = await self._order(api)
        assert (await api.status(order_id, "paid", as_=WEB)).status_code == 200
        assert (await api.status(order_id, "shipped", as_=WAREHOUSE)).status_code == 200
        delivered = await api.status(order_id, "delivered", as_=WAREHOUSE)
        assert delivered.json()["status"] == "delivered"
        history = [(h["from_status"], h["to_status"]) for h in delivered.json()["history"]]
        assert history == [
            (None, "placed"),
            ("placed", "paid"),
            ("paid", "shipped"),
            ("shipped", "delivered"),
        ]
        stock = await api.ok("GET", "/v1/stock/SKU-1")
        assert sum(loc["on_hand"] for loc in stock["locations"]) == 13
        assert sum(loc["reserved"] for loc in stock["locations"]) == 0

    async def test_cancel_returns_stock(self, api: Api) -> None:
        order_id = await self._order(api, quantity=4)
        assert await api.available("SKU-1") == 11
        await api.status(order_id, "paid", as_=WEB)
        cancelled = await api.status(order_id, "cancelled", as_=WEB)
        assert cancelled.json()["status"] == "cancelled"
        assert await api.available("SKU-1") == 15

    @pytest.mark.parametrize(
        ("path", "refused"),
        [
            ([], "shipped"),
            ([], "delivered"),
            (["paid", "shipped"], "cancelled"),
            (["cancelled"], "paid"),
            (["paid"], "paid"),
        ],
    )
    async def test_invalid_transitions_are_409(
        self, api: Api, path: list[str], refused: str
    ) -> None:
        order_id = await self._order(api)
        for status in path:
            assert (await api.status(order_id, status)).status_code == 200
        before = await api.ok("GET", f"/v1/orders/{order_id}")
        response = await api.status(order_id, refused)
        assert response.status_code == 409
        assert response.json()["type"] == "urn:retailsync:problem:invalid-transition"
        assert await api.ok("GET", f"/v1/orders/{order_id}") == before

    async def test_pos_sale_hands_over_at_once(self, api: Api) -> None:
        await api.world()
        response = await api.checkout(await api.cart({"SKU-2": 1}), as_=POS)
        order_id = response.json()["id"]
        for status in ("paid", "shipped", "delivered"):
            assert (await api.status(order_id, status, as_=POS)).status_code == 200
        assert (await api.ok("GET", f"/v1/orders/{order_id}"))["channel"] == "pos"

    async def test_database_refuses_an_invalid_transition_itself(self, api: Api) -> None:
        order_id = await self._order(api)
        with pytest.raises(asyncpg.CheckViolationError):
            await api.db.fetchval(
                "UPDATE orders SET status = 'delivered' WHERE id = $1::uuid", order_id
            )

    async def test_code_and_database_agree_on_transitions(self, api: Api) -> None:
        rows = await api.db.fetch("SELECT from_status, to_status FROM order_status_transitions")
        in_database = {(row["from_status"], row["to_status"]) for row in rows}
        in_code = {(str(a), str(b)) for a, targets in TRANSITIONS.items() for b in targets}
        assert in_database == in_code
        assert {str(s) for s in OrderStatus} == {
            row["status"] for row in await api.db.fetch("SELECT status FROM order_statuses")
        }
