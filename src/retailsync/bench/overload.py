"""``retailsync bench overload``: `retailsync serve` offered 1x, 3x and 10x its measured
capacity in a browse-heavy mix, with traffic management on and off, in the same run.

The mix: browse (a page of the catalog from the database) 60%, product (a cached product
GET) 30%, cart (set a line of an open cart) 8%, checkout (place an order from a cart with
its line, holding the stock) 2%. Capacity is what the server answers, all of the mix, with
management off under a closed loop of enough clients to keep both workers busy. Each level
is an open-model run (constant arrivals; latency from the intended send time).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from retailsync.bench.fifo import fifo_report
from retailsync.bench.loadgen import closed_loop, get, post
from retailsync.bench.openloop import let_in_during, open_loop
from retailsync.bench.private import private_database
from retailsync.bench.stats import percentile
from retailsync.db.database import Database
from retailsync.seed import SeedPlan, load_seed, sku_for
from retailsync.services import carts

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class OverloadPlan:
    products: int
    capacity_seconds: float
    level_seconds: float
    levels: tuple[float, ...] = (1.0, 3.0, 10.0)
    workers: int = 2
    capacity_clients: int = 48
    pause_s: float = 2.0  # between levels, for queues to drain
    # The waiting room's order, after the managed levels: sessions arriving at a sale event
    # that admits this many a second.
    queue_sessions: int = 400
    queue_rate_per_s: float = 50.0


QUICK = OverloadPlan(products=1000, capacity_seconds=3, level_seconds=4, queue_sessions=200)
FULL = OverloadPlan(products=5000, capacity_seconds=8, level_seconds=10)
# Connections open before each level's clock starts (see openloop.py): at 10x, opened as
# requests came due, the retried SYNs were most of checkout's p99.
PREOPEN = 2000
MIX = (("browse", 60), ("product", 30), ("cart", 8), ("checkout", 2))
_REGION = "eu"
_BELOW_CHECKOUT = ("cart", "product", "browse")  # the mix's classes less critical than checkout
_SALE = "bench-drop"  # the sale event of the waiting room's run, on a sku the mix leaves out


def _good(name: str, status: int) -> bool:
    """A correct answer: 2xx (a checkout that found a cart already placed is not one)."""
    return 200 <= status < 300


async def _carts(db: Database, skus: list[str], count: int, tag: str) -> list[str]:
    """``count`` open carts with one line each, made in the database the API uses."""
    made: list[str] = []

    async def make(start: int) -> None:
        for index in range(start, count, 8):
            async with db.transaction() as conn:
                cart = await carts.create_cart(conn, customer_id=f"{tag}-{index}", region=_REGION)
                await carts.set_line(
                    conn, cart.id, skus[index % len(skus)], quantity=1, expected_version=None
                )
            made.append(str(cart.id))

    await asyncio.gather(*[make(start) for start in range(8)])
    return made


class Mix:
    """Builds the mix's requests; checkouts each take a cart of their own."""

    def __init__(
        self, secret: str, skus: list[str], checkout_carts: list[str], edit_carts: list[str]
    ):
        self.auth = {"Authorization": f"Bearer {secret}"}
        self.skus = skus
        self.checkout_carts = iter(checkout_carts)
        self.edit_carts = itertools.cycle(edit_carts)
        self.rng = random.Random(11)
        self.names = [name for name, weight in MIX for _ in range(weight)]
        self.categories = ["electronics", "home", "fashion", "sports", "toys", "grocery"]
        self.line = msgspec.json.encode({"quantity": 2})

    def checkout(self) -> bytes | None:
        """A checkout of the next cart (None: out of carts, never a repeated checkout)."""
        cart = next(self.checkout_carts, None)
        if cart is None:
            return None
        return post("/v1/orders", msgspec.json.encode({"cart_id": cart}), self.auth)

    def __call__(self) -> tuple[str, bytes]:
        name = self.rng.choice(self.names)
        if name == "checkout":
            checkout = self.checkout()
            if checkout is not None:
                return name, checkout
            name = "cart"  # out of carts: never expected
        if name == "cart":
            sku = self.rng.choice(self.skus)
            path = f"/v1/carts/{next(self.edit_carts)}/lines/{sku}"
            return name, _put(path, self.line, self.auth)
        if name == "product":
            return name, get(f"/v1/products/{self.rng.choice(self.skus[:500])}", self.auth)
        category = self.rng.choice(self.categories)
        return name, get(f"/v1/products?category={category}&limit=20", self.auth)


def _put(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    return post(path, body, headers).replace(b"POST ", b"PUT ", 1)


async def _prepare(db: Database, plan: OverloadPlan) -> tuple[str, list[str]]:
    from retailsync.models import Channel
    from retailsync.services.keys import create_key

    await load_seed(db, SeedPlan(products=plan.products))
    await db.execute("UPDATE stock SET on_hand = 1000000")  # checkouts never run out
    async with db.transaction() as conn:
        _, secret = await create_key(conn, Channel.WEB, label="bench")
    return secret, [sku_for(index) for index in range(1, plan.products + 1)]


async def _capacity(port: int, mix: Mix, plan: OverloadPlan) -> tuple[float, float]:
    """Requests/s of the mix, and checkouts/s alone (what checkout could have at most)."""
    result = await closed_loop(
        "127.0.0.1", port, clients=plan.capacity_clients, seconds=plan.capacity_seconds,
        request=lambda: mix()[1],
    )  # fmt: skip
    checkouts = await closed_loop(
        "127.0.0.1", port, clients=16, seconds=plan.capacity_seconds / 2,
        request=lambda: mix.checkout() or get("/healthz", {}),  # out of carts: not counted
    )  # fmt: skip
    return len(result.latencies) / result.seconds, checkouts.statuses.get(
        201, 0
    ) / checkouts.seconds


async def _decision_us() -> dict[str, float]:
    """The admission decision alone, in process (classify, admit, give back), microseconds."""
    from retailsync.traffic.admission import AdaptiveLimit, Admission
    from retailsync.traffic.classes import load_route_table

    routes = load_route_table("", "")
    admission = Admission(routes.classes, AdaptiveLimit(initial=64))
    samples = []
    paths = [("GET", "/v1/products/SKU-1"), ("POST", "/v1/orders"), ("GET", "/v1/products")]
    for index in range(30_000):
        method, path = paths[index % 3]
        started = time.perf_counter()
        criticality = routes.classify(method, path)
        assert criticality is not None
        ticket = await admission.admit(criticality)
        samples.append(time.perf_counter() - started)
        if ticket is not None:
            admission.done(ticket)
    return {
        "p50": round(percentile(samples, 0.5) * 1e6, 2),
        "p99": round(percentile(samples, 0.99) * 1e6, 2),
    }


@dataclass(slots=True)
class ModeResult:
    capacity: float
    checkout_capacity: float | None  # measured in the first mode only
    levels: dict[str, Any]
    waiting_room: dict[str, Any] | None  # managed mode only


def _sale_event(sku: str, path: str, plan: OverloadPlan) -> str:
    event = {"name": _SALE, "paths": [path], "skus": [sku]}
    return json.dumps([event | {"rate_per_s": plan.queue_rate_per_s, "burst": 1}])


async def _mode(
    dsn: str, db: Database, plan: OverloadPlan, secret: str, skus: list[str], *,
    managed: bool, capacity: float | None, progress: Progress,
) -> ModeResult:  # fmt: skip
    """``skus[0]`` is the sale event's; the mix gets the others."""
    from retailsync.demo.server import ApiServer

    label = "on" if managed else "off"
    expected = sum(int(capacity or 2000) * level * plan.level_seconds for level in plan.levels)
    checkouts = expected * dict(MIX)["checkout"] / 100 * 1.3 + 200
    if capacity is None:
        checkouts += plan.capacity_seconds * 1000  # the checkout-only closed loop
    checkout_carts = await _carts(db, skus, int(checkouts), f"co-{label}")
    edit_carts = await _carts(db, skus, 200, f"ed-{label}")
    sale_sku, skus = skus[0], skus[1:]
    sale_path = f"/v1/products/{sale_sku}"
    mix = Mix(secret, skus, checkout_carts, edit_carts)
    env = {
        "RETAILSYNC_SERVE_CAPTURE": "false",
        "RETAILSYNC_TRAFFIC_MANAGEMENT": "true" if managed else "false",
    }
    if managed:
        env["RETAILSYNC_WAITING_ROOMS"] = _sale_event(sale_sku, sale_path, plan)
    levels: dict[str, Any] = {}
    checkout_capacity = None
    with ApiServer(dsn, workers=plan.workers, env=env) as server:
        await server.wait_ready()
        # Warm: every worker's caches, pools and code paths, before anything is measured.
        await closed_loop("127.0.0.1", server.port, clients=16, seconds=1.5,
                          request=lambda: mix()[1])  # fmt: skip
        if capacity is None:
            progress(f"capacity: closed loop, {plan.capacity_clients} clients, management off")
            capacity, checkout_capacity = await _capacity(server.port, mix, plan)
            progress(
                f"capacity {capacity:,.0f} requests/s; checkouts alone {checkout_capacity:,.0f}/s"
            )
        for level in plan.levels:
            rate = capacity * level
            progress(f"management {label}: {level:g}x = {rate:,.0f} requests/s offered")
            result = await open_loop(
                "127.0.0.1", server.port, rate=rate, seconds=plan.level_seconds,
                request=mix, good=_good, preopen=PREOPEN,
            )  # fmt: skip
            levels[f"{level:g}x"] = _level_report(result, plan.level_seconds)
            await asyncio.sleep(plan.pause_s)
        waiting_room = None
        if managed:
            progress(
                f"waiting room: {plan.queue_sessions} sessions at a sale admitting "
                f"{plan.queue_rate_per_s:g}/s, on any worker"
            )
            waiting_room = await fifo_report(
                f"http://127.0.0.1:{server.port}", mix.auth, sale_path,
                sessions=plan.queue_sessions, rate_per_s=plan.queue_rate_per_s,
            )  # fmt: skip
    return ModeResult(capacity, checkout_capacity, levels, waiting_room)


def _level_report(result: Any, seconds: float) -> dict[str, Any]:
    classes = {
        name: outcome.report(seconds, lambda status, name=name: _good(name, status))
        for name, outcome in sorted(result.classes.items())
    }
    checkout = classes.get("checkout", {})
    browse = classes.get("browse", {})
    lower_let_in = [
        span for name in _BELOW_CHECKOUT if name in result.classes
        for span in result.classes[name].good_spans
    ]  # fmt: skip
    checkout_shed = result.classes["checkout"].shed_spans if "checkout" in result.classes else []
    return {
        "offered_per_s": round(sum(c["offered"] for c in classes.values()) / seconds),
        "sender_behind_s": round(result.behind_s, 3),
        "connections": result.connections_opened,
        "classes": classes,
        "checkout_goodput_ratio": checkout.get("goodput_ratio", 0.0),
        "checkout_p99_ms": checkout.get("p99_ms"),
        "browse_shed_ratio": browse.get("shed_ratio", 0.0),
        # An upper bound (see let_in_during): the target is none.
        "checkout_shed_while_lower_admitted": let_in_during(checkout_shed, lower_let_in),
    }


async def run_overload_bench(plan: OverloadPlan, progress: Progress) -> dict[str, Any]:
    decision = await _decision_us()
    async with private_database(progress, pool_max=16) as (dsn, db):
        progress(f"seeding {plan.products:,} products")
        secret, skus = await _prepare(db, plan)
        off = await _mode(
            dsn, db, plan, secret, skus, managed=False, capacity=None, progress=progress
        )
        on = await _mode(
            dsn, db, plan, secret, skus, managed=True, capacity=off.capacity, progress=progress
        )
    levels = {level: {"on": on.levels[level], "off": off.levels[level]} for level in on.levels}
    return {
        "plan": asdict(plan),
        "mix": dict(MIX),
        "capacity_rps": round(off.capacity),
        "checkout_capacity_rps": round(off.checkout_capacity or 0),
        "admission_decision_us": decision,
        "admission_decision_p99_us": decision["p99"],
        "levels": levels,
        "waiting_room": on.waiting_room,
    }
