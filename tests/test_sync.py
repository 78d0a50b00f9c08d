"""POST /v1/sync/{replica}: offline POS terminals sell from bounded-counter allotments, carts
and wishlists merge, and nothing a replica sends can mint stock or change what it should not."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid

import pytest

from retailsync.crdt import AWSet, BoundedCounter, Cart, InsufficientRights, PriceSnapshot
from retailsync.models import Channel
from retailsync.services.audit import audit_stock
from retailsync.services.keys import create_key
from tests.replicas import Replica, b64
from tests.support import ADMIN, MOBILE, POS, WAREHOUSE, WEB, Api

UNITS = "stock.units:SKU-1@eu-store1"


async def stock_at(api: Api, location: str = "eu-store1", sku: str = "SKU-1") -> dict[str, int]:
    stock = await api.ok("GET", f"/v1/stock/{sku}")
    (row,) = [loc for loc in stock["locations"] if loc["location"] == location]
    return {k: row[k] for k in ("on_hand", "reserved", "available")}


async def drain_warehouse(api: Api) -> None:
    body = {"delta": -10, "reason": "moved out"}
    await api.ok("POST", "/v1/stock/SKU-1/eu-dc1/adjustments", json=body, as_=WAREHOUSE)


async def audit_ok(api: Api) -> None:
    async with api.db.connection() as conn:
        audit = await audit_stock(conn)
    assert audit.ok, audit


class TestOfflineSelling:
    async def test_terminals_sell_only_what_they_were_allotted(self, api: Api) -> None:
        await api.world()  # SKU-1: 5 units at eu-store1
        till1, till2 = Replica(api, "till-1"), Replica(api, "till-2")
        for till in (till1, till2):
            till.adopt(UNITS, BoundedCounter(till.id))
        first = await till1.sync(allot={UNITS: 3})
        second = await till2.sync(allot={UNITS: 3})
        assert [first["objects"][0]["allotted"], second["objects"][0]["allotted"]] == [3, 2]
        assert await stock_at(api) == {"on_hand": 5, "reserved": 5, "available": 0}
        # The web shop cannot sell what the tills hold: only the warehouse's 10 are left.
        assert (await api.checkout(await api.cart({"SKU-1": 11}))).status_code == 409

        # Offline: each till sells within its rights and is refused beyond them.
        for _ in range(3):
            till1[UNITS].decrement(1)
        with pytest.raises(InsufficientRights):
            till1[UNITS].decrement(1)
        till2[UNITS].decrement(1)
        till2[UNITS].transfer(1, to="server")  # closing time: give one unit back

        await till1.sync()
        await till2.sync()
        assert await stock_at(api) == {"on_hand": 1, "reserved": 0, "available": 1}
        assert till1[UNITS].rights() == 0
        assert till2[UNITS].rights() == 0
        shipments = await api.db.fetchval(
            "SELECT -sum(delta) FROM stock_movements WHERE kind = 'shipment'"
        )
        assert shipments == 4
        await audit_ok(api)
        metrics = (await api.client.get("/metrics")).text
        assert 'retailsync_offline_units_total{event="sold"}' in metrics

    async def test_a_resent_sync_sells_once(self, api: Api) -> None:
        await api.world()
        till = Replica(api, "till-1")
        till.adopt(UNITS, BoundedCounter(till.id))
        await till.sync(allot={UNITS: 4})
        till[UNITS].decrement(2)
        body = {"objects": [{"key": UNITS, "state": b64(till[UNITS])}]}
        for _ in range(3):  # the answer was lost twice; the terminal sends again
            assert (await till.post(body)).status_code == 200
        assert await stock_at(api) == {"on_hand": 3, "reserved": 2, "available": 1}
        await audit_ok(api)

    @pytest.mark.parametrize("seed", [7, 8])
    async def test_random_tills_and_web_shoppers_never_oversell(self, api: Api, seed: int) -> None:
        """Tills allot, sell offline, give back and resync while the web shop sells the same
        store stock; every unit is accounted for and nothing is oversold."""
        await api.world()
        await drain_warehouse(api)  # the web shop sells the store's units too
        rng = random.Random(seed)
        sold_offline = 0
        web_sold = 0
        receipts = 0

        async def till(name: str, rng: random.Random) -> None:
            nonlocal sold_offline
            local = Replica(api, name)
            local.adopt(UNITS, BoundedCounter(name))
            for _ in range(6):
                await local.sync(allot={UNITS: rng.randint(1, 2)})
                counter = local[UNITS]
                for _ in range(rng.randint(0, 3)):
                    try:
                        counter.decrement(1)
                        sold_offline += 1
                    except InsufficientRights:
                        break
                if counter.rights() and rng.random() < 0.3:
                    counter.transfer(counter.rights(), to="server")
                await local.sync()

        async def shopper() -> None:
            """Four sales, or more tries while the tills keep taking the units first."""
            nonlocal web_sold, receipts
            sold = 0
            for attempt in range(12):
                if sold >= 4 or (attempt >= 4 and sold):
                    break
                await api.receive("SKU-1", "eu-store1", 2)
                receipts += 1
                response = await api.checkout(await api.cart({"SKU-1": 1}))
                assert response.status_code in (201, 409), response.text
                sold += response.status_code == 201
            web_sold += sold

        await asyncio.gather(
            *[till(f"till-{i}", random.Random(rng.random())) for i in range(4)],
            shopper(),
            shopper(),
        )
        received = 5 + 2 * receipts
        level = await stock_at(api)
        web_sold_at_store = await api.db.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM reservations "
            "WHERE location = 'eu-store1' AND replica IS NULL AND state = 'committed'"
        )
        assert web_sold_at_store == web_sold  # every acknowledged web sale, counted once
        assert sold_offline > 0
        assert web_sold > 0
        assert level["on_hand"] == received - sold_offline
        assert sold_offline + web_sold <= received
        await audit_ok(api)


class TestAuthority:
    async def test_a_terminal_cannot_mint_stock(self, api: Api) -> None:
        await api.world()
        till = Replica(api, "till-1")
        forged = BoundedCounter("till-1")
        forged.increment(50)
        forged.decrement(50)
        response = await till.post({"objects": [{"key": UNITS, "state": b64(forged)}]})
        assert response.status_code == 409
        assert response.json()["reason"] == "not-the-replicas-to-write"
        assert await stock_at(api) == {"on_hand": 5, "reserved": 0, "available": 5}
        assert await api.count("crdt_objects") == 0
        assert await api.count("sync_replicas") == 0

    async def test_a_terminal_cannot_write_for_another(self, api: Api) -> None:
        await api.world()
        till1 = Replica(api, "till-1")
        till1.adopt(UNITS, BoundedCounter("till-1"))
        await till1.sync(allot={UNITS: 2})
        forged = till1[UNITS].copy()
        # A transfer to another terminal is not the till's to make either.
        forged.transfer(1, to="till-2")
        response = await till1.post({"objects": [{"key": UNITS, "state": b64(forged)}]})
        assert response.status_code == 409
        assert await stock_at(api) == {"on_hand": 5, "reserved": 2, "available": 3}

    async def test_a_replica_id_belongs_to_the_key_that_first_synced_it(self, api: Api) -> None:
        await api.world()
        await Replica(api, "till-1").sync([UNITS])
        async with api.db.transaction() as conn:
            _, other = await create_key(conn, POS, label="another till")
        response = await api.client.post(
            "/v1/sync/till-1",
            json={"objects": [{"key": UNITS}]},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert response.status_code == 409
        assert response.json()["reason"] == "replica-taken"

    @pytest.mark.parametrize(
        ("as_", "key", "status"),
        [
            (WEB, UNITS, 403),  # the web shop keeps no replica
            (POS, "price.amount_minor:SKU-1@eu/EUR", 403),  # a till does not set prices
            (MOBILE, "product.title:SKU-1", 403),
            (ADMIN, UNITS, 200),
        ],
    )
    async def test_scopes(self, api: Api, as_: Channel, key: str, status: int) -> None:
        await api.world()
        body = {"objects": [{"key": key}]}
        response = await api.call("POST", "/v1/sync/r-1", json=body, as_=as_)
        assert response.status_code == status, response.text


class TestBadInput:
    """Every refusal answers a clear problem and leaves the database as it was."""

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"objects": [{"key": "nonsense"}]}, "objects[0].key"),
            ({"objects": [{"key": "stock.units:SKU-1"}]}, "objects[0].key"),
            ({"objects": [{"key": "cart.lines:not-a-uuid"}]}, "objects[0].key"),
            ({"objects": [{"key": UNITS, "state": b64(AWSet("till-1"))}]}, "objects[0].state"),
            ({"objects": [{"key": UNITS, "state": b64(BoundedCounter("x"))}]}, "objects[0].state"),
            ({"objects": [{"key": UNITS, "state": base64.b64encode(b"\x93\x01").decode()}]},
             "objects[0].state"),
            ({"objects": [{"key": UNITS, "state": "@@@"}]}, None),
            ({"objects": [{"key": UNITS}, {"key": UNITS}]}, "objects"),
            ({"allot": [{"key": "wishlist.items:c-1", "quantity": 1}]}, "allot[0].key"),
            ({"allot": [{"key": UNITS, "quantity": 0}]}, None),
            ({"refused": [{"key": "cart.lines:x", "requested": 1, "available": 0, "at": "1"}]},
             "refused[0].key"),
            ({"objects": [], "extra": 1}, None),
        ],
    )  # fmt: skip
    async def test_refused_and_nothing_changes(
        self, api: Api, body: dict[str, object], field: str | None
    ) -> None:
        await api.world()
        response = await api.call("POST", "/v1/sync/till-1", json=body, as_=POS)
        assert response.status_code in (400, 422), response.text
        problem = response.json()
        assert problem["type"].startswith("urn:retailsync:problem:")
        if field is not None:
            assert problem["field"] == field, problem
        assert await api.count("crdt_objects") == 0
        assert await api.count("sync_replicas") == 0

    async def test_one_bad_object_refuses_the_whole_sync(self, api: Api) -> None:
        await api.world()
        cart = Cart("till-1", rule="counter")
        cart.add("SKU-1", 1, PriceSnapshot(1999, "EUR"))
        body = {
            "objects": [
                {"key": f"cart.lines:{uuid.uuid4()}", "state": b64(cart)},
                {"key": UNITS, "state": base64.b64encode(b"garbage").decode()},
            ],
            "allot": [{"key": UNITS, "quantity": 2}],
        }
        response = await api.call("POST", "/v1/sync/till-1", json=body, as_=POS)
        assert response.status_code == 400
        assert "cannot decode CRDT" in response.json()["detail"]
        assert await api.count("crdt_objects") == 0
        assert await stock_at(api) == {"on_hand": 5, "reserved": 0, "available": 5}

    async def test_unknown_place_is_404_and_nothing_is_allotted(self, api: Api) -> None:
        await api.world()
        body = {
            "allot": [
                {"key": UNITS, "quantity": 2},
                {"key": "stock.units:SKU-1@nowhere", "quantity": 2},
            ]
        }
        response = await api.call("POST", "/v1/sync/till-1", json=body, as_=POS)
        assert response.status_code == 404
        assert await stock_at(api) == {"on_hand": 5, "reserved": 0, "available": 5}

    async def test_server_is_not_a_replica_id_for_clients(self, api: Api) -> None:
        response = await api.call("POST", "/v1/sync/server", json={}, as_=POS)
        assert response.status_code == 400
        assert response.json()["field"] == "replica"


class TestCartsAndWishlists:
    async def test_concurrent_adds_survive_and_removals_stay_removed(self, api: Api) -> None:
        key = f"cart.lines:{uuid.uuid4()}"
        till, phone = Replica(api, "till-1"), Replica(api, "phone-1", as_=MOBILE)
        for replica in (till, phone):
            replica.adopt(key, Cart(replica.id, rule="counter"))
        till[key].add("SKU-1", 1, PriceSnapshot(1999, "EUR"))
        await till.sync()
        await phone.sync()
        # Concurrently: the phone removes SKU-1 (it saw the till's add) and adds SKU-2, while
        # the till adds another SKU-1 the phone has not seen.
        phone[key].remove("SKU-1")
        phone[key].add("SKU-2", 2, PriceSnapshot(500, "EUR"))
        till[key].add("SKU-1", 1, PriceSnapshot(2099, "EUR"))
        await phone.sync()
        await till.sync()
        await phone.sync()
        lines = phone[key].value
        assert set(lines) == {"SKU-1", "SKU-2"}
        assert lines["SKU-1"].quantity == 1  # only the unobserved add survives the removal
        assert lines["SKU-2"].quantity == 2
        assert phone[key] == till[key]

    async def test_wishlist_add_wins(self, api: Api) -> None:
        key = "wishlist.items:c-42"
        phone, tablet = Replica(api, "phone-1", as_=MOBILE), Replica(api, "tab-1", as_=MOBILE)
        for replica in (phone, tablet):
            replica.adopt(key, AWSet(replica.id))
        phone[key].add("SKU-1")
        await phone.sync()
        await tablet.sync()
        tablet[key].remove("SKU-1")
        phone[key].add("SKU-1")  # concurrent re-add
        await tablet.sync()
        await phone.sync()
        await tablet.sync()
        assert phone[key].value == tablet[key].value == frozenset({"SKU-1"})
