"""Products, prices and locations over HTTP: happy paths and conditional requests."""

from __future__ import annotations

from tests.support import WEB, Api


class TestProducts:
    """Products are created, read, replaced and listed by category subtree."""

    async def test_create_then_read(self, api: Api) -> None:
        body = {"title": "Desk lamp", "category": "home/lighting", "attributes": {"watts": 9}}
        created = await api.call("PUT", "/v1/products/LAMP-1", json=body)
        assert created.status_code == 201
        assert created.headers["etag"] == '"1"'
        read = await api.call("GET", "/v1/products/LAMP-1", as_=WEB)
        assert read.status_code == 200
        assert read.json()["attributes"] == {"watts": 9}
        assert read.json()["version"] == 1

    async def test_replace_bumps_version(self, api: Api) -> None:
        await api.product("LAMP-1")
        replaced = await api.call(
            "PUT", "/v1/products/LAMP-1", json={"title": "New", "category": "home"}
        )
        assert replaced.status_code == 200
        assert replaced.json()["version"] == 2
        assert replaced.json()["title"] == "New"

    async def test_if_match_stale_version_is_412_with_current(self, api: Api) -> None:
        await api.product("LAMP-1")
        await api.product("LAMP-1")  # now at version 2
        stale = await api.call(
            "PUT",
            "/v1/products/LAMP-1",
            json={"title": "Mine", "category": "home"},
            headers={"If-Match": '"1"'},
        )
        assert stale.status_code == 412
        assert stale.json()["current_version"] == 2
        assert stale.headers["etag"] == '"2"'
        current = await api.ok("GET", "/v1/products/LAMP-1")
        assert current["title"] != "Mine"

    async def test_if_match_current_version_applies(self, api: Api) -> None:
        await api.product("LAMP-1")
        fresh = await api.call(
            "PUT",
            "/v1/products/LAMP-1",
            json={"title": "Mine", "category": "home"},
            headers={"If-Match": '"1"'},
        )
        assert fresh.status_code == 200
        assert fresh.json()["version"] == 2

    async def test_if_none_match_star_only_creates(self, api: Api) -> None:
        body = {"title": "A", "category": "home"}
        first = await api.call("PUT", "/v1/products/P-1", json=body, headers={"If-None-Match": "*"})
        second = await api.call(
            "PUT", "/v1/products/P-1", json={**body, "title": "B"}, headers={"If-None-Match": "*"}
        )
        assert first.status_code == 201
        assert second.status_code == 412
        assert (await api.ok("GET", "/v1/products/P-1"))["title"] == "A"

    async def test_if_none_match_gives_304(self, api: Api) -> None:
        await api.product("LAMP-1")
        unchanged = await api.call("GET", "/v1/products/LAMP-1", headers={"If-None-Match": '"1"'})
        assert unchanged.status_code == 304
        await api.product("LAMP-1")
        changed = await api.call("GET", "/v1/products/LAMP-1", headers={"If-None-Match": '"1"'})
        assert changed.status_code == 200

    async def test_list_by_category_subtree_with_cursor(self, api: Api) -> None:
        for index in range(5):
            await api.product(f"A-{index}", category="home/lighting")
        await api.product("B-1", category="home")
        await api.product("C-1", category="homeware")  # a prefix, but not a subcategory
        await api.product("D-1", category="toys")
        seen: list[str] = []
        cursor = None
        while True:
            query = "category=home&limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = await api.ok("GET", f"/v1/products?{query}", as_=WEB)
            seen += [item["sku"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["A-0", "A-1", "A-2", "A-3", "A-4", "B-1"]

    async def test_unknown_product_is_404_problem(self, api: Api) -> None:
        missing = await api.call("GET", "/v1/products/NOPE")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"] == "urn:retailsync:problem:not-found"


class TestPricesAndLocations:
    """Prices are per sku x region x currency in minor units; locations name their region."""

    async def test_price_per_region_and_currency(self, api: Api) -> None:
        await api.location("eu-dc1", "eu")
        await api.location("uk-dc1", "uk")
        await api.product("SKU-1")
        created = await api.call(
            "PUT", "/v1/prices/SKU-1/eu", json={"currency": "EUR", "amount_minor": 1999}
        )
        assert created.status_code == 201
        await api.price("SKU-1", "uk", 1750, currency="GBP")
        updated = await api.price("SKU-1", "eu", 1899)
        assert updated["version"] == 2
        prices = await api.ok("GET", "/v1/prices/SKU-1", as_=WEB)
        assert [(p["region"], p["currency"], p["amount_minor"]) for p in prices] == [
            ("eu", "EUR", 1899),
            ("uk", "GBP", 1750),
        ]

    async def test_price_for_unknown_region_is_404(self, api: Api) -> None:
        await api.product("SKU-1")
        response = await api.call(
            "PUT", "/v1/prices/SKU-1/mars", json={"currency": "EUR", "amount_minor": 1}
        )
        assert response.status_code == 404
        assert await api.count("prices") == 0

    async def test_locations_listed_and_filtered(self, api: Api) -> None:
        await api.location("eu-dc1", "eu")
        await api.location("eu-store1", "eu", "store")
        await api.location("us-dc1", "us")
        everything = await api.ok("GET", "/v1/locations", as_=WEB)
        assert [loc["id"] for loc in everything] == ["eu-dc1", "eu-store1", "us-dc1"]
        eu = await api.ok("GET", "/v1/locations?region=eu")
        assert {loc["kind"] for loc in eu} == {"warehouse", "store"}
        moved = await api.location("us-dc1", "eu")
        assert moved["version"] == 2


class TestOperations:
    """Health, metrics and the API description are served."""

    async def test_healthz(self, api: Api) -> None:
        response = await api.client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_metrics_count_requests(self, api: Api) -> None:
        await api.call("GET", "/v1/products/NOPE")
        text = (await api.client.get("/metrics")).text
        assert 'retailsync_http_requests_total{method="GET",route="/v1/products/{sku}"' in text
        assert 'retailsync_rejections_total{problem="not-found"}' in text

    async def test_openapi_and_docs(self, api: Api) -> None:
        spec = (await api.client.get("/openapi.json")).json()
        for path in (
            "/v1/products/{sku}",
            "/v1/prices/{sku}/{region}",
            "/v1/stock/{sku}/{location}/receipts",
            "/v1/carts/{cart_id}/lines/{sku}",
            "/v1/orders/{order_id}/status",
            "/v1/locations/{location_id}",
        ):
            assert path in spec["paths"]
        docs = await api.client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
