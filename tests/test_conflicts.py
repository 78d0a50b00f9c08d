"""The conflict ledger: LWW losers, concurrent values and refused decrements recorded with
both versions; reconciliation rules; the manual queue and its resolve endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from retailsync.api.app import create_app
from retailsync.config import load_settings
from retailsync.conflicts.reconcile import reconcile_queued
from retailsync.crdt import HLC, LWWRegister, MVRegister, wall_clock_ms
from retailsync.db.database import Database
from retailsync.sync.appliers import appliers
from retailsync.sync.sources import canonical_attributes
from tests.replicas import Replica, b64
from tests.support import ADMIN, POS, WEB, Api

PRICE = "price.amount_minor:SKU-1@eu/EUR"
ATTRIBUTES = "product.attributes:SKU-1"


async def price_of(api: Api) -> int:
    (price,) = [p for p in await api.ok("GET", "/v1/prices/SKU-1") if p["region"] == "eu"]
    return int(price["amount_minor"])


async def conflicts(api: Api, query: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await api.ok("GET", f"/v1/conflicts{query}")
    return found


async def reconcile(api: Api) -> tuple[int, int]:
    return await reconcile_queued(api.db, appliers(HLC("test-reconciler")))


def price_editor(api: Api, replica: str, region: str) -> tuple[Replica, HLC]:
    """An admin tool in ``region`` that edits prices offline and syncs them."""
    editor = Replica(api, replica, as_=ADMIN)
    editor.adopt(PRICE, LWWRegister(replica, region_priority={"eu": 1, "us": 0}))
    return editor, HLC(replica)


class TestPrices:
    async def test_a_later_offline_price_wins_and_the_loser_is_queued(self, api: Api) -> None:
        await api.world()  # SKU-1 costs 1999 in eu, set through the API
        editor, clock = price_editor(api, "pricing-eu", "eu")
        await asyncio.sleep(0.005)  # the edit is made after the API write
        editor[PRICE].assign(2499, clock.now(), "eu")
        reply = await editor.sync()
        assert await price_of(api) == 2499
        (conflict,) = await conflicts(api)
        assert reply["conflicts"] == [conflict["id"]]
        assert conflict["kind"] == "lww-loser"
        assert conflict["tier"] == "reconciliation"
        assert conflict["status"] == "queued"
        assert [v["value"] for v in conflict["versions"]] == [2499, 1999]
        assert all(v["stamp"] and v["origin"] == "eu" for v in conflict["versions"])

        # 1999 -> 2499 is 25%, and both were set in eu: no rule decides; a person must.
        assert await reconcile(api) == (0, 1)
        (queued,) = await conflicts(api, "?status=manual")
        resolved = await api.ok(
            "POST",
            f"/v1/conflicts/{queued['id']}/resolve",
            json={"choose": 1, "note": "the promotion was cancelled"},
        )
        assert resolved["status"] == "resolved"
        assert resolved["decision"]["by"].startswith("admin:")
        assert await price_of(api) == 1999
        # The decision reaches the editor at its next sync, and beats its stale write there.
        reply = await editor.sync()
        assert editor[PRICE].value == 1999
        assert reply["conflicts"] == []
        assert len(await conflicts(api)) == 1

    async def test_home_region_rule_decides(self, api: Api) -> None:
        await api.world()
        editor, clock = price_editor(api, "pricing-us", "us")
        await asyncio.sleep(0.005)
        editor[PRICE].assign(3000, clock.now(), "us")  # set for eu from the us office
        await editor.sync()
        assert await price_of(api) == 3000
        assert await reconcile(api) == (1, 0)
        (conflict,) = await conflicts(api)
        assert conflict["status"] == "resolved"
        assert conflict["decision"]["by"] == "rule:price-home-region"
        assert await price_of(api) == 1999  # eu's own price stands

    async def test_small_difference_rule_keeps_the_last_writer(self, api: Api) -> None:
        await api.world()
        editor, clock = price_editor(api, "pricing-eu", "eu")
        await asyncio.sleep(0.005)
        editor[PRICE].assign(2009, clock.now(), "eu")  # within 1% of 1999
        await editor.sync()
        assert await reconcile(api) == (1, 0)
        (conflict,) = await conflicts(api)
        assert conflict["decision"]["by"] == "rule:price-small-difference"
        assert await price_of(api) == 2009

    async def test_a_stamp_too_far_ahead_is_refused(self, api: Api) -> None:
        await api.world()
        editor, _ = price_editor(api, "pricing-eu", "eu")
        future = HLC("pricing-eu", physical=lambda: wall_clock_ms() + 10_000)
        editor[PRICE].assign(1, future.now(), "eu")
        response = await editor.post({"objects": [{"key": PRICE, "state": b64(editor[PRICE])}]})
        assert response.status_code == 400
        assert "ahead of local physical time" in response.json()["detail"]
        assert await price_of(api) == 1999
        assert await api.count("conflicts") == 0

    async def test_a_price_of_the_wrong_type_is_refused(self, api: Api) -> None:
        await api.world()
        editor, clock = price_editor(api, "pricing-eu", "eu")
        editor[PRICE].assign("free", clock.now(), "eu")
        response = await editor.post({"objects": [{"key": PRICE, "state": b64(editor[PRICE])}]})
        assert response.status_code == 400
        assert response.json()["field"] == "objects[0].state"
        assert await price_of(api) == 1999


class TestAttributes:
    async def test_concurrent_values_wait_for_a_person(self, api: Api) -> None:
        await api.world()
        pims = [Replica(api, f"pim-{i}", as_=ADMIN) for i in (1, 2)]
        for pim in pims:
            pim.adopt(ATTRIBUTES, MVRegister(pim.id))
            await pim.sync()  # both start from the catalog's value
        assert pims[0][ATTRIBUTES].value == {canonical_attributes({"brand": "Acme"})}
        red, blue = ({"brand": "Acme", "color": c} for c in ("red", "blue"))
        pims[0][ATTRIBUTES].assign(canonical_attributes(red))
        pims[1][ATTRIBUTES].assign(canonical_attributes(blue))
        await pims[0].sync()
        product = await api.ok("GET", "/v1/products/SKU-1")
        assert product["attributes"] == red  # no conflict yet: red superseded what it saw
        reply = await pims[1].sync()
        (conflict,) = await conflicts(api)
        assert reply["conflicts"] == [conflict["id"]]
        assert conflict["kind"] == "concurrent-values"
        assert conflict["status"] == "manual"
        assert {v["origin"] for v in conflict["versions"]} == {"pim-1", "pim-2"}
        assert (await api.ok("GET", "/v1/products/SKU-1"))["attributes"] == red  # unchanged

        await pims[1].sync()  # still conflicted: not recorded twice
        assert len(await conflicts(api)) == 1

        values = [v["value"] for v in conflict["versions"]]
        await api.ok(
            "POST",
            f"/v1/conflicts/{conflict['id']}/resolve",
            json={"choose": values.index(canonical_attributes(blue))},
        )
        assert (await api.ok("GET", "/v1/products/SKU-1"))["attributes"] == blue
        await pims[0].sync()
        assert pims[0][ATTRIBUTES].value == {canonical_attributes(blue)}


class TestRefusedDecrements:
    async def test_recorded_once_as_automatic(self, api: Api) -> None:
        await api.world()
        till = Replica(api, "till-1")
        report = {"key": "stock.units:SKU-1@eu-store1", "requested": 2, "available": 0, "at": "7"}
        for _ in range(2):
            await till.sync([], refused=[report])
        (conflict,) = await conflicts(api, "?status=resolved")
        assert conflict["kind"] == "refused-decrement"
        assert conflict["tier"] == "automatic"
        assert conflict["versions"][0]["value"] == {"requested": 2}
        metrics = (await api.client.get("/metrics")).text
        assert 'retailsync_conflicts_total{kind="refused-decrement",tier="automatic"}' in metrics


class TestConflictsApi:
    async def test_admin_only(self, api: Api) -> None:
        for channel in (WEB, POS):
            response = await api.call("GET", "/v1/conflicts", as_=channel)
            assert response.status_code == 403
        response = await api.call("POST", "/v1/conflicts/1/resolve", json={"choose": 0}, as_=POS)
        assert response.status_code == 403

    @pytest.mark.parametrize(
        "query", ["?status=open", "?limit=0", "?limit=1000", "?after=-1", "?entity=DROP TABLE"]
    )
    async def test_bad_queries(self, api: Api, query: str) -> None:
        response = await api.call("GET", f"/v1/conflicts{query}")
        assert response.status_code == 422

    async def test_resolve_refusals_change_nothing(self, api: Api) -> None:
        await api.world()
        editor, clock = price_editor(api, "pricing-eu", "eu")
        await asyncio.sleep(0.005)
        editor[PRICE].assign(2499, clock.now(), "eu")
        await editor.sync()
        (conflict,) = await conflicts(api)
        path = f"/v1/conflicts/{conflict['id']}/resolve"
        cases = [
            ("/v1/conflicts/999/resolve", {"choose": 0}, 404),
            ("/v1/conflicts/0/resolve", {"choose": 0}, 422),
            (path, {"choose": 2}, 400),
            (path, {"choose": "1"}, 422),
            (path, {"choose": 0, "why": "x"}, 422),
            (path, {}, 422),
        ]
        for target, body, status in cases:
            response = await api.call("POST", target, json=body)
            assert response.status_code == status, (target, body, response.text)
        assert (await conflicts(api))[0]["status"] == "queued"
        assert await price_of(api) == 2499
        await api.ok("POST", path, json={"choose": 0})
        again = await api.call("POST", path, json={"choose": 1})
        assert again.status_code == 409
        assert again.json()["reason"] == "already-resolved"
        assert await price_of(api) == 2499


async def test_the_background_chore_reconciles(api: Api, db: Database, database_dsn: str) -> None:
    await api.world()
    editor, clock = price_editor(api, "pricing-us", "us")
    await asyncio.sleep(0.005)
    editor[PRICE].assign(3000, clock.now(), "us")
    await editor.sync()
    settings = load_settings(
        {"db_url": database_dsn, "reconcile_interval_seconds": 0.1}, environ={}
    )
    app = create_app(settings, db=db)
    async with app.router.lifespan_context(app):
        for _ in range(50):
            if (await conflicts(api))[0]["status"] == "resolved":
                break
            await asyncio.sleep(0.1)
    assert (await conflicts(api))[0]["decision"]["by"] == "rule:price-home-region"
    assert await price_of(api) == 1999
