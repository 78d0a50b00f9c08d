"""The category endpoints over HTTP, on views built by rebuild() and moved by apply_events()."""

from __future__ import annotations

from typing import Any

import pytest

from retailsync.cdc.events import ChangeEvent
from retailsync.views import apply_events, ensure_built, rebuild
from tests.support import WEB, Api

PRODUCTS = [
    # sku, title, category, attributes
    ("S1", "banana", "food/fruit", {"color": "yellow", "organic": True}),
    ("S2", "Apple", "food/fruit", {"color": "red", "sizes": ["s", "m"]}),
    ("S3", "apple", "food/fruit/apples", {"color": "red", "weight": 1.5}),
    ("S4", "cherry", "food", {"color": "red", "extra": {"a": 1}, "none": None}),
    ("S5", "apple", "food/veg", {"color": "green"}),
    ("S6", "Tool", "tools", {"color": "red"}),
]


@pytest.fixture
async def api_views(api: Api) -> Api:
    """The application, with a catalog in the views."""
    # Built (empty) before the catalog: the app's own view consumer builds them at start-up,
    # and a build of its between the inserts and the rebuild below would bump every
    # category's version once more.
    await ensure_built(api.db)
    async with api.db.transaction() as conn:
        await conn.execute("INSERT INTO regions (id) VALUES ('eu')")
        await conn.execute("INSERT INTO locations (id, region, kind) VALUES ('W1', 'eu', 'store')")
        for sku, title, category, attributes in PRODUCTS:
            await conn.execute(
                "INSERT INTO products (sku, title, category, attributes) VALUES ($1, $2, $3, $4)",
                sku,
                title,
                category,
                attributes,
            )
        await conn.execute(
            "INSERT INTO stock (sku, location, on_hand, reserved) VALUES "
            "('S1', 'W1', 5, 0), ('S2', 'W1', 3, 3), ('S3', 'W1', 2, 2)"
        )
        # S3's reserved units sit in escrow: available to promise.
        await conn.execute(
            "INSERT INTO escrow_allotments (owner, sku, location, free, lease_until) "
            "VALUES ('lane', 'S3', 'W1', 2, clock_timestamp() + interval '1 minute')"
        )
    async with api.db.connection() as conn:
        await rebuild(conn)
    return api


async def all_pages(api: Api, path: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = ("&" if "?" in path else "?") + f"limit={limit}"
        query += f"&cursor={cursor}" if cursor else ""
        page = await api.ok("GET", path + query, as_=WEB)
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


class TestListing:
    """Pages cover the subtree once each, in the order asked for."""

    @pytest.mark.parametrize("limit", [1, 2, 5, 200])
    async def test_by_title(self, api_views: Api, limit: int) -> None:
        items = await all_pages(api_views, "/v1/categories/food/products", limit)
        assert [(i["title"], i["sku"]) for i in items] == [
            ("Apple", "S2"),
            ("apple", "S3"),
            ("apple", "S5"),
            ("banana", "S1"),
            ("cherry", "S4"),
        ]
        stock = {i["sku"]: i["in_stock"] for i in items}
        assert stock == {"S1": True, "S2": False, "S3": True, "S4": False, "S5": False}

    @pytest.mark.parametrize("limit", [1, 3])
    async def test_by_sku(self, api_views: Api, limit: int) -> None:
        items = await all_pages(api_views, "/v1/categories/food/fruit/products?sort=sku", limit)
        assert [i["sku"] for i in items] == ["S1", "S2", "S3"]
        assert items[1]["attributes"] == {"color": "red", "sizes": ["s", "m"]}

    async def test_etag_follows_the_category_version(self, api_views: Api) -> None:
        path = "/v1/categories/food/fruit/products"
        first = await api_views.call("GET", path, as_=WEB)
        tag = first.headers["etag"]
        assert tag == f'"{first.json()["version"]}"'
        again = await api_views.call("GET", path, as_=WEB, headers={"If-None-Match": tag})
        assert again.status_code == 304
        row = await api_views.db.fetchrow(
            "UPDATE products SET title = 'Blueberry' WHERE sku = 'S1' RETURNING *"
        )
        assert row is not None
        event = ChangeEvent(
            id="0-1", source="t", table="public.products", type="products.changed",
            op="update", key={"sku": "S1"}, after=dict(row), xid=1, commit_lsn=1,
            commit_ts_us=0, index=0, last_in_tx=True,
        )  # fmt: skip
        async with api_views.db.transaction() as conn:
            await apply_events(conn, [event])
        moved = await api_views.call("GET", path, as_=WEB, headers={"If-None-Match": tag})
        assert moved.status_code == 200
        assert moved.headers["etag"] != tag
        assert moved.json()["items"][0]["title"] == "Apple"
        other = await api_views.call("GET", "/v1/categories/tools/products", as_=WEB)
        assert other.json()["version"] == 1  # untouched


class TestFacets:
    """Counts per attribute value over the subtree; non-scalars as documented."""

    async def test_counts(self, api_views: Api) -> None:
        body = await api_views.ok("GET", "/v1/categories/food/facets", as_=WEB)
        assert body["products"] == 5
        facets = {
            f["name"]: [(v["value"], v["count"]) for v in f["values"]] for f in body["facets"]
        }
        assert facets == {
            "color": [("red", 3), ("green", 1), ("yellow", 1)],
            "organic": [(True, 1)],
            "sizes": [("m", 1), ("s", 1)],
            "weight": [(1.5, 1)],
        }
        fruit = await api_views.ok("GET", "/v1/categories/food/fruit/apples/facets", as_=WEB)
        assert fruit["products"] == 1
        assert [f["name"] for f in fruit["facets"]] == ["color", "weight"]


class TestBadInput:
    """Problem documents, nothing changed."""

    @pytest.mark.parametrize(
        ("path", "status", "slug"),
        [
            ("/v1/categories/nothing/products", 404, "not-found"),
            ("/v1/categories/food/fru/facets", 404, "not-found"),
            ("/v1/categories/Food/products", 422, "validation-error"),
            ("/v1/categories/food//fruit/products", 422, "validation-error"),
            ("/v1/categories/food/products?sort=price", 422, "validation-error"),
            ("/v1/categories/food/products?limit=0", 422, "validation-error"),
            ("/v1/categories/food/products?cursor=!!", 400, "invalid-parameter"),
            ("/v1/categories/food/products?cursor=bm90IGpzb24", 400, "invalid-parameter"),
        ],
    )
    async def test_refused(self, api_views: Api, path: str, status: int, slug: str) -> None:
        response = await api_views.call("GET", path, as_=WEB)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith(slug)

    async def test_cursor_of_another_sort(self, api_views: Api) -> None:
        page = await api_views.ok("GET", "/v1/categories/food/products?sort=sku&limit=1", as_=WEB)
        response = await api_views.call(
            "GET", f"/v1/categories/food/products?sort=title&cursor={page['next_cursor']}", as_=WEB
        )
        assert response.status_code == 400
        assert response.json()["field"] == "cursor"

    async def test_unauthenticated(self, api_views: Api) -> None:
        response = await api_views.client.get("/v1/categories/food/products")
        assert response.status_code == 401
