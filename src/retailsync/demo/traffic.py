"""What each kind of simulated client does, and the ledger of what the server acknowledged.

Each client runs its own loop of errands (a shopping visit, a store sale, a shipment, a price
edit) with its own ``random.Random(seed + index)``, so the same seed makes the same choices
given the same answers; the interleaving, and so some answers, depend on the server's timing.
A refused or failed errand is abandoned, as a person would, and the client moves on.

The ledger records only what the server acknowledged, keyed so that a replayed answer (same
order id, same Idempotency-Key) counts once: it is the client-side evidence the report checks
against the database.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx

from retailsync.demo.client import Api, Rejected, Stats, TrafficOver
from retailsync.models import Channel, OrderStatus
from retailsync.seed import DEPARTMENTS, RANGES, REGIONS, locations, sku_for

DOORBUSTER = sku_for(1)
FLASH_REGION = "eu"
REGION_IDS = tuple(REGIONS)
LOCATION_REGION = {location: region for location, region, _ in locations()}
FLASH_LOCATIONS = tuple(loc for loc, region in LOCATION_REGION.items() if region == FLASH_REGION)

_DOORBUSTER_SHARE = 0.5  # of the carts in the flash region
DOORBUSTER_LIMIT = 2  # units one customer may buy in the flash sale
_FLASH_CUSTOMERS = 300  # the regulars who come back for the doorbuster
_CANCEL_SHARE = 0.1  # of placed web and mobile orders
_DOORBUSTER_RESTOCK_SHARE = 0.03  # of warehouse receipts
_RECEIPT_RETRY_SHARE = 0.3  # of receipts, sent a second time with the same Idempotency-Key
_DOUBLE_EDIT_SHARE = 0.35  # of price edits, made by two merchandisers at once
_PROMOTED_SKUS = 6  # the few prices merchandisers keep editing
_BACKOFF = 0.1  # after a lost connection, so a dead server is not spun on


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    channel: str
    region: str
    lines: dict[str, int]


@dataclass(frozen=True, slots=True)
class Receipt:
    sku: str
    location: str
    quantity: int


@dataclass
class Ledger:
    orders: dict[str, PlacedOrder] = field(default_factory=dict)  # by order id
    # Order ids by the status change the server acknowledged.
    status_changes: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    receipts: dict[str, Receipt] = field(default_factory=dict)  # by Idempotency-Key
    receipt_retries: int = 0
    receipt_replays: int = 0
    adjustments: int = 0
    price_edits: int = 0
    price_conflicts: int = 0
    doorbuster_turned_away: int = 0  # checkouts refused because the doorbuster was sold out
    doorbuster_limited: int = 0  # checkouts refused by the doorbuster's purchase limit
    store_sales: int = 0  # POS sales: holds committed at once into orders
    offline_allotted: int = 0  # units allotted to offline tills
    offline_sold: int = 0  # units sold offline, counted once a sync acknowledged them
    offline_refused: int = 0  # sales a till refused beyond its allotment, reported on sync

    def place(self, channel: Channel, order: Mapping[str, Any]) -> None:
        lines = {line["sku"]: line["quantity"] for line in order["lines"]}
        self.orders[order["id"]] = PlacedOrder(str(channel), order["region"], lines)

    def units_sold(self) -> Counter[str]:
        """Units per sku in placed orders, less those of orders since cancelled."""
        cancelled = self.status_changes[OrderStatus.CANCELLED]
        sold: Counter[str] = Counter()
        for order_id, order in self.orders.items():
            if order_id not in cancelled:
                sold.update(order.lines)
        return sold

    def doorbuster_sold(self) -> int:
        cancelled = self.status_changes[OrderStatus.CANCELLED]
        return sum(
            order.lines.get(DOORBUSTER, 0)
            for order_id, order in self.orders.items()
            if order.region == FLASH_REGION and order_id not in cancelled
        )

    def doorbuster_received(self) -> int:
        return sum(
            receipt.quantity
            for receipt in self.receipts.values()
            if receipt.sku == DOORBUSTER and LOCATION_REGION[receipt.location] == FLASH_REGION
        )


@dataclass(frozen=True, slots=True)
class World:
    """What every client shares: the server, the keys, the clock, and the books."""

    base_url: str
    keys: Mapping[Channel, str]
    products: int
    seed: int
    deadline: float
    stats: Stats = field(default_factory=Stats)
    ledger: Ledger = field(default_factory=Ledger)
    paid: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # for the warehouse

    def session(self, channel: Channel) -> Api:
        return Api(self.base_url, self.keys[channel], self.stats, deadline=self.deadline)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def over(self) -> bool:
        return self.remaining() == 0.0


def _key() -> str:
    return str(uuid4())


def _available(level: Mapping[str, Any], region: str) -> int:
    return sum(loc["available"] for loc in level["locations"] if loc["region"] == region)


def random_sku(rng: random.Random, world: World) -> str:
    """Any product but the doorbuster, whose stock must change only in ways the flash-sale
    ledger counts."""
    return sku_for(rng.randint(2, world.products))


async def limit_doorbuster(api: Api) -> None:
    """The flash sale's rule: at most DOORBUSTER_LIMIT units per customer (an admin key)."""
    body = {"strategy": "auto", "per_customer_limit": DOORBUSTER_LIMIT}
    await api.call("PUT", f"/v1/reservation-policies/{DOORBUSTER}", body=body)


async def stage_flash_sale(api: Api, per_location: int) -> int:
    """Set the doorbuster's available stock to ``per_location`` at every location of the flash
    region (adjusting on_hand, so open reservations stay covered); return the total."""
    level = (await api.call("GET", f"/v1/stock/{DOORBUSTER}")).json()
    for loc in level["locations"]:
        delta = per_location - loc["available"]
        if loc["region"] == FLASH_REGION and delta:
            await api.call(
                "POST",
                f"/v1/stock/{DOORBUSTER}/{loc['location']}/adjustments",
                body={"delta": delta, "reason": "flash sale allocation"},
                idempotency_key=_key(),
            )
    level = (await api.call("GET", f"/v1/stock/{DOORBUSTER}")).json()
    return _available(level, FLASH_REGION)


async def attempt(errand: Coroutine[Any, Any, None]) -> None:
    """Run one errand; a refusal or a lost connection ends that errand only (the Api has
    counted both), and the deadline ends it quietly for the loop around to notice."""
    try:
        await errand
    except (Rejected, TrafficOver):
        return
    except httpx.TransportError:
        await asyncio.sleep(_BACKOFF)


async def think(rng: random.Random, low: float = 0.01, high: float = 0.05) -> None:
    await asyncio.sleep(rng.uniform(low, high))


@dataclass(frozen=True, slots=True)
class _Cart:
    """The cart as last acknowledged, with the ETag the next change must name."""

    id: str
    skus: tuple[str, ...]
    etag: str

    @classmethod
    def of(cls, response: httpx.Response) -> _Cart:
        body = response.json()
        skus = tuple(line["sku"] for line in body["lines"])
        return cls(body["id"], skus, response.headers["etag"])


async def _new_cart(api: Api, customer: str, region: str) -> _Cart:
    body = {"customer_id": customer, "region": region}
    return _Cart.of(await api.call("POST", "/v1/carts", body=body, idempotency_key=_key()))


async def _set_line(api: Api, cart: _Cart, sku: str, quantity: int) -> _Cart:
    path = f"/v1/carts/{cart.id}/lines/{sku}"
    response = await api.call("PUT", path, body={"quantity": quantity}, if_match=cart.etag)
    return _Cart.of(response)


async def _remove_line(api: Api, cart: _Cart, sku: str) -> _Cart:
    path = f"/v1/carts/{cart.id}/lines/{sku}"
    return _Cart.of(await api.call("DELETE", path, if_match=cart.etag))


def _purchase_limited(exc: Rejected) -> bool:
    return exc.reason == "refused" and exc.problem.get("reason") == "purchase-limit"


async def _checkout(
    api: Api, world: World, channel: Channel, cart: _Cart, region: str
) -> Mapping[str, Any] | None:
    """Place the order. Told that something sold out (or that the doorbuster's limit is
    reached), the customer drops those lines and tries once more with the rest; the order, or
    None if nothing could be bought."""
    for last_try in (False, True):
        try:
            response = await api.call(
                "POST", "/v1/orders", body={"cart_id": cart.id}, idempotency_key=_key()
            )
        except Rejected as exc:
            if _purchase_limited(exc):  # the doorbuster is the one sku with a limit
                world.ledger.doorbuster_limited += 1
                short = [DOORBUSTER]
            elif exc.reason == "insufficient-stock":
                short = sorted({item["sku"] for item in exc.problem.get("shortages", [])})
                if region == FLASH_REGION and DOORBUSTER in short:
                    world.ledger.doorbuster_turned_away += 1
            else:
                raise
            if last_try:
                return None
            for sku in short:
                cart = await _remove_line(api, cart, sku)
            if not cart.skus:
                return None
            continue
        order: Mapping[str, Any] = response.json()
        world.ledger.place(channel, order)
        return order
    raise AssertionError("unreachable: the last try returns")


async def _set_status(api: Api, world: World, order_id: str, status: OrderStatus) -> None:
    path = f"/v1/orders/{order_id}/status"
    await api.call("POST", path, body={"status": status.value}, idempotency_key=_key())
    world.ledger.status_changes[status].add(order_id)


async def _browse(api: Api, rng: random.Random) -> list[str]:
    """Skus on a page or two of a department, category or range listing."""
    department = rng.choice(list(DEPARTMENTS))
    path = [department, rng.choice(DEPARTMENTS[department]), rng.choice(RANGES)]
    params: dict[str, str | int] = {"category": "/".join(path[: rng.randint(1, 3)]), "limit": 20}
    page = (await api.call("GET", "/v1/products", params=params)).json()
    skus = [item["sku"] for item in page["items"]]
    if page["next_cursor"] and rng.random() < 0.3:
        params["cursor"] = page["next_cursor"]
        page = (await api.call("GET", "/v1/products", params=params)).json()
        skus += [item["sku"] for item in page["items"]]
    return skus


async def _shopping_visit(api: Api, rng: random.Random, world: World, channel: Channel) -> None:
    """Browse, look at a few products and their stock, fill a cart, check out, pay."""
    region = rng.choice(REGION_IDS)
    skus = await _browse(api, rng)
    customers = _FLASH_CUSTOMERS if region == FLASH_REGION else 10_000
    cart = await _new_cart(api, f"{channel}-{rng.randrange(customers):04d}", region)
    for sku in rng.sample(skus, min(len(skus), rng.randint(1, 3))):
        await think(rng)
        await api.call("GET", f"/v1/products/{sku}")
        level = (await api.call("GET", f"/v1/stock/{sku}")).json()
        if _available(level, region) > 0:  # otherwise the page says "out of stock"
            cart = await _set_line(api, cart, sku, rng.randint(1, 3))
    if region == FLASH_REGION and rng.random() < _DOORBUSTER_SHARE:
        # Flash-sale shoppers came for the doorbuster and add it whatever stock they last saw.
        cart = await _set_line(api, cart, DOORBUSTER, rng.randint(1, 2))
    if len(cart.skus) > 1 and rng.random() < 0.15:
        cart = await _remove_line(api, cart, rng.choice(cart.skus))
    if not cart.skus:
        return
    order = await _checkout(api, world, channel, cart, region)
    if order is None:
        return
    await think(rng)
    if rng.random() < _CANCEL_SHARE:
        await _set_status(api, world, order["id"], OrderStatus.CANCELLED)
        return
    await _set_status(api, world, order["id"], OrderStatus.PAID)
    await world.paid.put(order["id"])


async def shopper(world: World, index: int, channel: Channel) -> None:
    rng = random.Random(world.seed + index)
    async with world.session(channel) as api:
        while not world.over():
            await attempt(_shopping_visit(api, rng, world, channel))
            await think(rng, 0.05, 0.25)


async def _store_sale(api: Api, rng: random.Random, world: World, region: str) -> None:
    """A till: scan a few items off the store's shelves, take payment, hand them over. The
    sale is a hold on the store's own stock committed at once (POST /v1/reservations with
    ``commit``); an item the system says is not there is put back and the rest sold."""
    lines = {
        sku_for(index): rng.randint(1, 2)
        for index in rng.sample(range(2, world.products + 1), rng.randint(1, 4))
    }
    store = f"{region}-store1"
    for last_try in (False, True):
        body = {
            "lines": [{"sku": s, "location": store, "quantity": q} for s, q in lines.items()],
            "customer_id": f"walk-in-{rng.randrange(100_000):05d}",
            "commit": True,
        }
        try:
            response = await api.call("POST", "/v1/reservations", body=body, idempotency_key=_key())
            break
        except Rejected as exc:
            if exc.reason != "insufficient-stock" or last_try:
                raise
            for shortage in exc.problem.get("shortages", []):
                lines.pop(shortage["sku"], None)
            if not lines:
                return
    order_id = response.json()["order_id"]
    order = (await api.call("GET", f"/v1/orders/{order_id}")).json()
    world.ledger.place(Channel.POS, order)
    world.ledger.store_sales += 1
    for status in (OrderStatus.PAID, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        await _set_status(api, world, order["id"], status)


async def pos_terminal(world: World, index: int, channel: Channel) -> None:
    rng = random.Random(world.seed + index)
    region = REGION_IDS[index % len(REGION_IDS)]  # each till is in one region's store
    async with world.session(channel) as api:
        while not world.over():
            await attempt(_store_sale(api, rng, world, region))
            await think(rng, 0.1, 0.4)  # the next customer steps up


async def _receive(api: Api, rng: random.Random, world: World) -> None:
    if rng.random() < _DOORBUSTER_RESTOCK_SHARE:
        # A few more doorbusters turn up mid-sale; they add to the supply the check allows.
        receipt = Receipt(DOORBUSTER, rng.choice(FLASH_LOCATIONS), rng.randint(1, 3))
    else:
        location = rng.choice(list(LOCATION_REGION))
        receipt = Receipt(random_sku(rng, world), location, rng.randint(6, 48))
    key = _key()
    path = f"/v1/stock/{receipt.sku}/{receipt.location}/receipts"
    body = {"quantity": receipt.quantity}
    first = await api.call("POST", path, body=body, idempotency_key=key)
    world.ledger.receipts[key] = receipt
    if rng.random() < _RECEIPT_RETRY_SHARE:
        # The scanner lost the answer and sends the receipt again with the same key: the server
        # must answer with the first result and not add the goods twice.
        again = await api.call("POST", path, body=body, idempotency_key=key)
        world.ledger.receipt_retries += 1  # counted once answered, like the replays
        if again.headers.get("idempotent-replayed") == "true" and again.json() == first.json():
            world.ledger.receipt_replays += 1


async def _adjust(api: Api, rng: random.Random, world: World) -> None:
    """A cycle-count correction; a shrink larger than the unreserved stock is refused."""
    path = f"/v1/stock/{random_sku(rng, world)}/{rng.choice(list(LOCATION_REGION))}/adjustments"
    body = {"delta": rng.choice((-2, -1, 1, 2, 3)), "reason": "cycle count"}
    await api.call("POST", path, body=body, idempotency_key=_key())
    world.ledger.adjustments += 1


async def _ship(api: Api, world: World, order_id: str, in_transit: deque[str]) -> None:
    await _set_status(api, world, order_id, OrderStatus.SHIPPED)
    in_transit.append(order_id)


async def warehouse_staff(world: World, index: int, channel: Channel) -> None:
    """Ship paid orders, deliver shipped ones, receive goods, and now and then correct stock."""
    rng = random.Random(world.seed + index)
    in_transit: deque[str] = deque()
    async with world.session(channel) as api:
        while not world.over():
            try:
                order_id = world.paid.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.05)  # nothing to pick yet
            else:
                await attempt(_ship(api, world, order_id, in_transit))
            if in_transit and (len(in_transit) > 3 or rng.random() < 0.2):
                delivered = in_transit.popleft()
                await attempt(_set_status(api, world, delivered, OrderStatus.DELIVERED))
            if rng.random() < 0.3:
                await attempt(_receive(api, rng, world))
            if rng.random() < 0.05:
                await attempt(_adjust(api, rng, world))


async def _read_price(api: Api, sku: str, region: str) -> Mapping[str, Any] | None:
    prices = (await api.call("GET", f"/v1/prices/{sku}")).json()
    currency = REGIONS[region]
    return next((p for p in prices if p["region"] == region and p["currency"] == currency), None)


async def _edit_price(api: Api, world: World, seen: Mapping[str, Any], factor: float) -> None:
    """Scale the price the merchandiser saw, naming its version. If someone saved first (412),
    look at their price and apply the change to it instead, once."""
    sku, region = seen["sku"], seen["region"]
    for last_try in (False, True):
        body = {
            "currency": seen["currency"],
            "amount_minor": max(1, round(seen["amount_minor"] * factor)),
        }
        try:
            await api.call(
                "PUT", f"/v1/prices/{sku}/{region}", body=body, if_match=f'"{seen["version"]}"'
            )
        except Rejected as exc:
            if exc.reason != "version-conflict":
                raise
            world.ledger.price_conflicts += 1
            if last_try:
                return  # beaten twice in a row: leave the price to the other merchandiser
            fresh = await _read_price(api, sku, region)
            if fresh is None:
                return
            seen = fresh
            continue
        world.ledger.price_edits += 1
        return


async def _reprice(api: Api, rng: random.Random, world: World) -> None:
    sku = sku_for(rng.randint(2, 1 + _PROMOTED_SKUS))
    seen = await _read_price(api, sku, rng.choice(REGION_IDS))
    if seen is None:  # not priced in that region: nothing to edit
        return
    if rng.random() < _DOUBLE_EDIT_SHARE:
        # Two merchandisers opened the same price and save moments apart: the later write names
        # a version that is gone and gets 412 instead of silently undoing the other's change.
        factors = (rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1))
        await asyncio.gather(*(attempt(_edit_price(api, world, seen, f)) for f in factors))
    else:
        await _edit_price(api, world, seen, rng.uniform(0.9, 1.1))


async def merchandiser(world: World, index: int, channel: Channel) -> None:
    rng = random.Random(world.seed + index)
    async with world.session(channel) as api:
        while not world.over():
            await attempt(_reprice(api, rng, world))
            await think(rng, 0.1, 0.3)
