"""An offline till: it sells from bounded-counter allotments of its store's stock while cut
off from the server, and syncs (POST /v1/sync) when it is back, as a POS terminal with a flaky
link does. Its local replicas are ``retailsync.crdt`` objects, as a real till's would be."""

from __future__ import annotations

import base64
import random
from typing import Any
from uuid import uuid4

from retailsync.crdt import HLC, BoundedCounter, InsufficientRights, decode_as, encode
from retailsync.demo.client import Api
from retailsync.demo.traffic import LOCATION_REGION, World, attempt, random_sku, think
from retailsync.models import Channel

_SKUS_PER_SHIFT = 3
_CUSTOMERS_PER_SHIFT = (3, 8)
_GIVE_BACK_SHARE = 0.3  # of shifts that end by handing unsold units back


class _Till:
    """A till's replicas of its allotments, and what it did offline since its last sync."""

    def __init__(self, replica: str, store: str) -> None:
        self.replica = replica
        self.store = store
        self.clock = HLC(replica)
        self.counters: dict[str, BoundedCounter] = {}
        self.unsynced_sold = 0
        self.refusals: list[dict[str, Any]] = []

    def counter(self, key: str) -> BoundedCounter:
        return self.counters.setdefault(key, BoundedCounter(self.replica))

    def sell(self, key: str, quantity: int) -> None:
        counter = self.counter(key)
        try:
            counter.decrement(quantity)
        except InsufficientRights as refused:
            stamp = self.clock.now()
            self.refusals.append(
                {
                    "key": key,
                    "requested": quantity,
                    "available": refused.available,
                    "at": f"{stamp.wall_ms}.{stamp.logical}",
                }
            )
        else:
            self.unsynced_sold += quantity

    async def sync(self, api: Api, world: World, allot: dict[str, int]) -> None:
        """Send every allotment's state and the refusals; merge the server's answer."""
        objects = [
            {"key": key, "state": base64.b64encode(encode(counter)).decode()}
            for key, counter in self.counters.items()
        ]
        body = {
            "objects": objects,
            "allot": [{"key": key, "quantity": n} for key, n in allot.items()],
            "refused": self.refusals,
        }
        # With a key, a sync whose answer was lost is retried and answered as it was the
        # first time: the allotment it granted reaches the till.
        response = await api.call(
            "POST", f"/v1/sync/{self.replica}", body=body, idempotency_key=str(uuid4())
        )
        reply = response.json()
        for item in reply["objects"]:
            server = decode_as(base64.b64decode(item["state"]), BoundedCounter)
            self.counter(item["key"]).merge(server)
            world.ledger.offline_allotted += item["allotted"] or 0
        world.ledger.offline_sold += self.unsynced_sold
        world.ledger.offline_refused += len(self.refusals)
        self.unsynced_sold = 0
        self.refusals = []


async def _shift(api: Api, rng: random.Random, world: World, till: _Till) -> None:
    """Online: sync and take allotments. Offline: serve customers. Back: sync again."""
    keys = [f"stock.units:{random_sku(rng, world)}@{till.store}" for _ in range(_SKUS_PER_SHIFT)]
    await till.sync(api, world, {key: rng.randint(2, 6) for key in dict.fromkeys(keys)})
    for _ in range(rng.randint(*_CUSTOMERS_PER_SHIFT)):
        till.sell(rng.choice(keys), rng.randint(1, 3))
        await think(rng, 0.05, 0.2)
    if rng.random() < _GIVE_BACK_SHARE:
        for counter in till.counters.values():
            if counter.rights():
                counter.transfer(counter.rights(), to="server")
    await till.sync(api, world, {})


async def offline_till(world: World, index: int, channel: Channel) -> None:
    rng = random.Random(world.seed + index)
    stores = sorted(loc for loc in LOCATION_REGION if loc.endswith("store1"))
    # A replica id is bound to the key that first synced it: a fresh one per run.
    till = _Till(f"demo-till-{index}-{uuid4().hex[:8]}", stores[index % len(stores)])
    async with world.session(channel) as api:
        while not world.over():
            await attempt(_shift(api, rng, world, till))
